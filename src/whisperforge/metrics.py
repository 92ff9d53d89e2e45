"""Evaluation metrics: Whisper's text normalisers, WER/CER, hallucination counts, speed.

The protocol (docs: DESIGN.md, "Evaluation protocol"):

- Text is normalised before scoring: Whisper's ``EnglishTextNormalizer`` for English,
  Whisper's ``BasicTextNormalizer`` for every other language (Radford et al. 2022, appendix C).
  ``language=None`` means English, the language of every benchmark this project reports.
  Languages written without spaces (zh, ja, th, ...) need per-character splitting and are out
  of scope for WER here; use CER for them.
- Error rates are corpus totals: ``sum(errors) / sum(reference units)`` over all utterances,
  never the mean of per-utterance rates (short utterances would otherwise weigh as much as
  long ones).
- CER counts the characters of the normalised text *including* the single spaces between
  words, as ``jiwer.cer`` and the Hugging Face ``evaluate`` CER do.
- A per-utterance rate over an empty reference is ``0.0`` when the hypothesis is empty too and
  ``inf`` when it is not (every hypothesis unit is an insertion; no finite rate describes that).
  Corpus totals stay finite as long as some reference in the corpus is non-empty.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import jiwer

_ENGLISH_NAMES = frozenset({"en", "english"})


@lru_cache(maxsize=1)
def _english_normalizer() -> Any:
    # Built once: its constructor loads a ~1,700-entry British->American spelling table.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@lru_cache(maxsize=1)
def _basic_normalizer() -> Any:
    from whisper_normalizer.basic import BasicTextNormalizer

    # Whisper's defaults: keep diacritics (Vietnamese "chào" stays "chào"), no letter splitting.
    return BasicTextNormalizer(remove_diacritics=False, split_letters=False)


def is_english(language: str | None) -> bool:
    """True for ``None``, ``"en"``, ``"english"`` and regional tags (``"en-US"``, ``"en_GB"``)."""
    if language is None:
        return True
    primary = language.strip().lower().replace("_", "-").split("-")[0]
    return primary in _ENGLISH_NAMES


def normalize_text(text: str, language: str | None = "en") -> str:
    """Normalise ``text`` for scoring, with whitespace collapsed to single spaces and stripped.

    English (``"en"``, ``"english"``, ``"en-US"``, or ``None``) uses Whisper's English normaliser
    (lower case, no punctuation, "Mr." -> "mister", British -> American spelling, spelled-out
    numbers -> digits, fillers like "uh" removed); any other language uses Whisper's basic
    normaliser (lower case, symbols and punctuation removed, diacritics kept).
    """
    normalizer = _english_normalizer() if is_english(language) else _basic_normalizer()
    return " ".join(normalizer(text).split())


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of a hypothesis against a reference, in words or in characters.

    ``ref_words`` (= hits + substitutions + deletions) is the reference length in the unit
    that was aligned: words for :func:`word_errors`, characters for :func:`char_errors`.
    Rates are fractions of ``ref_words``; see the module docstring for empty references.
    Counts add up (``a + b``, ``sum(counts)``), so corpus rates are total-based.
    """

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def ref_words(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def _rate(self, count: int) -> float:
        if self.ref_words:
            return count / self.ref_words
        return math.inf if count else 0.0

    @property
    def wer(self) -> float:
        """(S + D + I) / reference length; also the CER when the counts are characters."""
        return self._rate(self.errors)

    @property
    def substitution_rate(self) -> float:
        return self._rate(self.substitutions)

    @property
    def deletion_rate(self) -> float:
        return self._rate(self.deletions)

    @property
    def insertion_rate(self) -> float:
        return self._rate(self.insertions)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.hits + other.hits,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )

    def __radd__(self, other: object) -> ErrorCounts:
        # Lets the builtin sum() start from its default 0.
        if other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        """Counts, ``ref_words`` and the four rates, as plain numbers."""
        return {
            **asdict(self),
            "ref_words": self.ref_words,
            "wer": self.wer,
            "substitution_rate": self.substitution_rate,
            "deletion_rate": self.deletion_rate,
            "insertion_rate": self.insertion_rate,
        }


