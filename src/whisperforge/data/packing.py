"""Pack short utterances into windows of up to 30 s, as Distil-Whisper does for training.

Whisper sees 30 s windows; a 3 s clip pads 27 s of nothing. Concatenating consecutive
utterances of the same speaker (and language) into one window, with their texts joined, trains
on full windows and teaches the model to continue across sentence boundaries
(Gandhi et al., 2023, "Distil-Whisper", section 4.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from whisperforge.data.manifest import Utterance

WINDOW_SECONDS = 30.0
"""Whisper's input window (seconds)."""


@dataclass
class Pack:
    """Utterances played one after another with ``gap_seconds`` of silence between them."""

    utterances: list[Utterance]
    gap_seconds: float = 0.0

    @property
    def duration(self) -> float:
        """Total seconds, gaps included."""
        gaps = self.gap_seconds * max(0, len(self.utterances) - 1)
        return sum(float(u.duration or 0.0) for u in self.utterances) + gaps

    @property
    def text(self) -> str:
        return " ".join(u.text.strip() for u in self.utterances)

    @property
    def speaker(self) -> str | None:
        return self.utterances[0].voice

    @property
    def language(self) -> str | None:
        return self.utterances[0].language


@dataclass
class PackResult:
    """Packs in order of their first utterance, and utterances too long to fit any window."""

    packs: list[Pack] = field(default_factory=list)
    too_long: list[Utterance] = field(default_factory=list)


def _default_key(utt: Utterance) -> tuple:
    return (utt.voice, utt.language)


def pack_utterances(
    utterances: Iterable[Utterance],
    max_seconds: float = WINDOW_SECONDS,
    gap_seconds: float = 0.0,
    key: Callable[[Utterance], object] = _default_key,
) -> PackResult:
    """Greedily pack consecutive utterances with the same ``key`` (speaker/voice and language).

    Input order is kept within a speaker; a pack closes when the next utterance would push it
    past ``max_seconds`` (seconds, gaps included), so no pack is ever longer. Utterances longer
    than ``max_seconds`` on their own are returned in ``too_long``, not dropped silently.
    Deterministic: the same input gives the same packs.
    """
    if max_seconds <= 0 or gap_seconds < 0:
        raise ValueError(
            f"need max_seconds > 0 and gap_seconds >= 0, got {max_seconds}, {gap_seconds}"
        )
    result = PackResult()
    open_packs: dict[object, Pack] = {}
    order: list[Pack] = []
    for utt in utterances:
        duration = float(utt.duration or 0.0)
        if duration > max_seconds:
            result.too_long.append(utt)
            continue
        k = key(utt)
        pack = open_packs.get(k)
        if pack is not None and pack.duration + gap_seconds + duration <= max_seconds:
            pack.utterances.append(utt)
            continue
        pack = Pack([utt], gap_seconds)
        open_packs[k] = pack
        order.append(pack)
    result.packs = order
    return result


