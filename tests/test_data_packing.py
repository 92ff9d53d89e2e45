"""Packing short utterances into <= 30 s windows of one speaker."""

import numpy as np
import pytest

from whisperforge.data.manifest import Utterance
from whisperforge.data.packing import pack_audio, pack_utterances


def _utts(durations, speakers):
    return [
        Utterance(f"{i}.flac", f"text {i}.", "en", d, s)
        for i, (d, s) in enumerate(zip(durations, speakers, strict=True))
    ]


def test_packs_never_exceed_the_limit_and_keep_one_speaker():
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 12.0, 400).round(2)
    speakers = rng.choice(["a", "b", "c"], 400)
    result = pack_utterances(_utts(durations, speakers), max_seconds=30.0, gap_seconds=0.2)
    assert not result.too_long
    assert sum(len(p.utterances) for p in result.packs) == 400
    for pack in result.packs:
        assert pack.duration <= 30.0 + 1e-9
        assert len({u.speaker for u in pack.utterances}) == 1
    mean = np.mean([p.duration for p in result.packs])
    assert mean > 20.0  # windows are well filled
    again = pack_utterances(_utts(durations, speakers), max_seconds=30.0, gap_seconds=0.2)
    assert [[u.audio for u in p.utterances] for p in again.packs] == [
        [u.audio for u in p.utterances] for p in result.packs
    ]


def test_order_text_and_too_long():
    utts = _utts([10, 31, 10, 10, 5, 30], ["a", "a", "b", "a", "a", "b"])
    result = pack_utterances(utts, max_seconds=30.0)
    assert [u.audio for u in result.too_long] == ["1.flac"]
    groups = [[u.audio for u in p.utterances] for p in result.packs]
    assert groups == [["0.flac", "3.flac", "4.flac"], ["2.flac"], ["5.flac"]]
    assert result.packs[0].text == "text 0. text 3. text 4."
    assert result.packs[0].duration == 25.0


def test_exact_fit_and_gaps():
    result = pack_utterances(_utts([10, 10, 10], "aaa"), max_seconds=30.0, gap_seconds=0.5)
    assert [len(p.utterances) for p in result.packs] == [2, 1]
    result = pack_utterances(_utts([10, 10, 10], "aaa"), max_seconds=30.0)
    assert [len(p.utterances) for p in result.packs] == [3]


def test_pack_audio_joins_with_silence():
    pack = pack_utterances(_utts([1.0, 0.5], "aa"), gap_seconds=0.25).packs[0]
    audio = pack_audio(pack, lambda u: np.ones(int(u.duration * 16000), np.float32))
    assert audio.shape == (int(1.75 * 16000),)
    assert audio[16000:20000].max() == 0.0


def test_bad_limits():
    with pytest.raises(ValueError):
        pack_utterances([], max_seconds=0)
