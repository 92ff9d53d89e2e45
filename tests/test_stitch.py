"""Merging overlapping chunked windows: alignment only where the windows overlap in time."""

from __future__ import annotations

from types import SimpleNamespace

from whisperforge.stitch import RawSegment, merge_windows, parse_window


def tokens(segments: list[RawSegment]) -> list[int]:
    return [t for s in segments for t in s.tokens]


def test_shared_text_in_the_overlap_is_kept_once():
    left = [RawSegment(18.0, 24.0, [1, 2, 3, 4, 5, 6]), RawSegment(24.0, 29.5, [7, 8, 9])]
    right = [
        RawSegment(20.0, 24.0, [2, 3, 4, 5, 6]),
        RawSegment(24.0, 29.0, [7, 8, 9]),
        RawSegment(30.0, 35.0, [10, 11]),
    ]
    merged = merge_windows([left, right], [(0.0, 30.0), (20.0, 50.0)])
    assert tokens(merged) == list(range(1, 12))
    assert all(a.start <= b.start for a, b in zip(merged, merged[1:]))


def test_chance_agreement_across_a_pause_cuts_nothing():
    # the first window's speech ends at 17 s; after a pause, the second window's first
    # segment is stamped at its start (20 s) and shares two tokens (". The") with text
    # the first window heard at 8-11 s, outside the overlap
    left = [RawSegment(8.0, 11.0, [1, 2, 90, 91, 3]), RawSegment(14.0, 17.0, [4, 5, 6])]
    right = [RawSegment(20.0, 34.4, [10, 90, 91, 11, 12]), RawSegment(34.4, 38.0, [13, 14])]
    merged = merge_windows([left, right], [(0.0, 30.0), (20.0, 50.0)])
    assert tokens(merged) == [1, 2, 90, 91, 3, 4, 5, 6, 10, 90, 91, 11, 12, 13, 14]
    # without the windows' times the chance agreement is taken for the overlap
    assert len(tokens(merge_windows([left, right]))) < 15


def test_a_first_segment_stamped_before_the_transcripts_end_is_not_dropped():
    left = [RawSegment(100.0, 119.0, [1, 2, 3]), RawSegment(119.0, 121.0, [4, 5])]
    right = [RawSegment(120.0, 139.5, [6, 7, 8, 9])]
    merged = merge_windows([left, right], [(100.0, 130.0), (120.0, 150.0)])
    assert tokens(merged) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_a_sentence_both_windows_heard_stays_one_segment():
    # both windows heard "1 2 3 4 5 6" as one segment; the cut falls inside it on both sides
    left = [RawSegment(10.0, 18.0, [7, 8]), RawSegment(18.0, 26.0, [1, 2, 3, 4, 5, 6])]
    right = [RawSegment(20.0, 22.0, [2, 3, 4, 5, 6]), RawSegment(22.0, 30.0, [10, 11])]
    merged = merge_windows([left, right], [(0.0, 24.0), (20.0, 44.0)])
    assert tokens(merged) == [7, 8, 1, 2, 3, 4, 5, 6, 10, 11]
    assert [(s.start, s.end) for s in merged] == [(10.0, 18.0), (18.0, 22.0), (22.0, 30.0)]
    # the right window ends a segment where the cut falls: the left half ends where it starts
    right = [RawSegment(20.0, 22.0, [2, 3]), RawSegment(22.5, 25.0, [4, 5, 6, 10, 11])]
    merged = merge_windows([left, right], [(0.0, 24.0), (20.0, 44.0)])
    assert tokens(merged) == [7, 8, 1, 2, 3, 4, 5, 6, 10, 11]
    assert [(s.start, s.end) for s in merged] == [(10.0, 18.0), (18.0, 22.5), (22.5, 25.0)]
    # the cut falls on the left window's boundary: the right half starts after the kept text
    left = [RawSegment(10.0, 21.0, [7, 8, 1, 2]), RawSegment(21.0, 23.5, [3, 4, 5])]
    right = [RawSegment(20.0, 24.0, [8, 1, 2, 3, 4, 5, 6, 9])]
    merged = merge_windows([left, right], [(0.0, 24.0), (20.0, 44.0)])
    assert tokens(merged) == [7, 8, 1, 2, 3, 4, 5, 6, 9]
    assert [(s.start, s.end) for s in merged] == [(10.0, 21.0), (21.0, 24.0)]


def test_timestamps_past_the_end_of_the_audio_end_with_it():
    # a 0.9 s clip decoded as "<|0.00|> text <|2.00|>": the segment ends with the audio, and
    # sequential decoding advances by no more than the window holds
    ts = 1000
    result = SimpleNamespace(avg_logprob=0.0, compression_ratio=1.0, no_speech_prob=0.0,
                             temperature=0.0)  # fmt: skip
    segments, advance = parse_window([ts, 5, 6, ts + 100], ts, 10.0, 10.9, result)
    assert [(s.start, s.end, s.tokens) for s in segments] == [(10.0, 10.9, [5, 6])]
    assert advance == 10.9 - 10.0
    segments, _ = parse_window([ts + 10, 5, ts + 30, ts + 60, 6, ts + 80], ts, 0.0, 0.5, result)
    assert [(s.start, s.end) for s in segments] == [(0.2, 0.5), (0.5, 0.5)]