def _prepare(text: str, language: str | None, normalize: bool) -> str:
    return normalize_text(text, language) if normalize else " ".join(text.split())


def _align(
    reference: str,
    hypothesis: str,
    process: Callable[[str, str], Any],
    length: Callable[[str], int],
) -> ErrorCounts:
    # Empty sides are counted here: jiwer 3.x raises on an empty reference.
    if not reference or not hypothesis:
        return ErrorCounts(deletions=length(reference), insertions=length(hypothesis))
    out = process(reference, hypothesis)
    return ErrorCounts(out.hits, out.substitutions, out.deletions, out.insertions)


def _word_counts(reference: str, hypothesis: str) -> ErrorCounts:
    return _align(reference, hypothesis, jiwer.process_words, lambda s: len(s.split()))


def _char_counts(reference: str, hypothesis: str) -> ErrorCounts:
    return _align(reference, hypothesis, jiwer.process_characters, len)


def word_errors(
    reference: str, hypothesis: str, language: str | None = "en", normalize: bool = True
) -> ErrorCounts:
    """Word-level Levenshtein alignment counts (via ``jiwer.process_words``).

    With ``normalize=True`` both texts go through :func:`normalize_text` first; with
    ``normalize=False`` only whitespace is collapsed (case and punctuation count as errors).
    """
    ref = _prepare(reference, language, normalize)
    hyp = _prepare(hypothesis, language, normalize)
    return _word_counts(ref, hyp)


def cut_word_errors(
    pieces: list[str],
    hypothesis: str,
    cut_head: bool,
    cut_tail: bool,
    language: str | None = "en",
) -> ErrorCounts:
    """Word errors of ``hypothesis`` against the texts ``pieces`` of a window cut out of a
    longer recording, whose first piece may begin before the window (``cut_head``) and whose
    last may end after it (``cut_tail``).

    Only the words that can be inside the window are counted: a leading run of the first
    piece's words and a trailing run of the last piece's words may be skipped at no cost (the
    alignment picks the cheapest), every other reference word counts as in
    :func:`word_errors`. ``ref_words`` is the number of words of the aligned span.
    """
    words = [normalize_text(p, language).split() for p in pieces]
    ref = [w for piece in words for w in piece]
    hyp = normalize_text(hypothesis, language).split()
    head = len(words[0]) if cut_head and words else 0
    tail = len(ref) - len(words[-1]) if cut_tail and words else len(ref)
    # cell: (errors, -hits, hits, subs, dels, ins); rows i over ref, columns j over hyp
    inf = (math.inf, 0, 0, 0, 0, 0)
    prev = [inf] * (len(hyp) + 1)
    best = inf
    for i in range(len(ref) + 1):
        row = [inf] * (len(hyp) + 1)
        for j in range(len(hyp) + 1):
            options = []
            if i <= head and j == 0:
                options.append((0, 0, 0, 0, 0, 0))  # the span starts at word i
            if j:
                e, _, h, s, d, n = row[j - 1]
                options.append((e + 1, -h, h, s, d, n + 1))
            if i:
                e, _, h, s, d, n = prev[j]
                options.append((e + 1, -h, h, s, d + 1, n))
                if j:
                    e, _, h, s, d, n = prev[j - 1]
                    if ref[i - 1] == hyp[j - 1]:
                        options.append((e, -h - 1, h + 1, s, d, n))
                    else:
                        options.append((e + 1, -h, h, s + 1, d, n))
            row[j] = min(options)
        if i >= tail:
            best = min(best, row[len(hyp)])
        prev = row
    _, _, hits, subs, dels, ins = best
    return ErrorCounts(hits, subs, dels, ins)


def char_errors(
    reference: str, hypothesis: str, language: str | None = "en", normalize: bool = True
) -> ErrorCounts:
    """Character-level alignment counts (via ``jiwer.process_characters``).

    Characters of the (normalised) text, single spaces between words included;
    ``.wer`` of the result is the CER and ``.ref_words`` the reference length in characters.
    """
    ref = _prepare(reference, language, normalize)
    hyp = _prepare(hypothesis, language, normalize)
    return _char_counts(ref, hyp)


