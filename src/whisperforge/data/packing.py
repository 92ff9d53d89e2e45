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
