"""Pseudo-labels for distillation: the teacher transcribes the training audio (greedy, with
timestamps) and a WER filter keeps the rows where it agrees with the reference transcript.

Distil-Whisper (Gandhi et al., 2023, arXiv:2311.00430) trains the student on the teacher's own
transcripts, which are consistently formatted across datasets, and drops examples whose
normalised WER against the ground truth exceeds a threshold (section 9.2: 10 % works).

Phases, each a function: ``read_source`` (manifest, corpus folder, audiofolder or HF dataset)
-> ``plan_windows`` (one window per utterance, or consecutive utterances of one speaker and
language packed into <= 30 s, or played as one recording and cut into 30 s windows wherever
30 s ends, as long-form transcription cuts a file) -> fixed shards of the plan, shard ``k``
on rank ``k % world``
-> ``label_shard`` (load, batch-decode, score) -> one atomic file per finished shard ->
rank 0 merges them into ``labels.jsonl`` and ``label_summary.json``. A rerun skips the
finished shards, so a killed run resumes where it stopped. See ``docs/distill.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from whisperforge.audio import N_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from whisperforge.data.manifest import Utterance
from whisperforge.data.packing import (
    Pack,
    StreamWindow,
    pack_audio,
    pack_utterances,
    stream_audio,
    stream_windows,
)
from whisperforge.fileio import write_text_atomic
from whisperforge.metrics import ErrorCounts, cut_word_errors, word_errors
from whisperforge.tokenizer import normalize_language

logger = logging.getLogger(__name__)

DEFAULT_MAX_WER = 10.0
"""Percent; Distil-Whisper's threshold (section 9.2)."""
MAX_WINDOW_SECONDS = N_SAMPLES / SAMPLE_RATE
LABELS_FILE = "labels.jsonl"
SUMMARY_FILE = "label_summary.json"
SHARDS_DIR = "shards"
AUDIO_DIR = "audio"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class LabelOptions:
    """Options of ``label``; checked once here."""

    teacher: str = "whisper-base"
    split: str = "train"
    pack: bool = False  # pack consecutive utterances of a speaker/language into <= 30 s
    pack_seconds: float = MAX_WINDOW_SECONDS  # longest pack, seconds (< 30 leaves a margin)
    stream: bool = False  # play a speaker's utterances as one recording, cut every 30 s
    seed: int = 0  # the stream's pauses and first cut
    batch_size: int = 8  # windows decoded together
    shard_size: int = 256  # windows per shard (the unit of resumption and of sharding)
    language: str | None = None  # None: each row's own language, else detected
    limit: int | None = None  # label only the first N utterances
    max_wer: float = DEFAULT_MAX_WER  # percent; the summary counts rows this would drop

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", normalize_language(self.language))
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")
        if not 0 < self.pack_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"pack_seconds must be in (0, {MAX_WINDOW_SECONDS:.0f}] seconds")
        if self.pack and self.stream:
            raise ValueError("choose one of pack and stream")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 (or None for all utterances)")
        _check_max_wer(self.max_wer)

    def transcribe_options(self) -> dict:
        """Greedy decoding with timestamps and no temperature fallback, as Distil-Whisper."""
        return dict(
            language=self.language, temperature=(0.0,), beam_size=1, batch_size=self.batch_size
        )


def _check_max_wer(max_wer: float) -> None:
    if not (isinstance(max_wer, (int, float)) and math.isfinite(max_wer) and max_wer >= 0):
        raise ValueError(f"max_wer is a WER in percent >= 0, not {max_wer!r}")


@dataclass
class LabelWindow:
    """One teacher input: an utterance, or utterances played one after another (a pack)."""

    id: str
    utterances: list[Utterance]
    member_ids: list[str]
    packed: bool = False
    cut: StreamWindow | None = None  # a stream window: where its members sit, what is cut

    @property
    def writes_audio(self) -> bool:
        """True when the window's audio is written under ``DIR/audio`` (packs, streams,
        arrays)."""
        return self.packed or self.utterances[0].audio is None


