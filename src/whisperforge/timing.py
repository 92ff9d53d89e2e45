"""Word-level timestamps from the decoder's cross-attention (openai-whisper's method).

Some cross-attention heads of a Whisper decoder ("alignment heads", listed in a model's
``generation_config.json``) look at the audio frames where the token they predict is
spoken. For a window's text, one teacher-forced decoder pass gives those heads' attention
over the window's encoder frames (20 ms each); normalised per head over the tokens,
median-filtered over time and averaged over the heads, it is a token x frame similarity
that dynamic time warping turns into a monotonic path. The frame where the path enters a
token's row is that token's start; the next token's start is its end. Tokens are grouped
into words (by leading spaces, or by character in languages written without spaces),
punctuation joins the word it belongs to, and a word's probability is the mean of its
tokens'.

Everything here but ``align_window`` is plain arithmetic on arrays, tested on its own.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch

from whisperforge.audio import N_SAMPLES_PER_TOKEN, TIME_PRECISION
from whisperforge.segments import Word

MEDIAN_FILTER_WIDTH = 7  # frames (openai-whisper's)
# punctuation that joins the next word, and that joins the previous one (openai-whisper's)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"
# languages written without spaces between words: every character is a word
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}
MAX_MEDIAN_WORD = 0.7  # s: the median word duration used to spot over-long words, at most


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` ``(rows, cols)`` from ``(0, 0)`` to
    ``(rows - 1, cols - 1)``, moving right, down or diagonally; returns the ``(row, col)``
    index arrays of its cells in order.

    Cells on one anti-diagonal depend only on the two before it, so each diagonal is one
    vectorised step (``rows + cols`` numpy steps rather than ``rows * cols`` Python ones).
    Ties go to the diagonal move only when it is strictly cheapest, then to the move down,
    then right (openai-whisper's order)."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    move = np.zeros((rows + 1, cols + 1), dtype=np.int8)  # 0 diagonal, 1 down, 2 right
    for d in range(2, rows + cols + 1):
        i = np.arange(max(1, d - cols), min(rows, d - 1) + 1)
        j = d - i
        diag, down, right = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        is_diag = (diag < down) & (diag < right)
        is_down = (down < diag) & (down < right)
        choice = np.where(is_diag, 0, np.where(is_down, 1, 2))
        best = np.choose(choice, [diag, down, right])
        total[i, j] = cost[i - 1, j - 1] + best
        move[i, j] = choice
    path_rows, path_cols = [], []
    i, j = rows, cols
    while i > 0 and j > 0:
        path_rows.append(i - 1)
        path_cols.append(j - 1)
        step = move[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(path_rows[::-1]), np.array(path_cols[::-1])


def median_filter(x: np.ndarray, width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """Median of each ``width`` neighbours along the last axis, edges mirrored (reflect)."""
    half = width // 2
    if x.shape[-1] <= half:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def token_starts(weights: np.ndarray) -> np.ndarray:
    """Start frame of each row of an alignment-head attention ``(heads, rows, frames)``:
    normalised per head over the rows, median-filtered over frames, averaged over heads,
    aligned by ``dtw``; a row starts at the first frame its path enters it."""
    std = weights.std(axis=-2, keepdims=True)
    normal = (weights - weights.mean(axis=-2, keepdims=True)) / np.maximum(std, 1e-10)
    matrix = median_filter(normal).mean(axis=0)
    path_rows, path_cols = dtw(-matrix)
    enters = np.concatenate([[True], np.diff(path_rows) > 0])
    return path_cols[enters]


@dataclass
class _Unit:
    """Tokens that decode to whole characters, with their times and probability."""

    text: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def _units(tokenizer, tokens, starts, ends, probs) -> list[_Unit]:
    """``tokens`` grouped so each group decodes to whole characters (a character may take
    several byte-level tokens)."""
    units, group = [], []
    for k in range(len(tokens)):
        group.append(k)
        text = tokenizer.decode([tokens[i] for i in group])
        if "\ufffd" in text and k + 1 < len(tokens):
            continue  # an unfinished character: take the next token too
        units.append(
            _Unit(
                text,
                [tokens[i] for i in group],
                float(starts[group[0]]),
                float(ends[group[-1]]),
                float(np.mean([probs[i] for i in group])),
            )
        )
        group = []
    return units


def _words_of_units(units: list[_Unit], language: str | None) -> list[_Unit]:
    if language in NO_SPACE_LANGUAGES:
        return units
    words: list[_Unit] = []
    counts: list[int] = []
    for unit in units:
        starts_word = unit.text.startswith(" ") or unit.text.strip() in string.punctuation
        if starts_word or not words:
            words.append(_Unit(unit.text, list(unit.tokens), unit.start, unit.end,
                               unit.probability))  # fmt: skip
            counts.append(1)
            continue
        word = words[-1]
        word.text += unit.text
        word.tokens += unit.tokens
        word.end = unit.end
        word.probability += unit.probability
        counts[-1] += 1
    for word, n in zip(words, counts):
        word.probability /= n
    return words


def _merge_punctuation(words: list[_Unit]) -> list[_Unit]:
    """Opening punctuation joins the next word, closing punctuation the previous one; the
    word keeps its probability and start, and its end reaches into a closing mark's time."""
    words = [w for w in words if w.text]
    out: list[_Unit] = []
    carry: _Unit | None = None
    for word in words:
        if carry is not None:
            word = _Unit(carry.text + word.text, carry.tokens + word.tokens, word.start,
                         word.end, word.probability)  # fmt: skip
            carry = None
        mark = word.text.strip()
        if word.text.startswith(" ") and mark and mark in PREPEND_PUNCTUATIONS:
            carry = word
            continue
        if out and not out[-1].text.endswith(" ") and word.text in APPEND_PUNCTUATIONS:
            # the path gives a closing mark the frames after the word: the word's last
            # sound is there (at most MAX_EXTEND of it: more is a pause)
            out[-1].end = max(out[-1].end, min(word.end, out[-1].end + MAX_EXTEND))
            out[-1].text += word.text
            out[-1].tokens += word.tokens
            continue
        out.append(word)
    if carry is not None:
        out.append(carry)
    return out


