"""Place each utterance inside silence, as speech sits in a real recording.

Synthetic clips start on their first word and end on their last; in recordings speech starts
seconds into a file and pauses before it ends. A model trained only on tight clips learns
that the first words come at the start of its window, and a student distilled that way
repeats or doubles its transcript when it does not (docs/distill.md). ``write_padded`` writes
a copy of a corpus with seeded silence before (``lead``) and after (``trail``) each clip;
``whisperforge data pad`` is its command.

The silence is the clip's own noise floor, not digital zero: Gaussian noise at the RMS of the
clip's quietest 20 ms frames (zero for a clip whose quietest frames are exact silence, as
most TTS output is), so a padded noisy clip has no step where the speech starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisperforge.data.manifest import Utterance

FRAME_SECONDS = 0.02
QUIET_SHARE = 0.1  # the share of a clip's frames that sets its noise floor


def noise_floor(audio: np.ndarray, sample_rate: int = 16000) -> float:
    """RMS of the quietest ``QUIET_SHARE`` of the 20 ms frames of ``audio`` (0 for silence)."""
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    n = len(audio) // frame
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    k = max(1, int(n * QUIET_SHARE))
    return float(np.sort(rms)[:k].mean())


def draw_padding(
    rng: np.random.Generator,
    seconds: float,
    lead: tuple[float, float],
    trail: tuple[float, float],
    max_seconds: float | None,
) -> tuple[float, float]:
    """Seconds of silence before and after a clip of ``seconds``: uniform in ``lead`` and
    ``trail``, both shrunk in proportion when the result would pass ``max_seconds``."""
    before = float(rng.uniform(*lead))
    after = float(rng.uniform(*trail))
    if max_seconds is not None and seconds + before + after > max_seconds:
        room = max(0.0, max_seconds - seconds)
        scale = room / (before + after) if before + after > 0 else 0.0
        before, after = before * scale, after * scale
    return round(before, 3), round(after, 3)


def pad_clip(
    audio: np.ndarray,
    before: float,
    after: float,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    match_noise: bool = True,
) -> np.ndarray:
    """``audio`` with ``before`` / ``after`` seconds of silence (its noise floor, see the
    module docstring, or zeros with ``match_noise=False``) around it."""
    audio = np.asarray(audio, dtype=np.float32)
    level = noise_floor(audio, sample_rate) if match_noise else 0.0

    def silence(seconds: float) -> np.ndarray:
        n = round(seconds * sample_rate)
        if level == 0.0:
            return np.zeros(n, dtype=np.float32)
        return (rng.standard_normal(n) * level).astype(np.float32)

    return np.concatenate([silence(before), audio, silence(after)])


@dataclass
class PadReport:
    """What ``write_padded`` did."""

    manifest: str
    written: int = 0
    reused: int = 0  # files already complete on disk from an earlier run with the same plan
    seconds: float = 0.0
    left_out: list[dict] = field(default_factory=list)  # {"id", "audio", "reason"}

    def summary(self) -> str:
        rows = self.written + self.reused
        text = (f"{rows} utterances padded ({self.seconds / 3600:.2f} h, {self.reused} already "
                f"written) in {self.manifest}")  # fmt: skip
        if self.left_out:
            text += f"; {len(self.left_out)} left out"
        return text


def _previous(manifest: Path) -> dict[str, dict]:
    import json

    if not manifest.exists():
        return {}
    rows = (json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines())
    return {r["audio"]: r for r in rows if isinstance(r, dict) and "audio" in r}


def write_padded(
    utterances: list[Utterance],
    out_dir: str | Path,
    name: str = "train",
    lead: tuple[float, float] = (0.5, 10.0),
    trail: tuple[float, float] = (0.0, 2.0),
    max_seconds: float | None = 30.0,
    seed: int = 0,
    match_noise: bool = True,
    progress: Callable[[int], None] | None = None,
) -> PadReport:
    """Write each utterance with silence around it (``draw_padding``, ``pad_clip``; row ``i``
    draws from ``(seed, i)``) as 16 kHz FLAC under ``out_dir/audio/<name>/`` and the
    manifest ``out_dir/<name>.jsonl``: the source rows with ``audio`` and ``duration``
    replaced and ``lead`` / ``trail`` (seconds) and ``noise`` (``floor`` or ``zeros``) added;
    ``source_audio`` names the original.

    Files and the manifest are written atomically and a rerun reuses the files an earlier
    run with the same plan wrote; a clip that cannot be read is reported in ``left_out`` and
    the rest goes on. A clip already longer than ``max_seconds`` is copied unpadded.
    """
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, AudioError, load_audio
    from whisperforge.data.manifest import write_manifest
    from whisperforge.data.packing import left_out_row
    from whisperforge.data.synth import write_flac_atomic

    for label, (low, high) in (("lead", lead), ("trail", trail)):
        if not 0 <= low <= high:
            raise ValueError(f"{label} must be MIN,MAX seconds, 0 <= MIN <= MAX; got {low},{high}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    out_dir = Path(out_dir)
    manifest = out_dir / f"{name}.jsonl"
    report = PadReport(str(manifest))
    before_run = _previous(manifest)
    noise = "floor" if match_noise else "zeros"
    rows: list[Utterance] = []
    for index, utt in enumerate(utterances):
        rng = np.random.default_rng([seed, index])
        path = out_dir / "audio" / name / f"{index:06d}.flac"
        source = utt.audio if utt.audio is not None else utt.array
        try:
            if utt.duration is not None:
                seconds = float(utt.duration)
                audio = None
            else:
                audio = load_audio(source, utt.sampling_rate)
                seconds = len(audio) / SAMPLE_RATE
            before, after = draw_padding(rng, seconds, lead, trail, max_seconds)
            key = f"audio/{name}/{index:06d}.flac"
            old = before_run.get(key)
            plan = {"source_audio": utt.audio, "lead": before, "trail": after, "noise": noise}
            if path.exists() and old is not None and all(old.get(k) == v for k, v in plan.items()):
                total = sf.info(str(path)).frames / SAMPLE_RATE
                report.reused += 1
            else:
                if audio is None:
                    audio = load_audio(source, utt.sampling_rate)
                padded = pad_clip(audio, before, after, rng, SAMPLE_RATE, match_noise)
                write_flac_atomic(path, np.clip(padded, -1.0, 1.0))
                total = len(padded) / SAMPLE_RATE
                report.written += 1
        except AudioError as error:
            report.left_out.append(left_out_row(utt, f"cannot decode: {error}"))
        else:
            extra = dict(utt.extra) | plan
            rows.append(Utterance(str(path), utt.text, utt.language, round(total, 3),
                                  utt.speaker, extra))  # fmt: skip
            report.seconds += total
        if progress is not None:
            progress(1)
    write_manifest(rows, manifest)
    return report
