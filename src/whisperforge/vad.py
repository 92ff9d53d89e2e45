"""Voice activity detection: transcribe only the stretches of a file that hold speech.

``speech_map(audio)`` runs Silero VAD (the ``silero-vad`` package, whose model ships inside
its wheel: nothing is downloaded) over 16 kHz audio and returns a ``SpeechMap``: the speech
stretches, each widened by ``speech_pad`` seconds on both sides and merged where the silence
between them is shorter than ``min_silence``. ``SpeechMap.compact`` joins those stretches into
one shorter array for the transcriber; ``SpeechMap.restore`` maps segment times in it back to
times in the original file. This is faster-whisper's ``vad_filter``: long silences, music and
noise never reach the decoder, so they cannot be transcribed as words (Whisper's "you" on
silence), and the encoder and decoder do less work on recordings with pauses.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from functools import cache, cached_property, lru_cache

import numpy as np

from whisperforge.audio import SAMPLE_RATE

DEFAULT_THRESHOLD = 0.5  # speech probability a 32 ms frame needs (Silero's default)
DEFAULT_MIN_SILENCE = 2.0  # s: shorter pauses stay inside a stretch (faster-whisper's default)
DEFAULT_SPEECH_PAD = 0.4  # s: kept around each stretch (faster-whisper's default)
MIN_SPEECH = 0.25  # s: shorter detections are dropped (Silero's default)
FRAME = 512  # samples Silero scores at a time (32 ms)
STREAM_SECONDS = 30.0  # audio per parallel Silero stream: shorter files are one stream
MAX_STREAMS = 16  # rows scored in one batch
MAX_PIECE_SECONDS = 120.0  # longer files are cut into more pieces, scored 16 at a time
WARM_UP_FRAMES = 64  # 2 s each later stream hears before its piece, to settle the model
# Silero misses quiet speech: on speech whose loudest 32 ms frame is below about -40 dB RMS it
# drops words, below -55 dB all of them, where Whisper (whose log-mel features are clamped
# relative to their maximum) still transcribes it. Quieter audio is scored louder
# (``level_gain``).
QUIET_LEVEL = 10 ** (-35 / 20)  # loudest-frame RMS below which audio is amplified for Silero
TARGET_LEVEL = 10 ** (-10 / 20)  # ... to this
MAX_GAIN = 10 ** (60 / 20)  # at most 60 dB: digital silence and dither stay silence

_lock = threading.Lock()  # the Silero model keeps state between frames: one user at a time
logger = logging.getLogger(__name__)


def is_available() -> bool:
    """Whether Silero VAD (the ``vad`` extra) is installed."""
    return importlib.util.find_spec("silero_vad") is not None


@cache
def warn_default_unavailable(model: str, work: str = "transcrib") -> None:
    """Say once per model that its default VAD is skipped because silero-vad is missing
    (``work``: the stem of what it does, "transcrib" or "tokeniz")."""
    logger.warning(
        "%s %ses with voice activity detection by default, but the silero-vad package "
        "is not installed: %sing without it (speech after long silences may be "
        "misread); pip install 'whisperforge[vad]', or pass vad=False (--no-vad) to silence "
        "this", model, work, work,
    )  # fmt: skip


def default_on(default: bool, model: str, work: str = "transcrib") -> bool:
    """Whether a model whose config asks for VAD by default (``default``) gets it: not
    where silero-vad is missing, which ``warn_default_unavailable`` says once."""
    if not default:
        return False
    if not is_available():
        warn_default_unavailable(model, work)
        return False
    return True


@lru_cache(maxsize=1)
def _model():
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as error:
        raise ImportError(
            "voice activity detection needs the silero-vad package: pip install 'whisperforge[vad]'"
        ) from error
    finally:
        # importing silero_vad sets torch.set_num_threads(1) for the whole process, which
        # would leave the transcription that follows on one core
        torch.set_num_threads(threads)
    return load_silero_vad()


@dataclass(frozen=True)
class SpeechMap:
    """Where each kept stretch lies in the original audio, as ``(start, end)`` samples."""

    chunks: tuple[tuple[int, int], ...]
    total: int  # samples of the original audio
    pad: int = 0  # samples of non-speech kept on each side of a stretch apart from the next
    # Silero's score of each 32 ms frame of the original audio, where they were kept
    probs: np.ndarray | None = field(default=None, compare=False, repr=False)

    def speech_probabilities(self) -> np.ndarray | None:
        """A score for each 32 ms frame of the compacted audio (``compact``): the score of
        the original frame its first sample comes from. None where no scores were kept."""
        if self.probs is None:
            return None
        if not self.chunks or not len(self.probs):
            return np.zeros(0, np.float32)
        positions = np.arange(-(-self.kept // FRAME)) * FRAME  # samples of the compacted audio
        offsets = np.asarray(self._offsets)
        chunk = np.searchsorted(offsets, positions, side="right") - 1
        starts = np.asarray([start for start, _ in self.chunks])
        original = starts[chunk] + positions - offsets[chunk]
        return self.probs[np.minimum(original // FRAME, len(self.probs) - 1)]

    @property
    def kept(self) -> int:
        return sum(end - start for start, end in self.chunks)

    @property
    def duration_after_vad(self) -> float:
        return self.kept / SAMPLE_RATE

    @cached_property
    def _offsets(self) -> list[int]:
        """Where each stretch starts in the compacted audio, in samples."""
        return np.cumsum([0] + [end - start for start, end in self.chunks[:-1]]).tolist()

    def compact(self, audio: np.ndarray) -> np.ndarray:
        """The kept stretches of ``audio`` joined end to end (empty when there is no speech)."""
        if not self.chunks:
            return audio[:0]
        return np.concatenate([audio[start:end] for start, end in self.chunks])

    def speech(self, audio: np.ndarray) -> np.ndarray:
        """What the model hears: ``compact(audio)``, lifted to a normal level where it is
        quiet (``level_gain`` of the kept audio: 1 at a normal level). Whisper reads speech
        40 dB down worse than the same speech at a normal level, and lifting is only safe on
        audio VAD has found to be speech: on a whole file it would lift quiet hiss into
        made-up words."""
        kept = self.compact(audio)
        gain = level_gain(kept)
        return kept if gain == 1.0 else kept * np.float32(gain)

    def _index(self, x: float, is_end: bool) -> int:
        find = bisect_left if is_end else bisect_right
        return min(max(find(self._offsets, x) - 1, 0), len(self.chunks) - 1)

    def original_time(self, seconds: float, is_end: bool = False) -> float:
        """Seconds in the compacted audio -> seconds in the original. A time exactly on a
        join belongs to the stretch that ends there when ``is_end``, else to the next one."""
        if not self.chunks:
            return 0.0
        x = seconds * SAMPLE_RATE
        i = self._index(x, is_end)
        start, end = self.chunks[i]
        limit = end if i < len(self.chunks) - 1 else self.total
        return min(start + x - self._offsets[i], limit) / SAMPLE_RATE

    def _compact_end(self, i: int) -> int:
        """Where stretch ``i`` ends in the compacted audio, in samples."""
        return self._offsets[i] + self.chunks[i][1] - self.chunks[i][0]

    def _apart(self, i: int) -> bool:
        """True when silence was cut out between stretch ``i`` and ``i + 1``."""
        return self.chunks[i + 1][0] > self.chunks[i][1]

    def segment_times(self, start: float, end: float) -> tuple[float, float]:
        """A segment's compacted ``(start, end)`` in the original file. Whisper's timestamps
        are coarse: a segment that crosses a join but starts in the padding after one
        stretch starts with the next; one that ends in the padding before a stretch ends
        with the previous one (padding is not speech)."""
        if not self.chunks:
            return 0.0, 0.0
        s, e = start * SAMPLE_RATE, end * SAMPLE_RATE
        i, j = self._index(s, False), self._index(e, True)
        if i < j and self._apart(i):
            end_i = self._compact_end(i)
            if s >= end_i - self.pad:
                s, i = end_i, i + 1
        if i < j and self._apart(j - 1) and e <= self._offsets[j] + self.pad:
            e = self._offsets[j]
        return (
            self.original_time(s / SAMPLE_RATE),
            self.original_time(e / SAMPLE_RATE, is_end=True),
        )

    def word_times(self, start: float, end: float) -> tuple[float, float]:
        """A word's compacted ``(start, end)`` in the original file. A word whose time
        crosses a join where silence was cut out keeps the side it spends longer on (the
        attention path lingers on a word next to a pause)."""
        if not self.chunks:
            return 0.0, 0.0
        s, e = start * SAMPLE_RATE, end * SAMPLE_RATE
        i, j = self._index(s, False), self._index(e, True)
        if i < j and any(self._apart(k) for k in range(i, j)):
            end_i = self._compact_end(i)
            if end_i - s >= e - self._offsets[j]:
                e = end_i
            else:
                s = self._offsets[j]
        return (
            self.original_time(s / SAMPLE_RATE),
            self.original_time(e / SAMPLE_RATE, is_end=True),
        )

    def _stretch(self, seconds: float) -> int:
        """Index of the kept stretch that compacted time ``seconds`` lies in."""
        return self._index(seconds * SAMPLE_RATE, False)

    def _restore_words(self, seg) -> list:
        """A segment with words re-timed word by word, and split where silence was cut out
        between two of its words: no segment spans a pause VAD removed."""
        stretches = [self._stretch((w.start + w.end) / 2) for w in seg.words]
        words = []
        for w in seg.words:
            start, end = self.word_times(w.start, w.end)
            words.append(replace(w, start=round(start, 3), end=round(end, 3)))
        parts, first = [], 0
        for k in range(1, len(words) + 1):
            cut = k == len(words) or any(
                self._apart(n) for n in range(stretches[k - 1], stretches[k])
            )
            if not cut:
                continue
            part = words[first:k]
            whole = first == 0 and k == len(words)
            parts.append(
                replace(
                    seg,
                    start=part[0].start,
                    end=part[-1].end,
                    text=seg.text if whole else "".join(w.word for w in part),
                    tokens=seg.tokens if whole else tuple(t for w in part for t in w.tokens),
                    words=tuple(part),
                )
            )
            first = k
        return parts

    def restore(self, segments: list) -> list:
        """Segments timed in the compacted audio, re-timed in the original file (word by
        word where they have words, ``segment_times`` otherwise); ids count them again."""
        restored = []
        for seg in segments:
            if getattr(seg, "words", None):
                restored.extend(self._restore_words(seg))
                continue
            start, end = self.segment_times(seg.start, seg.end)
            restored.append(replace(seg, start=round(start, 3), end=round(end, 3)))
        return [replace(seg, id=i) for i, seg in enumerate(restored)]


def check_options(threshold: float, min_silence: float, speech_pad: float) -> None:
    """Reject VAD settings that cannot work (``TranscribeOptions`` and ``speech_map``)."""
    if not 0 < threshold < 1:
        raise ValueError(f"vad_threshold must be between 0 and 1, not {threshold}")
    if min_silence < 0 or speech_pad < 0:
        raise ValueError("vad_min_silence and vad_speech_pad must be >= 0 seconds")


@dataclass(frozen=True)
class VadOptions:
    """Settings of ``speech_map`` as one value (speech tokens, tokenizer evaluation); the
    defaults are faster-whisper's, as for ``TranscribeOptions``."""

    threshold: float = DEFAULT_THRESHOLD
    min_silence: float = DEFAULT_MIN_SILENCE
    speech_pad: float = DEFAULT_SPEECH_PAD

    def __post_init__(self) -> None:
        check_options(self.threshold, self.min_silence, self.speech_pad)

    def find(self, audio: np.ndarray) -> SpeechMap:
        """The speech in ``audio`` (``speech_map`` with these settings)."""
        return speech_map(audio, self.threshold, self.min_silence, self.speech_pad)