@dataclass
class LoadedWindow:
    """A window's samples (16 kHz float32, <= 30 s), where they are, and what went into it."""

    window: LabelWindow
    audio: np.ndarray
    path: str  # absolute
    utterances: list[Utterance]
    member_ids: list[str]

    @property
    def text(self) -> str:
        return " ".join(u.text.strip() for u in self.utterances if u.text).strip()


# -- planning -----------------------------------------------------------------------------


def read_source(source: str | Path, options: LabelOptions) -> tuple[list[Utterance], list[dict]]:
    """Utterances of ``source`` (rows without a transcript kept: they get labels but no WER)
    and the rows that cannot be used, each with its reason."""
    from whisperforge.data.hf import load_utterances

    report = load_utterances(source, split=options.split, require_text=False)
    kept = report.kept[: options.limit] if options.limit else report.kept
    skipped = [{"id": None, "line": s.line, "reason": s.reason} for s in report.skipped]
    return kept, skipped


def utterance_ids(utterances: list[Utterance]) -> list[str]:
    """Stable ids: the row's ``id``, else the audio file's stem, else the position; a repeated
    id gets a ``~n`` suffix so every id is unique."""
    seen: Counter = Counter()
    ids = []
    for n, utt in enumerate(utterances):
        base = utt.extra.get("id") or (Path(utt.audio).stem if utt.audio else f"utt-{n:06d}")
        seen[str(base)] += 1
        ids.append(str(base) if seen[str(base)] == 1 else f"{base}~{seen[str(base)]}")
    return ids


def plan_windows(
    utterances: list[Utterance],
    pack: bool,
    pack_seconds: float = MAX_WINDOW_SECONDS,
    stream: bool = False,
    seed: int = 0,
) -> tuple[list[LabelWindow], list[dict]]:
    """The windows to label, in a deterministic order, and the utterances left out (longer
    than 30 s: Whisper's window; split them first).

    Unpacked, each utterance is its own window. Packed, ``pack_utterances`` joins consecutive
    utterances of one speaker and language into at most ``pack_seconds``; utterances without
    a known duration (formats without a cheap header) stay on their own, after the packs.
    As a stream, ``stream_windows`` plays the utterances of each speaker and language as a
    recording with pauses and cuts it into 30 s windows that start and end inside utterances.
    """
    ids = utterance_ids(utterances)
    id_of = {id(u): i for u, i in zip(utterances, ids)}
    too_long = [u for u in utterances if (u.duration or 0.0) > MAX_WINDOW_SECONDS]
    fits = [u for u in utterances if (u.duration or 0.0) <= MAX_WINDOW_SECONDS]
    if pack:
        known = [u for u in fits if u.duration is not None]
        result = pack_utterances(known, pack_seconds)
        groups = [(p.utterances, True) for p in result.packs]
        groups += [([u], False) for u in fits if u.duration is None]
    elif stream:
        known = [u for u in fits if u.duration is not None]
        cuts = stream_windows(known, MAX_WINDOW_SECONDS, seed=seed)
        groups = [(c.utterances, True, c) for c in cuts]
        groups += [([u], False) for u in fits if u.duration is None]
    else:
        groups = [([u], False) for u in fits]
    windows = []
    seen: Counter = Counter()
    for group, packed, *cut in groups:
        members = [id_of[id(u)] for u in group]
        window_id = members[0] if len(members) == 1 else f"{members[0]}+{len(members) - 1}"
        if cut:  # an utterance can be cut across two windows: ids stay unique
            seen[window_id] += 1
            window_id = f"{window_id}@{seen[window_id]}" if seen[window_id] > 1 else window_id
        windows.append(LabelWindow(window_id, group, members, packed, cut[0] if cut else None))
    failures = [_failure(id_of[id(u)], u.audio, _too_long(u.duration)) for u in too_long]
    return windows, failures


def _too_long(seconds: float) -> str:
    return (
        f"too long: {seconds:.1f} s > {MAX_WINDOW_SECONDS:.0f} s (Whisper's window); "
        "split it into shorter utterances to label it"
    )


def _failure(window_id: str | None, audio, reason: str) -> dict:
    return {"id": window_id, "audio": None if audio is None else str(audio), "reason": reason}


