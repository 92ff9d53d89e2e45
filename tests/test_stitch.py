"""Merging overlapping chunked windows: alignment only where the windows overlap in time."""

from __future__ import annotations

from whisperforge.stitch import RawSegment, merge_windows


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
