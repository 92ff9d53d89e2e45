"""Word timestamps: the arithmetic (DTW, filters, word grouping, pause trimming) on its own,
then real models on real speech whose pauses are known from its level."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import JFK, JFK_TEXT, needs_flite, synthesize
from whisperforge import timing
from whisperforge.audio import SAMPLE_RATE, load_audio
from whisperforge.segments import Word


def _reference_dtw(cost: np.ndarray) -> tuple[list[int], list[int]]:
    """Cell by cell, the textbook way, with the same tie order (diagonal, down, right)."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0
    move = np.zeros((rows + 1, cols + 1), int)
    for j in range(1, cols + 1):
        for i in range(1, rows + 1):
            diag, down, right = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
            if diag < down and diag < right:
                best, m = diag, 0
            elif down < diag and down < right:
                best, m = down, 1
            else:
                best, m = right, 2
            total[i, j] = cost[i - 1, j - 1] + best
            move[i, j] = m
    i, j, path = rows, cols, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[move[i, j]]
    path.reverse()
    return [p[0] for p in path], [p[1] for p in path]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 40), (30, 30), (12, 300)])
def test_dtw_matches_the_cell_by_cell_recurrence(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for cost in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(float)):
        rows, cols = timing.dtw(cost)  # the integer costs have many ties
        want_rows, want_cols = _reference_dtw(cost)
        assert rows.tolist() == want_rows and cols.tolist() == want_cols
        assert rows[0] == cols[0] == 0 and rows[-1] == shape[0] - 1 and cols[-1] == shape[1] - 1
        assert np.all(np.diff(rows) >= 0) and np.all(np.diff(cols) >= 0)


def test_median_filter_is_the_median_of_mirrored_neighbours():
    x = np.random.default_rng(0).normal(size=(3, 4, 50))
    got = timing.median_filter(x, 7)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    want = np.stack([np.median(padded[..., k : k + 7], axis=-1) for k in range(50)], axis=-1)
    np.testing.assert_allclose(got, want)
    assert timing.median_filter(x[..., :3], 7).shape == (3, 4, 3)  # too short: unchanged


def test_token_starts_follow_the_attention():
    # 3 heads; token r attends frames 10r..10r+9 of 60 (one head noisy)
    rng = np.random.default_rng(1)
    weights = np.full((3, 6, 60), 0.01)
    for r in range(6):
        weights[:, r, 10 * r : 10 * r + 10] = 1.0
    weights[2] += rng.uniform(0, 0.3, size=(6, 60))
    assert timing.token_starts(weights).tolist() == [0, 10, 20, 30, 40, 50]


def test_pauses_are_cut_off_token_edges():
    quiet = np.zeros(100, dtype=bool)
    quiet[20:40] = True  # 0.4-0.8 s: a pause
    quiet[70:72] = True  # 1.4-1.44 s: a stop consonant, not a pause
    starts = np.array([0.0, 0.3, 0.9, 1.3])
    ends = np.array([0.3, 0.9, 1.3, 2.0])
    # token 1 (0.3-0.9): 0.1 s of sound, the pause, 0.1 s of sound: a tie goes after;
    # token 0 then keeps the sound up to the pause
    got_starts, got_ends = timing.trim_to_sound(starts, ends, quiet)
    assert got_starts.tolist() == pytest.approx([0.0, 0.78, 0.9, 1.3])
    assert got_ends.tolist() == pytest.approx([0.42, 0.9, 1.3, 2.0])
    # followed by a closing mark ("you."), the token is before the pause whatever the sound
    mark = np.array([False, True, False, False])
    got_starts, got_ends = timing.trim_to_sound(starts, ends, quiet, mark)
    assert got_starts.tolist() == pytest.approx([0.0, 0.3, 0.78, 1.3])
    assert got_ends.tolist() == pytest.approx([0.3, 0.42, 1.3, 2.0])
    # a token that starts in the pause starts where the sound does
    s, e = timing.trim_to_sound(np.array([0.4]), np.array([0.9]), quiet[:45])
    assert (s[0], e[0]) == pytest.approx((0.78, 0.9))
    # a last token (or one before a gap) that ends in sound ends where the sound stops, at
    # most 0.3 s later and not past the next token
    s, e = timing.trim_to_sound(np.array([0.0, 0.9]), np.array([0.3, 1.0]), quiet)
    assert e.tolist() == pytest.approx([0.42, 1.3])
    s, e = timing.trim_to_sound(np.array([0.0, 0.3]), np.array([0.2, 0.4]), quiet)
    assert e.tolist() == pytest.approx([0.3, 0.4])
    # one that ends in it ends where the sound did; one that is all pause keeps its times
    s, e = timing.trim_to_sound(np.array([0.1, 0.45]), np.array([0.7, 0.75]), quiet)
    assert s.tolist() == pytest.approx([0.1, 0.45]) and e.tolist() == pytest.approx([0.42, 0.75])


