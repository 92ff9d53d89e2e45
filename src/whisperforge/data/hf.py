"""Read speech from anything a user may bring, as ``Utterance`` rows:

- a JSONL manifest (``corpus/train.jsonl``), or a folder holding ``<split>.jsonl``;
- an ``audiofolder`` (audio files + ``metadata.jsonl``/``metadata.csv`` with ``file_name``),
  read directly, without the ``datasets`` package;
- a dataset saved with ``datasets.Dataset.save_to_disk`` (needs ``pip install datasets``);
- a Hugging Face hub name such as ``openslr/librispeech_asr`` (when the hub is reachable),
  optionally streaming.

Audio is never decoded by ``datasets`` (its decoder needs torchcodec and FFmpeg): the audio
column is read as ``{"path", "bytes"}`` and decoded with soundfile here.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from whisperforge.audio import AUDIO_SUFFIXES
from whisperforge.data.manifest import (
    ManifestError,
    Skipped,
    Utterance,
    ValidationReport,
    file_duration,
    iter_manifest,
    validate,
)

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id", "voice")
LANGUAGE_COLUMNS = ("language", "locale", "lang")

Row = tuple[int, Utterance | Skipped]


def _first(row: dict, names: tuple[str, ...], default=None):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return default


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


def _metadata_rows(folder: Path) -> list[dict]:
    if (folder / "metadata.jsonl").is_file():
        lines = (folder / "metadata.jsonl").read_text("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if (folder / "metadata.csv").is_file():
        with (folder / "metadata.csv").open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    raise ManifestError(
        f"{folder} has no metadata.jsonl or metadata.csv with file_name and text columns"
    )


def iter_audiofolder(folder: str | Path, language: str | None = None) -> Iterator[Row]:
    """Rows of an audiofolder; ``duration`` comes from each file's header when not given."""
    folder = Path(folder)
    for index, row in enumerate(_metadata_rows(folder), start=1):
        name = row.get("file_name")
        if not name:
            yield index, Skipped(index, "missing audio: no file_name", row)
            continue
        path = folder / name
        duration = row.get("duration")
        if duration in (None, "") and path.is_file():
            duration = file_duration(path)
        yield index, _utterance(row, str(path), duration, language)


def _utterance(row: dict, audio: str | None, duration, language: str | None) -> Utterance:
    extra = {k: v for k, v in row.items() if k not in ("audio", "file_name") + TEXT_COLUMNS}
    try:
        duration = float(duration) if duration is not None else None
    except (TypeError, ValueError):
        pass  # kept as is: validation reports it as a bad duration
    speaker = _first(row, SPEAKER_COLUMNS)
    return Utterance(
        audio=audio,
        text=str(_first(row, TEXT_COLUMNS, "")),
        language=_first(row, LANGUAGE_COLUMNS, language),
        duration=duration,
        speaker=None if speaker is None else str(speaker),
        extra={k: v for k, v in extra.items() if k not in SPEAKER_COLUMNS + LANGUAGE_COLUMNS},
    )


def _hf_dataset(source: str, split: str, streaming: bool):
    try:
        import datasets
    except ImportError as err:
        raise ManifestError(
            f"reading {source!r} needs the datasets package: pip install datasets"
        ) from err
    path = Path(source)
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise ManifestError(
                f"{path} is not a manifest folder, an audiofolder or a saved dataset: {err}"
            ) from err
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ManifestError(f"{source} has splits {list(data)}, not {split!r}")
            data = data[split]
        return data.to_iterable_dataset() if streaming else data
    try:
        return datasets.load_dataset(source, split=split, streaming=streaming)
    except (ConnectionError, OSError) as err:
        raise ManifestError(
            f"could not load {source!r} from the Hugging Face hub (no network or not cached): "
            f"{err}. Pass a local manifest, audiofolder or saved dataset instead."
        ) from err


def iter_hf(
    source: str, split: str = "train", streaming: bool = False, language: str | None = None
) -> Iterator[Row]:
    """Rows of a saved or hub dataset; audio bytes are decoded here with soundfile."""
    data = _hf_dataset(source, split, streaming)  # raises with "pip install datasets" first
    from datasets import Audio

    features = data.features or {}
    column = next((k for k, f in features.items() if isinstance(f, Audio)), "audio")
    if column in features:
        data = data.cast_column(column, Audio(decode=False))
    for index, row in enumerate(data, start=1):
        yield index, _hf_row(index, row, column, language)


def _hf_row(index: int, row: dict, column: str, language: str | None) -> Utterance | Skipped:
    audio = row.get(column) or {}
    path = audio.get("path") if isinstance(audio, dict) else None
    duration = row.get("duration")
    utt = _utterance({k: v for k, v in row.items() if k != column}, None, duration, language)
    if path and Path(path).is_file():
        utt.audio = path
        if utt.duration is None:
            utt.duration = file_duration(Path(path))
        return utt
    if isinstance(audio, dict) and audio.get("bytes"):
        try:
            utt.array, utt.sampling_rate = _decode_bytes(audio["bytes"])
        except (RuntimeError, ValueError) as err:
            return Skipped(index, f"unreadable audio: {err}", {"path": path})
        utt.duration = utt.duration or len(utt.array) / utt.sampling_rate
        return utt
    return Skipped(index, "missing audio: no file and no bytes", {"path": path})


def iter_utterances(
    source: str | Path,
    split: str = "train",
    streaming: bool = False,
    language: str | None = None,
) -> Iterator[Row]:
    """``(index, Utterance or Skipped)`` from a manifest, a corpus folder with
    ``<split>.jsonl``, an audiofolder, a saved dataset or a hub dataset name."""
    path = Path(source)
    if path.is_file():
        yield from iter_manifest(path)
    elif path.is_dir() and (path / f"{split}.jsonl").is_file():
        yield from iter_manifest(path / f"{split}.jsonl")
    elif path.is_dir() and any((path / m).is_file() for m in ("metadata.jsonl", "metadata.csv")):
        yield from iter_audiofolder(path, language)
    elif path.is_dir() and (manifests := sorted(p.stem for p in path.glob("*.jsonl"))):
        raise ManifestError(f"{path} has manifests for {manifests}, not for split {split!r}")
    elif path.is_dir() and not any(p.suffix in AUDIO_SUFFIXES for p in path.iterdir()):
        yield from iter_hf(str(path), split, streaming, language)
    elif path.is_dir():
        raise ManifestError(
            f"{path} holds audio but no metadata.jsonl/metadata.csv (audiofolder) and no "
            f"{split}.jsonl manifest"
        )
    else:
        yield from iter_hf(str(source), split, streaming, language)


def load_utterances(
    source: str | Path,
    split: str = "train",
    check_audio: bool = True,
    max_duration: float | None = None,
    streaming: bool = False,
    language: str | None = None,
    require_text: bool = True,
) -> ValidationReport:
    """Read and validate any supported source; see ``ValidationReport.summary``.
    ``require_text=False`` keeps rows without a transcript (audio to be pseudo-labelled)."""
    rows = iter_utterances(source, split, streaming, language)
    return validate(rows, check_audio, max_duration, require_text)