def split_words(
    tokenizer, tokens: list[int], starts, ends, probs, language: str | None = None
) -> list[Word]:
    """Words of a segment's text ``tokens``, each token timed ``starts[k]..ends[k]``
    (seconds) with probability ``probs[k]``. Punctuation sits in the word it belongs to;
    ``"".join(word.word for word in words)`` is the segment's text."""
    if not tokens:
        return []
    units = _units(tokenizer, tokens, starts, ends, probs)
    words = _merge_punctuation(_words_of_units(units, language))
    return [Word(w.start, w.end, w.text, w.probability, tuple(w.tokens)) for w in words]


def median_word_duration(words: list[Word]) -> float:
    """The median duration of the words that last at all, at most ``MAX_MEDIAN_WORD``."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    return min(MAX_MEDIAN_WORD, float(np.median(durations))) if durations else 0.0


def tidy_words(words: list[Word], segment_start: float, segment_end: float, median: float):
    """Words of one segment with implausible lengths cut down, and the segment's times.

    The attention path stretches a word over a pause next to it: a word more than twice
    the median long that ends a sentence ends ``2 * median`` after its start, one that
    follows a sentence end starts ``2 * median`` before its end, and a first (last) word
    that reaches more than 0.5 s before the segment's start (after its end) starts (ends)
    near the segment's own timestamp. The segment then spans its words."""
    if not words:
        return words, segment_start, segment_end
    longest = 2 * median
    out = [_retime(w, w.start, w.end) for w in words]
    if longest > 0:
        for k, w in enumerate(out):
            if w.end - w.start <= longest:
                continue
            if w.word.strip()[-1:] in SENTENCE_END:
                out[k] = _retime(w, w.start, w.start + longest)
            elif k and out[k - 1].word.strip()[-1:] in SENTENCE_END:
                out[k] = _retime(w, w.end - longest, w.end)
    first, last = out[0], out[-1]
    if segment_start < first.end and segment_start - 0.5 > first.start:
        out[0] = _retime(first, max(0.0, min(first.end - median, segment_start)), first.end)
    if segment_end > last.start and segment_end + 0.5 < last.end:
        out[-1] = _retime(last, last.start, max(last.start + median, segment_end))
    return out, out[0].start, max(out[-1].end, out[0].start)