def test_quiet_frames_need_clean_audio():
    rng = np.random.default_rng(0)
    speech = np.sin(np.arange(SAMPLE_RATE) * 0.05).astype(np.float32) * 0.3
    room = rng.normal(0, 0.001, SAMPLE_RATE).astype(np.float32)  # -60 dB
    quiet = timing.quiet_frames(timing.frame_levels(np.concatenate([speech, room, speech])))
    assert quiet[60:90].all() and not quiet[:45].any() and not quiet[110:].any()
    noise = rng.normal(0, 0.1, SAMPLE_RATE).astype(np.float32)  # loud noise between
    assert not timing.quiet_frames(timing.frame_levels(np.concatenate([speech, noise]))).any()


def test_words_keep_their_punctuation_and_join_to_the_text(tiny_en_tokenizer):
    tok = tiny_en_tokenizer
    text = ' "Well," she said, (quietly) ¿no? 3.5 km... naïve café.'
    tokens = tok.encode(text)
    n = len(tokens)
    starts = np.arange(n) * 0.1
    words = timing.split_words(tok, tokens, starts, starts + 0.1, np.full(n, 0.5), "en")
    assert "".join(w.word for w in words) == text
    assert [w.word for w in words][:3] == [' "Well,"', " she", " said,"]
    assert " (quietly)" in [w.word for w in words]
    assert sum(len(w.tokens) for w in words) == n
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:]))
    # characters written without spaces are words of their own
    zh = tok.encode("你好世界")
    z = timing.split_words(tok, zh, np.arange(len(zh)) * 0.1, np.arange(len(zh)) * 0.1 + 0.1,
                           np.ones(len(zh)), "zh")  # fmt: skip
    assert [w.word for w in z] == ["你", "好", "世", "界"]


def test_over_long_words_next_to_a_pause_are_cut_down():
    words = [Word(0.0, 0.3, " Hello"), Word(0.3, 2.5, " there."), Word(2.5, 4.9, " Then"),
             Word(4.9, 5.2, " we"), Word(5.2, 5.5, " go")]  # fmt: skip
    median = timing.median_word_duration(words)
    assert median == pytest.approx(0.3)
    out, start, end = timing.tidy_words(words, 0.0, 5.5, median)
    assert (out[1].start, out[1].end) == (0.3, 0.9)  # ends a sentence: cut after
    assert (out[2].start, out[2].end) == (4.3, 4.9)  # follows one: cut before
    assert (start, end) == (0.0, 5.5)


def _words(segments):
    return [w for s in segments for w in s.words]


def _level_pauses(audio: np.ndarray, min_len: float = 0.3) -> list[tuple[float, float]]:
    """Stretches of at least ``min_len`` s quieter than the loud frames less 25 dB."""
    levels = timing.frame_levels(audio)
    quiet = levels < np.percentile(levels, 95) - 25
    pauses, start = [], None
    for k, q in enumerate([*quiet, False]):
        if q and start is None:
            start = k
        elif not q and start is not None:
            if (k - start) * 0.02 >= min_len:
                pauses.append((start * 0.02, k * 0.02))
            start = None
    return pauses


