"""Turn a window's decoded tokens into timed segments, and merge overlapping windows.

Timestamp token ``timestamp_begin + i`` marks ``i * 0.02`` s from the window start. A segment
is the text between two timestamps; text after the last timestamp is an unfinished segment
that runs to the window end.

Chunked long-form decodes overlapping windows independently. ``merge_windows`` aligns the
tail of the transcript so far with the head of the next window on their text tokens (the
overlap offset with the largest share of equal tokens, as Distil-Whisper/HF's chunked
pipeline does) and cuts in the middle of the agreeing stretch, so each word is taken from
the window where it sat furthest from an edge; a sentence cut there stays one segment. Only
text that can lie in the overlap, by its timestamps, is aligned. Without an alignment (no
speech that both windows transcribed) the next window's segments that end after the
transcript so far are added.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from whisperforge.audio import TIME_PRECISION

OVERLAP_MARGIN = 1.0  # s: how far a segment's timestamps may be off when finding the overlap


@dataclass
class RawSegment:
    """A segment before detokenisation: absolute seconds and text token ids."""

    start: float
    end: float
    tokens: list[int]
    complete: bool = True  # closed by a timestamp token (False: ran into the window end)
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    window_id: int = 0
    # word timestamps: (start, end, probability) of each token, absolute seconds
    timing: list[tuple[float, float, float]] | None = None

    def part(self, lo: int | None = None, hi: int | None = None, **changes) -> RawSegment:
        """Tokens ``lo:hi`` (and their timings) with ``changes``."""
        timing = None if self.timing is None else self.timing[lo:hi]
        return replace(self, tokens=self.tokens[lo:hi], timing=timing, **changes)


def parse_window(
    tokens: list[int], timestamp_begin: int, offset: float, window_end: float, result, window_id=0
) -> tuple[list[RawSegment], float]:
    """Segments of one window, and how far (seconds from ``offset``) they are final.

    The second value is what sequential decoding advances by: up to the last complete
    segment's end, or the whole window when the text has no unfinished tail.
    """
    meta = dict(
        avg_logprob=result.avg_logprob,
        compression_ratio=result.compression_ratio,
        no_speech_prob=result.no_speech_prob,
        temperature=result.temperature,
        window_id=window_id,
    )
    duration = window_end - offset

    def at(token: int) -> float:
        # a timestamp past the audio (a short clip, the last window) ends where the audio does
        return min(offset + (token - timestamp_begin) * TIME_PRECISION, window_end)

    is_ts = [t >= timestamp_begin for t in tokens]
    segments: list[RawSegment] = []
    start_token, text, last_closed = None, [], None
    for token, ts in zip(tokens, is_ts):
        if not ts:
            text.append(token)
            continue
        if start_token is None or not text:
            start_token = token  # opening timestamp (or a repeated one)
            continue
        segments.append(RawSegment(at(start_token), at(token), text, True, **meta))
        last_closed, start_token, text = token, None, []
    if text:  # unfinished: no closing timestamp before the end of the window
        start = at(start_token) if start_token is not None else offset
        segments.append(RawSegment(start, window_end, text, False, **meta))
    # openai-whisper's seek rule: a window that ends "text <|t|>" said all it had to say;
    # otherwise (an opened, empty or unfinished segment at the end) resume at the last
    # closed segment, so speech cut by the window edge is decoded again in the next one
    single_ending = len(tokens) >= 2 and is_ts[-1] and not is_ts[-2]
    if single_ending or last_closed is None:
        return segments, duration
    return segments, at(last_closed) - offset


def _text_tokens(segments: list[RawSegment]) -> list[tuple[int, int, int]]:
    """(token, segment index, position in segment) for every text token."""
    return [(t, i, j) for i, s in enumerate(segments) for j, t in enumerate(s.tokens)]


def _best_overlap(left: list[int], right: list[int]) -> tuple[int, int] | None:
    """Cut points ``(keep left[:a], keep right[b:])`` aligning left's tail with right's head."""
    best, best_score = None, 0.0
    left_arr, right_arr = np.array(left), np.array(right)
    n_left, n_right = len(left), len(right)
    for i in range(1, n_left + n_right):
        l0, l1 = max(0, n_left - i), min(n_left, n_left + n_right - i)
        r0, r1 = max(0, i - n_left), min(n_right, i)
        matches = int((left_arr[l0:l1] == right_arr[r0:r1]).sum())
        score = matches / i + i / 10000.0  # share of agreeing tokens; ties go to longer
        if matches > 1 and score > best_score:
            best, best_score = ((l0 + l1) // 2, (r0 + r1) // 2), score
    return best


def _join(left, left_flat, a: int, right, right_flat, b: int) -> list[RawSegment]:
    """``left``'s text before flat index ``a``, then ``right``'s from ``b`` (both inside the
    agreeing stretch). A cut inside a segment on each side falls in one sentence that both
    windows heard: its two halves become one segment, from the left one's start to the right
    one's end, not two over the same time with the first ending mid-word. A cut on the right
    window's segment boundary ends the left half where that segment starts, and a cut on the
    left's boundary starts the right half no earlier than the kept text ends."""
    _, i, pos = left_flat[a]
    _, j, pos_right = right_flat[b]
    head, seg_left, seg_right, tail = left[:i], left[i], right[j], right[j + 1 :]
    if pos and pos_right:
        tokens = seg_left.tokens[:pos] + seg_right.tokens[pos_right:]
        timing = None
        if seg_left.timing is not None and seg_right.timing is not None:
            timing = seg_left.timing[:pos] + seg_right.timing[pos_right:]
        joined = replace(seg_right, start=seg_left.start, tokens=tokens, timing=timing)
        return head + [joined] + tail
    if pos:
        end = max(seg_left.start, min(seg_left.end, seg_right.start))
        return head + [seg_left.part(None, pos, end=end, complete=False), seg_right] + tail
    start = seg_right.start if not head else min(max(seg_right.start, head[-1].end), seg_right.end)
    return head + [seg_right.part(pos_right, None, start=start)] + tail


