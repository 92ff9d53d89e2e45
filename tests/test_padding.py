"""Silence around clips: drawn padding, the noise floor, the written corpus and its rerun."""

import json

import numpy as np
import pytest
import soundfile as sf

from whisperforge.cli import main
from whisperforge.data.manifest import Utterance
from whisperforge.data.padding import draw_padding, noise_floor, pad_clip, write_padded

SR = 16000


def tone(seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    x[: SR // 4] = 0.0  # a quiet start, as a recording has
    rng = np.random.default_rng(seed)
    return (x + noise * rng.standard_normal(len(x))).astype(np.float32)


def test_padding_is_drawn_in_range_and_shrinks_to_fit():
    rng = np.random.default_rng(0)
    draws = [draw_padding(rng, 5.0, (1.0, 4.0), (0.0, 1.0), 30.0) for _ in range(200)]
    assert all(1.0 <= a <= 4.0 and 0.0 <= b <= 1.0 for a, b in draws)
    assert max(a for a, _ in draws) > 3.5 and min(a for a, _ in draws) < 1.5
    before, after = draw_padding(np.random.default_rng(1), 27.0, (5.0, 5.0), (1.0, 1.0), 30.0)
    assert before + after == pytest.approx(3.0, abs=1e-3) and before == pytest.approx(2.5, abs=1e-3)
    assert draw_padding(np.random.default_rng(1), 31.0, (5.0, 5.0), (1.0, 1.0), 30.0) == (0, 0)
    assert draw_padding(np.random.default_rng(1), 31.0, (5.0, 5.0), (1.0, 1.0), None) == (5, 1)


def test_the_padding_matches_the_clip_noise_floor():
    clean, noisy = tone(2.0), tone(2.0, noise=0.01)
    assert noise_floor(clean, SR) == 0.0
    assert noise_floor(noisy, SR) == pytest.approx(0.01, rel=0.2)
    rng = np.random.default_rng(0)
    padded = pad_clip(noisy, 1.0, 0.5, rng, SR)
    assert len(padded) == len(noisy) + SR + SR // 2
    np.testing.assert_array_equal(padded[SR : SR + len(noisy)], noisy)
    assert np.std(padded[:SR]) == pytest.approx(noise_floor(noisy, SR), rel=0.1)
    assert not pad_clip(clean, 1.0, 0.5, rng, SR)[:SR].any()  # digital silence stays silent
    assert not pad_clip(noisy, 1.0, 0.0, rng, SR, match_noise=False)[:SR].any()


def test_write_padded_reports_a_broken_clip_and_a_rerun_reuses_the_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(3):
        sf.write(src / f"{i}.wav", tone(1.0 + i, noise=0.005 * i, seed=i), SR)
        rows.append(Utterance(str(src / f"{i}.wav"), f"text {i}", "en", 1.0 + i, "v", {"id": i}))
    (src / "bad.wav").write_text("not audio")
    rows.insert(1, Utterance(str(src / "bad.wav"), "broken", "en", 2.0, "v", {"id": "bad"}))
    out = tmp_path / "out"
    report = write_padded(rows, out, "train", lead=(2.0, 6.0), trail=(0.0, 1.0), seed=3)
    assert report.written == 3 and [r["id"] for r in report.left_out] == ["bad"]
    written = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["text"] for r in written] == ["text 0", "text 1", "text 2"]
    for row, original in zip(written, (1.0, 2.0, 3.0)):
        info = sf.info(str(out / row["audio"]))
        assert info.samplerate == SR
        assert row["duration"] == pytest.approx(original + row["lead"] + row["trail"], abs=2e-3)
        assert 2.0 <= row["lead"] <= 6.0 and row["id"] is not None
    first = (out / written[0]["audio"]).read_bytes()
    again = write_padded(rows, out, "train", lead=(2.0, 6.0), trail=(0.0, 1.0), seed=3)
    assert (again.written, again.reused) == (0, 3)
    assert (out / written[0]["audio"]).read_bytes() == first
    other = write_padded(rows, out, "train", lead=(2.0, 6.0), trail=(0.0, 1.0), seed=4)
    assert other.written == 3  # another plan is not taken for the old one
    zeros = write_padded(rows, out, "train", (2.0, 6.0), (0.0, 1.0), seed=4, match_noise=False)
    assert zeros.written == 3  # nor is digital silence taken for the noise floor
    ticks = []
    write_padded(rows, out, "train", (2.0, 6.0), (0.0, 1.0), seed=4, progress=ticks.append)
    assert len(ticks) == 4  # the broken clip counts as done too
    assert not list(out.rglob("*.tmp*"))


def test_data_pad_command(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", tone(1.5), SR)
    manifest = tmp_path / "m.jsonl"
    row = {"audio": "a.wav", "text": "a tone", "language": "en", "duration": 1.5}
    manifest.write_text(json.dumps(row) + "\n")
    argv = ["data", "pad", str(manifest), "--out", str(tmp_path / "p"), "--name", "test",
            "--lead", "3,3", "--trail", "1,1", "--zeros"]  # fmt: skip
    assert main(argv) == 0
    assert "1 utterances padded" in capsys.readouterr().out
    (padded,) = [json.loads(line) for line in (tmp_path / "p" / "test.jsonl").open()]
    assert (padded["lead"], padded["trail"], padded["duration"]) == (3.0, 1.0, 5.5)
    with pytest.raises(SystemExit):
        main([*argv[:-1], "--lead", "x"])
    for content in ("", json.dumps(row | {"audio": "missing.wav"}) + "\n"):
        manifest.write_text(content)  # empty, or nothing usable in it
        out = tmp_path / "none"
        assert main(["data", "pad", str(manifest), "--out", str(out)]) == 1
        assert "no usable utterances" in capsys.readouterr().err
        assert not out.exists()  # nothing half-written
