"""Result types shared by transcription, writers, evaluation and the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Word:
    """One word of a segment, timed by the decoder's cross-attention (``word_timestamps``).

    ``word`` keeps its leading space and the punctuation that belongs to it, so a segment's
    words joined are its text; ``probability`` is the mean probability of its tokens;
    ``tokens`` its text token ids (left out of ``to_dict``, as openai-whisper's output does).
    """

    start: float
    end: float
    word: str
    probability: float = 0.0
    tokens: tuple[int, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "word": self.word,
                "probability": self.probability}  # fmt: skip


@dataclass(frozen=True)
class Segment:
    """One stretch of transcribed speech.

    ``start`` and ``end`` are seconds from the start of the file; ``tokens`` are the text
    token ids (no special or timestamp tokens); ``avg_logprob`` is the mean log-probability
    per sampled token; ``no_speech_prob`` the probability of ``<|nospeech|>`` at the first
    decoding step of the window the segment came from; ``words`` its timed words when word
    timestamps were asked for (the segment then spans its words).
    """

    id: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    words: tuple[Word, ...] | None = None  # with word_timestamps, else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        if self.words is None:
            del d["words"]
        else:
            d["words"] = [w.to_dict() for w in self.words]
        return d


@dataclass
class TranscriptionInfo:
    """What a transcription was made from: the audio, the language and the options used."""

    language: str
    language_probability: float
    duration: float
    options: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    all_language_probs: list[tuple[str, float]] | None = None
    duration_after_vad: float | None = None  # seconds kept by voice activity detection

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