def merge_windows(
    windows: list[list[RawSegment]], spans: list[tuple[float, float]] | None = None
) -> list[RawSegment]:
    """Merge the segments of consecutive overlapping windows into one list.

    With ``spans`` (each window's ``(start, end)`` seconds) only text that can lie in the
    overlap is aligned: the transcript's segments ending after the next window starts, and
    the next window's segments starting before the previous one ends (``OVERLAP_MARGIN``
    either way for timestamp error). Without it, chance agreements between sentences on
    either side of a pause (". The", " man") can cut out whole sentences.
    """
    merged: list[RawSegment] = []
    for k, segments in enumerate(windows):
        if not merged or not segments:
            merged = merged + segments
            continue
        left_flat, right_flat = _text_tokens(merged), _text_tokens(segments)
        # only the last window's worth of the transcript can overlap the next window
        tail = max(0, len(left_flat) - len(right_flat))
        head = len(right_flat)
        if spans is not None:
            right_start, left_end = spans[k][0] - OVERLAP_MARGIN, spans[k - 1][1] + OVERLAP_MARGIN
            tail = max(tail, next((n for n, (_, i, _) in enumerate(left_flat)
                                   if merged[i].end > right_start), len(left_flat)))  # fmt: skip
            head = next((n for n, (_, i, _) in enumerate(right_flat)
                         if segments[i].start >= left_end), len(right_flat))  # fmt: skip
        cut = _best_overlap(
            [t for t, _, _ in left_flat[tail:]], [t for t, _, _ in right_flat[:head]]
        )
        if cut is not None:
            cut = (cut[0] + tail, cut[1])
        if cut is None:  # no text both windows heard: add what goes past the transcript's end
            # (not a cut in time: after a pause Whisper often stamps its first segment at
            # the window start, long before the speech in it begins)
            end = merged[-1].end
            merged = merged + [s for s in segments if s.end > end]
            continue
        merged = _join(merged, left_flat, cut[0], segments, right_flat, cut[1])
    return _monotonic([s for s in merged if s.tokens])


def join_windows(windows: list[list[RawSegment]]) -> list[RawSegment]:
    """The segments of consecutive windows that do not overlap (segmented long-form), in
    order, times clamped as ``merge_windows`` clamps them."""
    return _monotonic([s for segments in windows for s in segments if s.tokens])


def _monotonic(segments: list[RawSegment]) -> list[RawSegment]:
    """Clamp times so segments never start before the previous one or end before they start."""
    out: list[RawSegment] = []
    for seg in segments:
        start = max(seg.start, out[-1].start if out else 0.0)
        out.append(replace(seg, start=start, end=max(seg.end, start)))
    return out