def test_jfk_words_are_where_the_speech_is():
    from whisperforge.transcribe import Transcriber

    audio = load_audio(JFK)
    transcriber = Transcriber("whisper-tiny.en")
    segments = list(transcriber.transcribe(audio, word_timestamps=True)[0])
    words = _words(segments)
    for s in segments:  # the words are the text, inside the segment, in order
        assert "".join(w.word for w in s.words) == s.text
        assert s.start == s.words[0].start and s.end == s.words[-1].end
    assert all(a.end <= b.start + 1e-6 and a.start <= a.end for a, b in zip(words, words[1:]))
    assert all(0 <= w.probability <= 1 for w in words)
    assert len(words) == len(JFK_TEXT.split())
    pauses = [p for p in _level_pauses(audio) if 0.5 < p[0] < 10.5]
    assert len(pauses) >= 3  # after "Americans", "not" and the first "you"
    for a, b in pauses:  # no word runs over a pause by more than a frame or two
        inside = [w for w in words if min(w.end, b) - max(w.start, a) > 0.1]
        assert not inside, (a, b, inside)
    # and without word timestamps the segments carry none
    plain = list(transcriber.transcribe(audio)[0])
    assert all(s.words is None for s in plain) and "words" not in plain[0].to_dict()
    assert [s.text for s in plain] == [s.text for s in segments]


def test_a_student_times_words_with_its_teachers_heads_renumbered():
    from whisperforge.models import load_model
    from whisperforge.transcribe import Transcriber

    bundle = load_model("distil-whisper-base.en")
    # teacher layers 0 and 5 kept: whisper-base's heads in layer 5 are the student's layer 1
    assert bundle.alignment_heads == [(1, 1), (1, 2), (1, 4), (1, 6)]
    audio = load_audio(JFK)
    words = _words(Transcriber(bundle).transcribe(audio, word_timestamps=True)[0])
    assert [w.word.strip(" ,.?").lower() for w in words] == [
        w.strip(",.").lower() for w in JFK_TEXT.split()
    ]
    ask = [w for w in words if w.word.strip(" ,.?").lower() == "ask"]
    assert 3.0 < ask[0].start < 3.5 and 7.9 < ask[1].start < 8.4  # "ask" at 3.2 s and 8.2 s


@needs_flite
def test_long_form_and_vad_words_stay_off_the_silence(tmp_path):
    """Speech, 9 s of silence, other speech: 40 s, so chunked windows; with VAD the silence
    is cut out and every word and segment is timed back into the file around it."""
    from whisperforge.transcribe import Transcriber

    jfk = load_audio(JFK)
    other = load_audio(synthesize("The train to the city leaves from platform four.",
                                  tmp_path / "a.wav", "slt"))  # fmt: skip
    gap = np.zeros(9 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([jfk, gap, other, gap, jfk[: 4 * SAMPLE_RATE]])
    first_gap = (len(jfk) / SAMPLE_RATE, len(jfk) / SAMPLE_RATE + 9)
    second_start = first_gap[1] + len(other) / SAMPLE_RATE
    silences = [first_gap, (second_start, second_start + 9)]
    transcriber = Transcriber("whisper-tiny.en")
    for vad in (False, True):
        segments = list(transcriber.transcribe(audio, word_timestamps=True, vad=vad)[0])
        words = _words(segments)
        text = " ".join(w.word.strip() for w in words).lower()
        assert "platform four" in text and "fellow americans" in text
        assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
        for a, b in silences:
            assert not [w for w in words if min(w.end, b) - max(w.start, a) > 0.3], vad
            if vad:  # segments too: none spans the silence VAD cut out
                assert not [s for s in segments if min(s.end, b) - max(s.start, a) > 0.5]