def speech_only(audio: np.ndarray, vad: VadOptions | bool | None) -> np.ndarray:
    """``audio`` as it is without ``vad``; with it (True: the defaults) only the speech VAD
    finds, its stretches joined end to end (empty when there is none)."""
    if not vad:
        return audio
    options = VadOptions() if vad is True else vad
    return options.find(audio).speech(audio)


def level_gain(audio: np.ndarray) -> float:
    """The gain ``speech_map`` gives ``audio`` before Silero scores it: 1 where its loudest
    32 ms frame is at least ``QUIET_LEVEL`` (-35 dB RMS), else what lifts that frame to
    ``TARGET_LEVEL`` (-10 dB, speech recorded at a normal level), at most ``MAX_GAIN``. As the
    loudest frame (not a typical one) decides, no frame ends up louder than -10 dB however
    much silence surrounds the speech, and a click louder than the speech leaves the audio as
    it was."""
    n = len(audio) // FRAME
    if n == 0:
        return 1.0
    frames = np.asarray(audio[: n * FRAME]).reshape(n, FRAME)  # a view: no copy of an hour
    loudest = float(np.sqrt(np.einsum("ij,ij->i", frames, frames).max() / FRAME))
    if loudest >= QUIET_LEVEL:
        return 1.0
    return min(TARGET_LEVEL / max(loudest, 1e-12), MAX_GAIN)