def plan_fingerprint(windows: list[LabelWindow], options: LabelOptions) -> str:
    """What decides the shards' content: teacher, language, shard size and the windows."""
    plan = [
        [
            w.id,
            [[u.audio, u.text, u.language] for u in w.utterances],
            w.packed,
            None if w.cut is None else [w.cut.offsets, w.cut.seconds],
        ]
        for w in windows
    ]
    keys = (options.teacher, options.language, options.shard_size)
    blob = json.dumps([keys, plan], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARDS_DIR / f"shard-{index:05d}.jsonl"


def check_plan(out_dir: Path, fingerprint: str, n_shards: int, write: bool) -> None:
    """Refuse to mix shards of different plans in one folder; ``write`` records the plan."""
    record = out_dir / SHARDS_DIR / PLAN_FILE
    if record.is_file():
        previous = json.loads(record.read_text("utf-8")).get("fingerprint")
        if previous != fingerprint:
            raise ValueError(
                f"{out_dir} holds labels of other data or options (teacher, language, "
                f"--pack, --stream, --shard-size); use a new --out, or delete "
                f"{out_dir / SHARDS_DIR}"
            )
    elif write:
        body = {"fingerprint": fingerprint, "shards": n_shards}
        write_text_atomic(record, json.dumps(body, indent=2) + "\n")


# -- labelling ----------------------------------------------------------------------------


def _load_utterance(utt: Utterance) -> np.ndarray:
    return load_audio(utt.audio if utt.audio is not None else utt.array, utt.sampling_rate)


def load_window(
    window: LabelWindow, index: int, out_dir: Path
) -> tuple[LoadedWindow | None, list[dict]]:
    """Load a window's audio; a member that cannot be decoded is reported and left out.

    Packs (and utterances held as arrays) are written as 16-bit FLAC under ``DIR/audio``
    atomically and read back, so the teacher labels exactly the samples training will read.
    """
    from whisperforge.data.synth import write_flac_atomic

    loaded, failures = [], []
    for utt, member in zip(window.utterances, window.member_ids):
        try:
            loaded.append((utt, member, _load_utterance(utt)))
        except AudioError as error:
            failures.append(_failure(member, utt.audio, f"cannot decode: {error}"))
    if not loaded:
        return None, failures
    utterances, members, arrays = (list(x) for x in zip(*loaded))
    if window.writes_audio:
        samples = dict(zip(map(id, utterances), arrays))
        if window.cut is not None:
            audio = stream_audio(window.cut.keeping(utterances), lambda u: samples[id(u)])
        else:
            audio = pack_audio(Pack(utterances), lambda u: samples[id(u)])
        safe = re.sub(r"[^A-Za-z0-9._+~-]", "_", window.id)[:80]
        path = out_dir / AUDIO_DIR / f"{index:06d}-{safe}.flac"
        if len(audio) <= N_SAMPLES:
            write_flac_atomic(path, np.clip(audio, -1.0, 1.0))
            audio = load_audio(path)
    else:
        audio, path = arrays[0], Path(utterances[0].audio)
    if len(audio) > N_SAMPLES:
        failures.append(_failure(window.id, path, _too_long(len(audio) / SAMPLE_RATE)))
        return None, failures
    return LoadedWindow(window, audio, str(path), utterances, members), failures


def teacher_language(loaded: LoadedWindow, options: LabelOptions, multilingual: bool):
    """The language the teacher is prompted with (None: detect); ValueError when the row's
    language is unknown or an English-only teacher cannot transcribe it."""
    language = options.language or normalize_language(loaded.utterances[0].language)
    if not multilingual and language not in (None, "en"):
        raise ValueError(f"teacher {options.teacher} is English-only; this row is {language!r}")
    return language


def label_row(loaded: LoadedWindow, result, language: str | None, out_dir: Path) -> dict:
    """A shard record: the manifest row with the teacher's transcript, tokens and WER, plus
    the word counts the corpus WER is summed from."""
    first = loaded.utterances[0]
    text = loaded.text
    pseudo_text = result.text.strip()
    row = {} if loaded.window.packed else first.to_row()
    row |= {
        "audio": Path(os.path.relpath(loaded.path, out_dir.resolve())).as_posix(),
        "text": text,
        "language": language,
        "duration": round(len(loaded.audio) / SAMPLE_RATE, 3),
        "speaker": first.speaker,
        "id": loaded.window.id,
    }
    cut = loaded.window.cut
    if loaded.window.packed:
        row["members"] = loaded.member_ids
        if first.voice is not None:
            row["voice"] = first.voice
    if cut is not None:  # the reference is every member's text; the cut ends may be missing
        cut = cut.keeping(loaded.utterances)
        row["cut"] = {"head": cut.cut_head, "tail": cut.cut_tail, "offsets": cut.offsets}
    if not text:
        counts = None
    elif cut is not None:
        pieces = [u.text for u in cut.utterances if u.text]
        counts = cut_word_errors(pieces, pseudo_text, cut.cut_head, cut.cut_tail, language)
    else:
        counts = word_errors(text, pseudo_text, language=language)
    if counts is not None and counts.ref_words == 0:  # nothing left after normalisation
        counts = None
    row["pseudo_text"] = pseudo_text
    row["pseudo_tokens"] = [int(t) for t in result.tokens]
    row["teacher_wer"] = None if counts is None else 100.0 * counts.wer
    record = {"row": row}
    if counts is not None:
        record["counts"] = asdict(counts)
    return record


def label_shard(
    transcriber,
    windows: list[LabelWindow],
    first_index: int,
    out_dir: Path,
    options: LabelOptions,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Label one shard's windows in batches; records in window order, failures included."""
    records, ready = [], []
    multilingual = transcriber.bundle.multilingual
    for n, window in enumerate(windows):
        loaded, failures = load_window(window, first_index + n, out_dir)
        records.extend({"failure": f} for f in failures)
        if loaded is None:
            if progress:
                progress(1)
            continue
        try:
            ready.append((loaded, teacher_language(loaded, options, multilingual)))
        except ValueError as error:
            records.append({"failure": _failure(window.id, loaded.path, str(error))})
            if progress:
                progress(1)
    for start in range(0, len(ready), options.batch_size):
        batch = ready[start : start + options.batch_size]
        results = transcriber.decode_windows(
            [w.audio for w, _ in batch], [lang for _, lang in batch], **options.transcribe_options()
        )
        for (loaded, language), result in zip(batch, results):
            language = language or result.language or ("en" if not multilingual else None)
            records.append(label_row(loaded, result, language, out_dir))
        if progress:
            progress(len(batch))
    return records


def write_shard(path: Path, records: list[dict]) -> None:
    """One JSON record a line, written atomically: the file exists only when complete."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(path, lines)


def read_shard(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


# -- the recipe ---------------------------------------------------------------------------


def label(
    source: str | Path,
    out_dir: str | Path,
    options: LabelOptions | None = None,
    accelerator=None,
    progress: bool = True,
) -> dict | None:
    """Pseudo-label ``source`` into ``out_dir`` on every process of ``accelerator``.

    Returns the summary on the main process (None on the others). Shard ``k`` of the plan
    is labelled by rank ``k % world``; shards already on disk are reused.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    options = options or LabelOptions()
    out_dir = Path(out_dir)
    if accelerator is None:
        import torch

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    utterances, skipped = read_source(source, options)
    windows, failures = plan_windows(
        utterances, options.pack, options.pack_seconds, options.stream, options.seed
    )
    shards = [
        range(s, min(s + options.shard_size, len(windows)))
        for s in range(0, len(windows), options.shard_size)
    ]
    fingerprint = plan_fingerprint(windows, options)
    check_plan(out_dir, fingerprint, len(shards), write=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    mine = [
        k for k in range(len(shards)) if k % accelerator.num_processes == accelerator.process_index
    ]
    todo = [k for k in mine if not shard_path(out_dir, k).is_file()]
    _label_shards(todo, shards, windows, out_dir, options, accelerator, progress)
    reused = sum(gather_object([len(mine) - len(todo)]))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    meta = {
        "source": str(source),
        "utterances": len(utterances),
        "windows": len(windows),
        "shards": {"total": len(shards), "reused": reused, "world_size": accelerator.num_processes},
    }
    return merge_shards(out_dir, len(shards), skipped + failures, options, meta)


def _label_shards(todo, shards, windows, out_dir, options, accelerator, progress) -> None:
    from whisperforge.progress import progress_bar
    from whisperforge.transcribe import Transcriber

    if not todo:
        return
    transcriber = Transcriber(options.teacher, device=str(accelerator.device))
    total = sum(len(shards[k]) for k in todo)
    shown = progress and accelerator.is_main_process
    with progress_bar(total, unit="window", desc="pseudo-labels", enabled=shown) as bar:
        for k in todo:
            part = [windows[i] for i in shards[k]]
            records = label_shard(transcriber, part, shards[k].start, out_dir, options, bar.update)
            write_shard(shard_path(out_dir, k), records)


def merge_shards(
    out_dir: Path, n_shards: int, failures: list[dict], options: LabelOptions, meta: dict
) -> dict:
    """Join the shards into ``labels.jsonl`` and write ``label_summary.json``; returns it."""
    rows, totals = [], ErrorCounts()
    failures = list(failures)
    for k in range(n_shards):
        for record in read_shard(shard_path(out_dir, k)):
            if "failure" in record:
                failures.append(record["failure"])
                continue
            rows.append(record["row"])
            if "counts" in record:
                totals += ErrorCounts(**record["counts"])
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(out_dir / LABELS_FILE, lines)
    _, report = filter_by_wer(rows, options.max_wer)
    summary = {
        "teacher": options.teacher,
        **meta,
        "labelled": len(rows),
        "with_reference": sum(r["teacher_wer"] is not None for r in rows),
        "failed": len(failures),
        "audio_hours": sum(r["duration"] for r in rows) / 3600,
        "teacher_wer": 100.0 * totals.wer if totals.ref_words else None,
        "filter": report.to_dict(include_ids=False),
        "options": asdict(options),
        "failures": failures,
    }
    write_text_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


# -- the WER filter -----------------------------------------------------------------------


@dataclass
class WerFilterReport:
    """What ``filter_by_wer`` kept and dropped. ``dropped_ids`` maps each dropped row's id to
    its teacher WER (percent; None: no reference to compare with)."""

    max_wer: float
    kept: int = 0
    dropped: int = 0
    kept_hours: float = 0.0
    dropped_hours: float = 0.0
    dropped_ids: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self, include_ids: bool = True) -> dict:
        data = asdict(self)
        if not include_ids:
            data.pop("dropped_ids")
        return data

    def summary(self) -> str:
        """``kept 95 of 100 rows (1.20 h) with teacher WER < 10 %; dropped 5 (0.06 h)``."""
        total = self.kept + self.dropped
        return (
            f"kept {self.kept} of {total} rows ({self.kept_hours:.2f} h) with teacher WER "
            f"< {self.max_wer:g} %; dropped {self.dropped} ({self.dropped_hours:.2f} h)"
        )


def _field(row, name: str):
    """``row[name]`` for a dict, else the attribute, else ``row.extra[name]`` (Utterance)."""
    if isinstance(row, dict):
        return row.get(name)
    if hasattr(row, name):
        return getattr(row, name)
    return getattr(row, "extra", {}).get(name)


def filter_by_wer(rows: Iterable, max_wer: float = DEFAULT_MAX_WER) -> tuple[list, WerFilterReport]:
    """Keep the rows whose ``teacher_wer`` (percent) is known and below ``max_wer``.

    ``rows`` are label dicts (``labels.jsonl`` lines) or Utterance-like objects carrying
    ``teacher_wer`` and ``id`` in ``extra``. Rows without a reference (``teacher_wer`` None)
    are dropped: nothing says whether the teacher got them right. Order is kept.
    """
    _check_max_wer(max_wer)
    kept, report = [], WerFilterReport(max_wer=float(max_wer))
    for n, row in enumerate(rows):
        wer, hours = _field(row, "teacher_wer"), float(_field(row, "duration") or 0.0) / 3600
        if wer is not None and wer < max_wer:
            kept.append(row)
            report.kept += 1
            report.kept_hours += hours
            continue
        report.dropped += 1
        report.dropped_hours += hours
        report.dropped_ids[str(_field(row, "id") or f"row-{n}")] = wer
    return kept, report
