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


def _write_corpus(tmp_path, n=7):
    import soundfile as sf

    from whisperforge.data.manifest import write_manifest

    rng = np.random.default_rng(1)
    utts = []
    for i in range(n):
        path = tmp_path / "src" / f"u{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = 4.0 + i % 3
        sf.write(str(path), (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"),
                 16000)  # fmt: skip
        utts.append(Utterance(str(path), f"sentence {i}.", "en", seconds, "spk" + str(i % 2),
                              {"id": f"u{i}"}))  # fmt: skip
    return write_manifest(utts, tmp_path / "src" / "train.jsonl")


def test_write_packs_writes_windows_reports_broken_files_and_reuses(tmp_path):
    import soundfile as sf

    from whisperforge.data.manifest import read_manifest
    from whisperforge.data.packing import write_packs

    manifest = _write_corpus(tmp_path)
    utts = read_manifest(manifest)
    (tmp_path / "src" / "u3.flac").write_bytes(b"not audio")  # broken after validation
    report = write_packs(utts, tmp_path / "out", max_seconds=12.0, gap_seconds=0.5)
    assert [r["id"] for r in report.left_out] == ["u3"]
    assert "cannot decode" in report.left_out[0]["reason"]
    rows = read_manifest(tmp_path / "out" / "train.jsonl")
    assert report.packs == len(rows) and report.utterances == 6
    members = [m for r in rows for m in r.extra["members"]]
    assert sorted(members) == ["u0", "u1", "u2", "u4", "u5", "u6"]
    for row in rows:
        assert row.duration <= 12.0
        ids = row.extra["members"]
        assert row.text == " ".join(f"sentence {m[1:]}." for m in ids)
        assert len({int(m[1:]) % 2 for m in ids}) == 1  # one speaker per window
        durations = [4.0 + int(m[1:]) % 3 for m in ids]
        expected = sum(durations) + 0.5 * (len(ids) - 1)
        assert sf.info(row.audio).frames == round(expected * 16000)
        assert row.duration == pytest.approx(expected, abs=1e-3)
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # nothing half-written
    again = write_packs(read_manifest(manifest), tmp_path / "out", max_seconds=12.0,
                        gap_seconds=0.5)  # fmt: skip
    assert again.reused == report.packs - 1  # all but the window u3 belongs to (u1 + u3)
    assert again.left_out == report.left_out
    assert read_manifest(tmp_path / "out" / "train.jsonl")[0].text == rows[0].text


def test_data_pack_cli(tmp_path):
    from whisperforge.cli import main

    manifest = _write_corpus(tmp_path, n=4)
    assert main(["data", "pack", str(manifest), "--out", str(tmp_path / "p"), "--seconds", "30",
                 "--gap", "0"]) == 0  # fmt: skip
    rows = [line for line in (tmp_path / "p" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # two speakers, each fits one window


def test_data_pack_makes_long_recordings_only_when_asked(tmp_path, capsys):
    from whisperforge.cli import main
    from whisperforge.data.manifest import read_manifest
    from whisperforge.data.packing import write_packs

    manifest = _write_corpus(tmp_path, n=20)  # two speakers, 50 s of audio each
    with pytest.raises(ValueError, match="recordings=True"):
        write_packs(read_manifest(manifest), tmp_path / "w", max_seconds=60.0)
    assert main(["data", "pack", str(manifest), "--out", str(tmp_path / "long"),
                 "--seconds", "60", "--recordings", "--name", "test"]) == 0  # fmt: skip
    rows = read_manifest(tmp_path / "long" / "test.jsonl")
    assert [len(r.extra["members"]) for r in rows] == [10, 10]
    assert all(30 < r.duration <= 60 for r in rows)


def test_stream_windows_cut_a_speakers_recording_every_30_s():
    from whisperforge.data.packing import stream_windows

    rng = np.random.default_rng(1)
    durations = rng.uniform(1.0, 9.0, 120).round(2)
    speakers = rng.choice(["a", "b"], 120)
    utts = _utts(durations, speakers)
    windows = stream_windows(utts, 30.0, gap_range=(0.3, 1.2), seed=0)
    assert windows == stream_windows(utts, 30.0, gap_range=(0.3, 1.2), seed=0)
    assert windows != stream_windows(utts, 30.0, gap_range=(0.3, 1.2), seed=1)
    seen = set()
    for w in windows:
        assert 1.0 <= w.seconds <= 30.0
        assert len({u.speaker for u in w.utterances}) == 1
        starts = np.array(w.offsets)
        ends = starts + np.array([u.duration for u in w.utterances])
        assert (ends > 0).all() and (starts < w.seconds).all()  # every member is heard
        assert w.cut_head == (starts[0] < 0) and w.cut_tail == (ends[-1] > w.seconds + 1e-3)
        seen.update(u.audio for u in w.utterances)
    assert seen == {u.audio for u in utts}
    # most windows are full and begin or end inside an utterance, as long-form windows do
    full = [w for w in windows if w.seconds == 30.0]
    assert len(full) >= 0.8 * len(windows)
    assert sum(w.cut_head or w.cut_tail for w in full) >= 0.8 * len(full)
    # an utterance cut by a boundary is in both windows, at offsets 30 s apart
    cut = next(i for i, w in enumerate(windows[:-1]) if w.cut_tail and windows[i + 1].cut_head)
    first, second = windows[cut], windows[cut + 1]
    assert first.utterances[-1] is second.utterances[0]
    assert first.offsets[-1] - second.offsets[0] == pytest.approx(30.0, abs=1e-3)


def test_stream_audio_places_members_and_cuts_at_the_window():
    from whisperforge.data.packing import StreamWindow, stream_audio

    utts = _utts([2.0, 1.0], "aa")
    window = StreamWindow(utts, [-1.0, 2.0], 2.5, cut_head=True, cut_tail=True)
    audio = stream_audio(window, lambda u: np.full(int(u.duration * 16000), 1.0 + u.duration))
    assert audio.shape == (40000,)
    assert (audio[:16000] == 3.0).all()  # the second half of the 2 s member
    assert (audio[16000:32000] == 0.0).all()  # the pause
    assert (audio[32000:] == 2.0).all()  # the first half second of the 1 s member