def speech_probabilities(model, samples) -> list[float]:
    """Silero's speech probability for each 32 ms frame of 16 kHz ``samples`` (a 1-D tensor).

    Silero carries a state from frame to frame, so one stream is a loop of one small step per
    frame. A file of ``2 * STREAM_SECONDS`` or more is cut into pieces of at least
    ``STREAM_SECONDS`` (up to ``MAX_STREAMS`` of them, more only to keep each under
    ``MAX_PIECE_SECONDS``) scored side by side, ``MAX_STREAMS`` rows at a time (several times
    faster on a long file, with memory bounded by the rows of one batch), each later piece
    preceded by ``WARM_UP_FRAMES`` frames of the audio before it, whose scores are dropped. The
    state does not settle exactly: next to a cut a probability may differ slightly from one
    stream's, which can move a stretch's edge by a few frames (0.13 s at most in the tests,
    inside the 0.4 s of padding). Shorter files are scored as one stream, exactly as Silero's
    own loop scores them.
    """
    n_frames = -(-len(samples) // FRAME)
    seconds = len(samples) / SAMPLE_RATE
    pieces = max(1, min(MAX_STREAMS, int(seconds // STREAM_SECONDS)),
                 -int(-seconds // MAX_PIECE_SECONDS))  # fmt: skip
    per = -(-n_frames // pieces)
    starts = list(range(0, n_frames, per))
    scores: list[float] = []
    for first in range(0, len(starts), MAX_STREAMS):
        group = starts[first : first + MAX_STREAMS]
        warm = [min(WARM_UP_FRAMES, start) for start in group]
        rows = samples.new_zeros(len(group), (per + max(warm)) * FRAME)  # zeros after the end
        for row, (start, w) in enumerate(zip(group, warm)):
            piece = samples[(start - w) * FRAME : (start + per) * FRAME]
            rows[row, : len(piece)] = piece
        model.reset_states()
        batch = model.audio_forward(rows, SAMPLE_RATE)
        for row, (start, w) in enumerate(zip(group, warm)):
            scores += batch[row, w : w + min(per, n_frames - start)].tolist()
    return scores


def _lifted(audio: np.ndarray):
    """``audio`` as the tensor Silero scores: quiet audio lifted by ``level_gain``."""
    import torch

    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    gain = level_gain(audio)
    return samples if gain == 1.0 else samples * gain


def frame_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability for each 32 ms frame (``FRAME`` samples) of 16 kHz mono
    ``audio``, scored as ``speech_map`` scores it (quiet audio lifted by ``level_gain``)."""
    import torch

    if len(audio) == 0:
        return np.zeros(0, dtype=np.float32)
    model = _model()
    samples = _lifted(audio)
    with _lock, torch.inference_mode():
        if hasattr(model, "audio_forward"):
            probs = speech_probabilities(model, samples)
        else:  # an older silero-vad: one frame at a time
            model.reset_states()
            padded = torch.nn.functional.pad(samples, (0, -len(samples) % FRAME))
            probs = [model(frame, SAMPLE_RATE).item() for frame in padded.split(FRAME)]
    return np.asarray(probs, dtype=np.float32)


def speech_map(
    audio: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_silence: float = DEFAULT_MIN_SILENCE,
    speech_pad: float = DEFAULT_SPEECH_PAD,
) -> SpeechMap:
    """Find the speech in 16 kHz mono ``audio`` (float32); see the module docstring. Quiet
    audio is scored louder (``level_gain``): Silero would miss its speech."""
    import torch

    check_options(threshold, min_silence, speech_pad)
    total = len(audio)
    if total == 0:
        return SpeechMap((), 0)
    model = _model()  # first: a missing package is reported with the extra to install
    import silero_vad

    samples = _lifted(audio)
    settings = dict(
        threshold=threshold,
        sampling_rate=SAMPLE_RATE,
        min_speech_duration_ms=int(MIN_SPEECH * 1000),
        min_silence_duration_ms=int(min_silence * 1000),
        speech_pad_ms=int(speech_pad * 1000),
    )
    from_probs = getattr(silero_vad, "get_speech_timestamps_from_probs", None)
    probs = None
    with _lock, torch.inference_mode():
        if from_probs is not None and hasattr(model, "audio_forward"):
            probs = speech_probabilities(model, samples)
            found = from_probs(probs, audio_length_samples=total, **settings)
        else:  # an older silero-vad: its own frame-by-frame loop
            found = silero_vad.get_speech_timestamps(samples, model, **settings)
    chunks = [(max(int(t["start"]), 0), min(int(t["end"]), total)) for t in found]
    kept = tuple((s, e) for s, e in chunks if e > s)
    scores = None if probs is None else np.asarray(probs, dtype=np.float32)
    return SpeechMap(kept, total, pad=int(speech_pad * SAMPLE_RATE), probs=scores)