def _retime(word: Word, start: float, end: float) -> Word:
    end = max(end, start)
    return Word(round(start, 3), round(end, 3), word.word, word.probability, word.tokens)


QUIET_BELOW_PEAK = 20.0  # dB: a frame this far below the window's loud frames is quiet...
QUIET_ABOVE_FLOOR = 10.0  # dB: ...and no more than this above its quietest ones
LEVEL_FRAMES = 5  # 20 ms frames a level is measured over
DIGITAL_SILENCE = -100.0  # dB: frames below are silence padding, not the room's floor
MIN_QUIET_RUN = 0.1  # s: quiet this long at a token's edge is a pause, not a consonant
EDGE_MARGIN = 0.02  # s of the pause left on the word's side
MAX_EXTEND = 0.3  # s a token's end may move later to where its sound stops
MIN_PAUSE = 0.25  # s: quiet this long inside a token is a pause the token is on one side of


def frame_levels(audio: np.ndarray, smooth: int = LEVEL_FRAMES) -> np.ndarray:
    """Level in dB of each 20 ms frame (``TIME_PRECISION``) of 16 kHz ``audio``: the RMS
    over the ``smooth`` frames centred on it (100 ms: a click in a pause stays a pause)."""
    hop = N_SAMPLES_PER_TOKEN  # samples of one 20 ms frame
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0)
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    power = np.einsum("ij,ij->i", frames, frames) / hop
    if smooth > 1 and n >= smooth:
        power = np.convolve(
            np.pad(power, smooth // 2, mode="edge"), np.ones(smooth) / smooth, "valid"
        )
    return 10 * np.log10(power + 1e-12)


def quiet_frames(levels: np.ndarray) -> np.ndarray:
    """Frames of a window quieter than both its loud frames (95th percentile) less
    ``QUIET_BELOW_PEAK`` and its quietest (5th percentile, digital silence left out) plus
    ``QUIET_ABOVE_FLOOR``: the pauses of clean speech. In noise the two never meet and
    nothing is quiet."""
    if not len(levels):
        return np.zeros(0, dtype=bool)
    sound = levels[levels > DIGITAL_SILENCE]
    if not len(sound):
        return np.ones(len(levels), dtype=bool)
    peak, floor = np.percentile(sound, 95), np.percentile(sound, 5)
    return levels < min(peak - QUIET_BELOW_PEAK, floor + QUIET_ABOVE_FLOOR)


def trim_to_sound(
    starts: np.ndarray, ends: np.ndarray, quiet: np.ndarray, before_mark: np.ndarray | None = None
):
    """Token times (s from the window start) moved off the pauses the attention path runs
    them over.

    Where a token starts (ends) with at least ``MIN_QUIET_RUN`` of quiet frames, it starts
    (ends) ``EDGE_MARGIN`` before the sound (after it). A token with a pause of at least
    ``MIN_PAUSE`` inside is before it where ``before_mark`` says a closing mark follows the
    token (``you.``: speakers pause after punctuation), else on the side with more sound;
    the sound on the other side goes to the neighbour that meets it there (the end of the
    word before a pause, say). A token that is quiet throughout keeps its times."""
    starts, ends = starts.copy(), ends.copy()
    min_run = round(MIN_QUIET_RUN / TIME_PRECISION)
    min_pause = round(MIN_PAUSE / TIME_PRECISION)
    for k in range(len(starts)):
        lo, hi = int(round(starts[k] / TIME_PRECISION)), int(round(ends[k] / TIME_PRECISION))
        span = quiet[lo:hi]
        if len(span) < min_run or span.all() or not span.any():
            continue
        sound = np.flatnonzero(~span)
        if sound[0] >= min_run:
            starts[k] = max(starts[k], (lo + sound[0]) * TIME_PRECISION - EDGE_MARGIN)
        if len(span) - 1 - sound[-1] >= min_run:
            ends[k] = min(ends[k], (lo + sound[-1] + 1) * TIME_PRECISION + EDGE_MARGIN)
        gaps = np.diff(sound) - 1  # quiet frames between sound frames
        if not len(gaps) or gaps.max() < min_pause:
            continue
        g = int(gaps.argmax())
        pause = ((lo + sound[g] + 1) * TIME_PRECISION, (lo + sound[g + 1]) * TIME_PRECISION)
        marked = before_mark is not None and bool(before_mark[k])
        if not marked and len(sound) - g - 1 >= g + 1:  # more sound after: the token is there
            old, starts[k] = starts[k], pause[1] - EDGE_MARGIN
            if k and abs(ends[k - 1] - old) < 1e-9:
                ends[k - 1] = pause[0] + EDGE_MARGIN
        else:
            old, ends[k] = ends[k], pause[0] + EDGE_MARGIN
            if k + 1 < len(starts) and abs(starts[k + 1] - old) < 1e-9:
                starts[k + 1] = pause[1] - EDGE_MARGIN
    _extend_to_sound(starts, ends, quiet)
    return starts, ends


def _extend_to_sound(starts: np.ndarray, ends: np.ndarray, quiet: np.ndarray) -> None:
    """A token followed by a gap (the last one, or one before a pause) that ends while the
    sound goes on ends where the sound stops (``EDGE_MARGIN`` after), at most
    ``MAX_EXTEND`` later and never past the next token's start: the path leaves a word
    before its last sound has faded."""
    for k in range(len(ends)):
        limit = ends[k] + MAX_EXTEND
        if k + 1 < len(starts):
            if starts[k + 1] - ends[k] < TIME_PRECISION:
                continue
            limit = min(limit, starts[k + 1])
        lo, hi = int(round(ends[k] / TIME_PRECISION)), int(round(limit / TIME_PRECISION))
        after = quiet[lo:hi]
        if not len(after) or after[0]:
            continue
        stop = int(np.argmax(after)) if after.any() else len(after)
        ends[k] = min(limit, (lo + stop) * TIME_PRECISION + EDGE_MARGIN)


def align_window(
    session,
    tokenizer,
    heads: list[tuple[int, int]],
    audio_features: torch.Tensor,
    texts: list[list[int]],
    windows: list[np.ndarray],
    languages: list[str | None],
    task: str = "transcribe",
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each row's text tokens timed in its window: ``(starts, ends, probabilities)``,
    seconds from the window start, one per token of ``texts[row]``.

    ``audio_features`` are the windows' encoder states ``(rows, frames, d)`` of the 16 kHz
    ``windows`` (the frames past a window's audio are padding, which the path may not use;
    pauses in the audio are cut off the tokens' edges, ``trim_to_sound``)."""
    prompts = [
        tokenizer.sot_sequence(language, task) + [tokenizer.no_timestamps] for language in languages
    ]
    out = []
    # one row at a time: the attention of a long window's tokens over its frames is large
    for row, (prompt, text) in enumerate(zip(prompts, texts)):
        if not text:
            out.append((np.zeros(0), np.zeros(0), np.zeros(0)))
            continue
        seq = prompt + list(text) + [tokenizer.eot]
        tokens = torch.tensor([seq], dtype=torch.long, device=audio_features.device)
        audio = windows[row]
        frames = max(1, min(-(-len(audio) // N_SAMPLES_PER_TOKEN), audio_features.shape[1]))
        weights, logits = session.cross_attention(
            audio_features[row : row + 1, :frames], tokens, heads
        )
        # rows: the query of <|notimestamps|> (it predicts the first text token) .. the last
        # text token's (it predicts <|endoftext|>): one row per text token and one for the end
        first = len(prompt) - 1
        attention = weights[0, :, first : len(seq) - 1].float().cpu().numpy()
        starts = token_starts(attention) * TIME_PRECISION
        text_logits = logits[0, first : first + len(text), : tokenizer.eot].float()
        probs = text_logits.softmax(-1)[torch.arange(len(text)), torch.tensor(text)]
        marks = [tokenizer.decode([t]).strip() for t in text]
        before_mark = np.array([k + 1 < len(marks) and bool(marks[k + 1])
                                and marks[k + 1] in APPEND_PUNCTUATIONS
                                for k in range(len(marks))])  # fmt: skip
        token_starts_, token_ends = trim_to_sound(
            starts[:-1], starts[1:], quiet_frames(frame_levels(audio)), before_mark
        )
        out.append((token_starts_, token_ends, probs.cpu().numpy()))
    return out