def pack_audio(
    pack: Pack, load: Callable[[Utterance], np.ndarray], sample_rate: int = 16000
) -> np.ndarray:
    """The pack's samples: each utterance from ``load`` (float32 mono at ``sample_rate``),
    joined with ``gap_seconds`` of silence. ``load`` is usually a wrapper around
    ``whisperforge.audio.load_audio``."""
    gap = np.zeros(round(pack.gap_seconds * sample_rate), dtype=np.float32)
    pieces = []
    for i, utt in enumerate(pack.utterances):
        if i:
            pieces.append(gap)
        pieces.append(np.asarray(load(utt), dtype=np.float32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


@dataclass
class StreamWindow:
    """A 30 s cut of a recording made of consecutive utterances with pauses between them.

    ``offsets`` are the members' start times relative to the window start (the first may be
    negative: the window starts inside it); ``cut_head`` / ``cut_tail`` say whether the first
    member starts before the window or the last ends after it.
    """

    utterances: list[Utterance]
    offsets: list[float]
    seconds: float
    cut_head: bool
    cut_tail: bool

    def keeping(self, utterances: Iterable[Utterance]) -> StreamWindow:
        """This window with only the members in ``utterances`` (the others could not be read),
        each where it was; an end counts as cut only if its cut member is still there."""
        held = {id(u) for u in utterances}
        placed = [(u, o) for u, o in zip(self.utterances, self.offsets) if id(u) in held]
        members = [u for u, _ in placed]
        head = self.cut_head and bool(members) and members[0] is self.utterances[0]
        tail = self.cut_tail and bool(members) and members[-1] is self.utterances[-1]
        return StreamWindow(members, [o for _, o in placed], self.seconds, head, tail)


def stream_windows(
    utterances: Iterable[Utterance],
    window_seconds: float = WINDOW_SECONDS,
    gap_range: tuple[float, float] = (0.3, 1.2),
    seed: int = 0,
    key: Callable[[Utterance], object] = _default_key,
    min_seconds: float = 1.0,
) -> list[StreamWindow]:
    """Cut recordings into windows the way long-form transcription does, not at sentence ends.

    The utterances of each ``key`` (a speaker and language), in input order, play one after
    another with seeded pauses drawn from ``gap_range``; the recording is cut into
    back-to-back windows of ``window_seconds`` from a seeded start (up to half a window before
    the first word, so the cuts fall anywhere and no speech is skipped): windows begin and end
    inside utterances, as the 30 s windows of a long file do. Windows holding no
    speech, and a recording's last window when shorter than ``min_seconds``, are left out
    (a few hundred ms of a cut word is nothing to learn from). Deterministic for a given
    input and ``seed``.
    """
    low, high = gap_range
    if window_seconds <= 0 or not 0 <= low <= high:
        raise ValueError(f"need window_seconds > 0 and 0 <= gap low <= high, got {gap_range}")
    by_key: dict[object, list[Utterance]] = {}
    for utt in utterances:
        by_key.setdefault(key(utt), []).append(utt)
    runs = list(by_key.values())
    windows: list[StreamWindow] = []
    for n, run in enumerate(runs):
        rng = np.random.default_rng([seed, n])
        starts, ends, t = [], [], 0.0
        for utt in run:
            starts.append(t)
            ends.append(t + float(utt.duration or 0.0))
            t += float(utt.duration or 0.0) + rng.uniform(low, high)
        a = -rng.uniform(0.0, window_seconds / 2)  # the first window opens on silence
        while a < ends[-1]:
            b = min(a + window_seconds, ends[-1])
            inside = [i for i in range(len(run)) if starts[i] < b and ends[i] > a]
            if inside and b - a >= min_seconds:
                windows.append(
                    StreamWindow(
                        [run[i] for i in inside],
                        [round(starts[i] - a, 4) for i in inside],
                        round(b - a, 4),
                        cut_head=starts[inside[0]] < a,
                        cut_tail=ends[inside[-1]] > b,
                    )
                )
            a = b
    return windows


def stream_audio(
    window: StreamWindow, load: Callable[[Utterance], np.ndarray], sample_rate: int = 16000
) -> np.ndarray:
    """The window's samples: each member's audio placed at its offset, silence elsewhere,
    cut to the window."""
    out = np.zeros(round(window.seconds * sample_rate), dtype=np.float32)
    for utt, offset in zip(window.utterances, window.offsets):
        samples = np.asarray(load(utt), dtype=np.float32)
        start = round(offset * sample_rate)
        lo, hi = max(0, -start), min(len(samples), len(out) - start)
        if hi > lo:
            out[start + lo : start + hi] = samples[lo:hi]
    return out


@dataclass
class PackReport:
    """What ``write_packs`` did: the manifest written, packs (new and already on disk), and
    utterances left out with their reasons."""

    manifest: str
    packs: int = 0
    reused: int = 0  # packs whose audio was already complete on disk (a rerun)
    utterances: int = 0
    seconds: float = 0.0
    left_out: list[dict] = field(default_factory=list)  # {"id", "audio", "reason"}

    def summary(self) -> str:
        hours = self.seconds / 3600
        text = (f"{self.utterances} utterances -> {self.packs} windows ({hours:.2f} h, "
                f"{self.reused} already written) in {self.manifest}")  # fmt: skip
        if self.left_out:
            text += f"; {len(self.left_out)} utterances left out"
        return text


def write_packs(
    utterances: list[Utterance],
    out_dir,
    name: str = "train",
    max_seconds: float = 25.0,
    gap_seconds: float = 0.3,
    progress: Callable[[int], None] | None = None,
    recordings: bool = False,
) -> PackReport:
    """Pack ``utterances`` (``pack_utterances``) and write each window as 16 kHz FLAC under
    ``out_dir/audio/<name>/`` plus the manifest ``out_dir/<name>.jsonl`` (texts joined, one
    speaker and language per window, ``members``: the ids packed).

    Nothing half-written is left: every file and the manifest are written atomically; a
    rerun reuses windows already on disk. An utterance whose audio cannot be read, or that is
    longer than ``max_seconds``, is reported in ``left_out`` and the rest goes on.
    ``max_seconds`` of 25 leaves the teacher room to finish its transcript of a 30 s window.
    With ``recordings`` a pack may be longer than Whisper's window: long recordings made of
    held-out sentences test long-form transcription.
    """
    from pathlib import Path

    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, AudioError, load_audio
    from whisperforge.data.manifest import write_manifest
    from whisperforge.data.synth import write_flac_atomic

    if max_seconds <= 0 or (max_seconds > WINDOW_SECONDS and not recordings):
        raise ValueError(
            f"max_seconds must be in (0, {WINDOW_SECONDS:.0f}], not {max_seconds}"
            " (longer recordings: recordings=True)"
        )
    out_dir = Path(out_dir)
    manifest = out_dir / f"{name}.jsonl"
    report = PackReport(str(manifest))
    known = [u for u in utterances if u.duration is not None]
    for utt in utterances:
        if utt.duration is None:
            report.left_out.append(left_out_row(utt, "no duration in the manifest"))
    result = pack_utterances(known, max_seconds, gap_seconds)
    report.left_out += [left_out_row(u, f"longer than {max_seconds:g} s") for u in result.too_long]
    before = _previous_members(manifest)
    rows: list[Utterance] = []
    for index, pack in enumerate(result.packs):
        path = out_dir / "audio" / name / f"{index:06d}.flac"
        pack_id = f"{name}-pack-{index:06d}"
        members = [u for u in pack.utterances if u.audio is not None or u.array is not None]
        readable: list[tuple[Utterance, np.ndarray | None]] = []
        if path.exists() and before.get(pack_id) == [_member_id(u) for u in members]:
            report.reused += 1
            readable = [(u, None) for u in members]
            seconds = sf.info(str(path)).frames / SAMPLE_RATE
        else:
            for utt in members:
                try:
                    source = utt.audio if utt.audio is not None else utt.array
                    readable.append((utt, load_audio(source, utt.sampling_rate)))
                except AudioError as error:
                    report.left_out.append(left_out_row(utt, f"cannot decode: {error}"))
            if not readable:
                continue
            joined = Pack([u for u, _ in readable], gap_seconds)
            samples = dict((id(u), a) for u, a in readable)
            audio = pack_audio(joined, lambda u, s=samples: s[id(u)], SAMPLE_RATE)
            write_flac_atomic(path, np.clip(audio, -1.0, 1.0))
            seconds = len(audio) / SAMPLE_RATE
        done = Pack([u for u, _ in readable], gap_seconds)
        ids = [_member_id(u) for u, _ in readable]
        rows.append(Utterance(str(path), done.text, done.language, round(seconds, 3),
                              done.utterances[0].speaker,
                              {"id": pack_id, "voice": done.speaker, "members": ids}))  # fmt: skip
        report.packs += 1
        report.utterances += len(readable)
        report.seconds += seconds
        if progress is not None:
            progress(len(pack.utterances))
    write_manifest(rows, manifest)
    return report


def _member_id(utt: Utterance) -> str:
    return str(utt.extra.get("id", utt.audio))


def _previous_members(manifest) -> dict[str, list[str]]:
    """``{pack id: member ids}`` of a manifest an earlier run wrote (empty if none): a
    window on disk is reused only when it holds the same utterances."""
    import json

    if not manifest.exists():
        return {}
    rows = (json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines())
    return {r["id"]: r.get("members") for r in rows if isinstance(r, dict) and "id" in r}


def left_out_row(utt: Utterance, reason: str) -> dict:
    """The report entry of an utterance a writer left out: ``{"id", "audio", "reason"}``."""
    return {"id": utt.extra.get("id"), "audio": utt.audio, "reason": reason}