def corpus_error_rates(
    references: Iterable[str], hypotheses: Iterable[str], language: str | None = "en"
) -> dict[str, Any]:
    """Corpus-level WER, CER and S/D/I rates over paired utterances.

    Returns ``wer``, ``cer``, ``substitution_rate``, ``deletion_rate``, ``insertion_rate``
    (word-level, fractions of ``ref_words``), ``ref_words``, ``ref_chars`` and
    ``n_utterances``. Every rate is total errors / total reference length.
    Raises ``ValueError`` when the two sequences differ in length.
    """
    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses; pair them 1:1")
    words, chars = ErrorCounts(), ErrorCounts()
    for ref_text, hyp_text in zip(refs, hyps, strict=True):
        ref, hyp = normalize_text(ref_text, language), normalize_text(hyp_text, language)
        words += _word_counts(ref, hyp)
        chars += _char_counts(ref, hyp)
    return {
        "wer": words.wer,
        "cer": chars.wer,
        "substitution_rate": words.substitution_rate,
        "deletion_rate": words.deletion_rate,
        "insertion_rate": words.insertion_rate,
        "ref_words": words.ref_words,
        "ref_chars": chars.ref_words,
        "n_utterances": len(refs),
    }


def repeated_ngram_count(text: str, n: int = 5, language: str | None = "en") -> int:
    """Hallucination indicator: word n-gram occurrences beyond the first, over distinct n-grams.

    Computed on the normalised text. Ordinary sentences give 0; a phrase of ``k`` distinct
    words looped ``r`` times gives ``(r - 1) * k - n + 1`` once the loop holds at least
    ``n + k - 1`` words (10 x "thank you for watching", n=5: 32).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = normalize_text(text, language).split()
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return sum(c - 1 for c in counts.values())


def echoed_words(
    reference: str, hypothesis: str, language: str | None = "en", max_span: int = 4
) -> int:
    """Stutter count: hypothesis words that repeat the span right before them (1 to
    ``max_span`` words, "by month by month") where the reference holds no such doubled span.

    The short loops of a small decoder, which repeated 5-grams miss until a loop is long.
    Computed on the normalised texts, scanning left to right and taking the longest span at
    each place, so one echo is counted once: "month by month by month" against "month by
    month" gives 2. A doubling the reference has ("bye bye") is not counted.
    """
    if max_span < 1:
        raise ValueError(f"max_span must be >= 1, got {max_span}")

    def doubled(words: list[str], i: int) -> list[int]:
        """Lengths ``n``, longest first, of the spans at ``i`` that the next ``n`` words repeat."""
        fits = range(min(max_span, (len(words) - i) // 2), 0, -1)
        return [n for n in fits if words[i : i + n] == words[i + n : i + 2 * n]]

    ref = normalize_text(reference, language).split()
    allowed = {tuple(ref[i : i + n]) for i in range(len(ref)) for n in doubled(ref, i)}
    hyp = normalize_text(hypothesis, language).split()
    echoes, i = 0, 0
    while i < len(hyp):
        spans = [n for n in doubled(hyp, i) if tuple(hyp[i : i + n]) not in allowed]
        if spans:
            echoes += spans[0]
            i += spans[0]  # the echo itself may start the next doubling
        else:
            i += 1
    return echoes


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


def real_time_factor(audio_seconds: float, wall_seconds: float) -> float:
    """Wall seconds spent per second of audio (lower is faster; 0.1 = 10x faster than real time).

    Raises ``ValueError`` unless ``audio_seconds > 0`` and ``wall_seconds >= 0``.
    """
    _check_positive("audio_seconds", audio_seconds)
    if not wall_seconds >= 0:
        raise ValueError(f"wall_seconds must be >= 0, got {wall_seconds!r}")
    return wall_seconds / audio_seconds


def throughput(audio_seconds: float, wall_seconds: float) -> float:
    """Audio seconds transcribed per wall second (higher is faster; 1 / RTF).

    Raises ``ValueError`` unless ``wall_seconds > 0`` and ``audio_seconds >= 0``: a zero
    wall time means the timer did not measure anything, not an infinite speed.
    """
    _check_positive("wall_seconds", wall_seconds)
    if not audio_seconds >= 0:
        raise ValueError(f"audio_seconds must be >= 0, got {audio_seconds!r}")
    return audio_seconds / wall_seconds
