"""Speech manifests: JSONL, one utterance a line, audio paths relative to the manifest.

    {"audio": "audio/flite-slt/test-000012.flac", "text": "...", "language": "en",
     "duration": 3.42, "speaker": "flite:slt", "voice": "flite:slt", ...}

``audio`` and ``text`` are required for a valid row; ``duration`` (seconds) is read from the
file header when missing; ``language`` and ``speaker`` are expected; any other field is kept in
``Utterance.extra`` and written back.
Validation never drops a row silently: every skipped row is listed in a ``ValidationReport``
with its line number and the reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CORE_FIELDS = ("audio", "text", "language", "duration", "speaker")
DURATION_TOLERANCE_S = 0.1
"""A manifest duration may differ this much (seconds) from the file's before it is an error."""


class ManifestError(ValueError):
    """A manifest or dataset cannot be read at all."""


@dataclass
class Utterance:
    """One utterance. ``audio`` is an absolute path once read (or None when the samples are
    held in ``array``: float32 mono at ``sampling_rate`` Hz, e.g. from an HF dataset)."""

    audio: str | None
    text: str
    language: str | None = None
    duration: float | None = None
    speaker: str | None = None
    extra: dict = field(default_factory=dict)
    array: np.ndarray | None = field(default=None, repr=False)
    sampling_rate: int | None = None

    def to_row(self, base_dir: str | Path | None = None) -> dict:
        """A JSON-ready dict; ``audio`` relative to ``base_dir`` when given."""
        audio = self.audio
        if audio is not None and base_dir is not None:
            audio = Path(os.path.relpath(Path(audio).resolve(), Path(base_dir).resolve()))
            audio = audio.as_posix()
        row = {"audio": audio, "text": self.text, "language": self.language}
        row |= {"duration": self.duration, "speaker": self.speaker}
        return row | self.extra

    @classmethod
    def from_row(cls, row: dict, base_dir: str | Path | None = None) -> Utterance:
        """Build from a manifest row; a relative ``audio`` is resolved against ``base_dir``."""
        audio = row.get("audio")
        if isinstance(audio, str) and base_dir is not None and not os.path.isabs(audio):
            audio = str(Path(base_dir) / audio)
        duration = row.get("duration")
        return cls(
            audio=audio,
            text=row.get("text") if isinstance(row.get("text"), str) else "",
            language=row.get("language"),
            duration=float(duration) if isinstance(duration, (int, float)) else duration,
            speaker=None if row.get("speaker") is None else str(row["speaker"]),
            extra={k: v for k, v in row.items() if k not in CORE_FIELDS},
        )

    @property
    def voice(self) -> str | None:
        """The synthetic voice (``flite:slt``), or the speaker for real speech."""
        return self.extra.get("voice", self.speaker)


@dataclass
class Skipped:
    """A row left out: its 1-based line (or dataset index), why, and the row itself."""

    line: int
    reason: str
    row: object


@dataclass
class ValidationReport:
    """Rows kept and rows skipped (with reasons) by ``validate``."""

    kept: list[Utterance] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(s.reason.split(":")[0] for s in self.skipped)

    def summary(self) -> str:
        """``kept 97 of 100 rows; skipped 3: missing file 2, empty text 1``."""
        total = len(self.kept) + len(self.skipped)
        text = f"kept {len(self.kept)} of {total} rows"
        if self.skipped:
            parts = ", ".join(f"{r} {n}" for r, n in self.reasons().most_common())
            text += f"; skipped {len(self.skipped)}: {parts}"
        return text


def file_duration(path: str | Path) -> float | None:
    """Duration in seconds from the file header (wav/flac/ogg), or None if soundfile cannot
    read the header (mp3, m4a, ...: decoded later by ``whisperforge.audio``)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError):
        return None
    return info.frames / info.samplerate


def check_row(
    utt: Utterance,
    check_audio: bool = True,
    max_duration: float | None = None,
    require_text: bool = True,
):
    """The reason a row is unusable, or None. Checks text (unless ``require_text`` is false:
    unlabelled audio), duration, and (when ``check_audio``) that the file exists and its
    header agrees with the duration."""
    if require_text and (not utt.text or not utt.text.strip()):
        return "empty text"
    if utt.audio is None and utt.array is None:
        return "missing audio: no 'audio' path"
    if utt.duration is None and check_audio and utt.audio is not None:
        if not os.path.isfile(utt.audio):
            return f"missing file: {utt.audio}"
        utt.duration = file_duration(utt.audio)  # optional in a manifest: read the header
        if utt.duration is None:  # a format without a cheap header (mp3, m4a): decoded later
            return None
    d = utt.duration
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not math.isfinite(d):
        return f"bad duration: {d!r} is not a number of seconds"
    if d <= 0:
        return f"bad duration: {d} s is not positive"
    if max_duration is not None and d > max_duration:
        return f"too long: {d:.1f} s > {max_duration:.1f} s"
    if check_audio and utt.audio is not None:
        if not os.path.isfile(utt.audio):
            return f"missing file: {utt.audio}"
        actual = file_duration(utt.audio)
        if actual is not None and abs(actual - d) > DURATION_TOLERANCE_S:
            return f"duration mismatch: file {actual:.2f} s, manifest {d:.2f} s"
    return None


def validate(
    utterances: Iterable[tuple[int, Utterance | Skipped]],
    check_audio: bool = True,
    max_duration: float | None = None,
    require_text: bool = True,
) -> ValidationReport:
    """Split ``(line, utterance)`` pairs into kept and skipped; pre-skipped rows pass through."""
    report = ValidationReport()
    for line, utt in utterances:
        if isinstance(utt, Skipped):
            report.skipped.append(utt)
            continue
        reason = check_row(utt, check_audio, max_duration, require_text)
        if reason is None:
            report.kept.append(utt)
        else:
            report.skipped.append(Skipped(line, reason, utt.to_row()))
    return report


def iter_manifest(path: str | Path) -> Iterator[tuple[int, Utterance | Skipped]]:
    """``(line number, Utterance)`` for each line; unparseable lines come as ``Skipped``."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield number, Skipped(number, f"invalid JSON: {err.msg}", line.rstrip("\n"))
                continue
            if not isinstance(row, dict):
                yield number, Skipped(number, "invalid JSON: not an object", row)
                continue
            yield number, Utterance.from_row(row, path.parent)


def load_manifest(
    path: str | Path, check_audio: bool = True, max_duration: float | None = None
) -> ValidationReport:
    """Read and validate a manifest; see ``ValidationReport.summary``."""
    return validate(iter_manifest(path), check_audio, max_duration)


def read_manifest(path: str | Path, check_audio: bool = True) -> list[Utterance]:
    """The valid rows of a manifest; skipped rows are logged with their reasons."""
    report = load_manifest(path, check_audio)
    if report.skipped:
        logger.warning("%s: %s", path, report.summary())
        for skipped in report.skipped[:20]:
            logger.warning("  line %d: %s", skipped.line, skipped.reason)
    return report.kept


def write_manifest(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write JSONL atomically (temp file + rename), audio paths relative to the manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for utt in utterances:
            handle.write(json.dumps(utt.to_row(path.parent), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
