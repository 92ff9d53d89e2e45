"""Pseudo-labelling with the real whisper-tiny.en on flite speech: labels, packing, resume
after SIGKILL, two processes under torchrun, a broken file, and the WER filter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from conftest import REPO, SENTENCES, needs_flite, synthesize
from whisperforge.recipes.pseudo_label import (
    LABELS_FILE,
    LabelOptions,
    filter_by_wer,
    label,
    shard_path,
)

pytestmark = needs_flite
TEACHER = "whisper-tiny.en"
N_CLIPS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A manifest of six clips (two voices, alternating) with a broken file in third place."""
    folder = tmp_path_factory.mktemp("pl-data")
    rows = []
    for i, text in enumerate(SENTENCES[:N_CLIPS]):
        voice = ("slt", "kal16")[i % 2]
        path = synthesize(text, folder / f"clip{i}.wav", voice)
        duration = sf.info(str(path)).duration
        rows.append(
            {"audio": path.name, "text": text, "language": "en", "duration": duration,
             "speaker": voice}
        )  # fmt: skip
    (folder / "broken.wav").write_bytes(b"this is not audio " * 64)
    rows.insert(2, {"audio": "broken.wav", "text": "Nothing here.", "language": "en",
                    "duration": 2.0, "speaker": "slt"})  # fmt: skip
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return manifest


SHARD, BATCH = 2, 2


def _options(**kw) -> LabelOptions:
    return LabelOptions(teacher=TEACHER, shard_size=SHARD, batch_size=BATCH, **kw)


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run in this process: the labels the other runs must reproduce."""
    import torch

    out = corpus.parent / "labels-ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the other runs
    try:
        return out, label(corpus, out, _options(), progress=False)
    finally:
        torch.set_num_threads(threads)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LABELS_FILE).read_text("utf-8").splitlines()]


def _resolved(out: Path) -> list[dict]:
    """Rows with ``audio`` resolved, to compare label folders at different places."""
    return [r | {"audio": str((out / r["audio"]).resolve())} for r in _rows(out)]


def _cli(corpus: Path, out: Path) -> list[str]:
    sizes = ["--shard-size", str(SHARD), "--batch-size", str(BATCH)]
    command = ["-m", "whisperforge.cli", "distill", "label", "--teacher", TEACHER, *sizes]
    return [*command, "--data", str(corpus), "--out", str(out), "-q"]


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def test_labels_are_the_teachers_transcripts(reference_run, tiny_en):
    from whisperforge.data.manifest import read_manifest
    from whisperforge.metrics import corpus_error_rates

    out, summary = reference_run
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"clip{i}" for i in range(N_CLIPS)]
    tok = tiny_en.tokenizer
    for row in rows:
        tokens = row["pseudo_tokens"]
        assert tok.decode(tokens).strip() == row["pseudo_text"]
        stamps = [t for t in tokens if t >= tok.timestamp_begin]
        assert tokens[0] == tok.timestamp_begin  # <|0.00|> opens the first segment
        assert len(stamps) >= 2 and stamps == sorted(stamps)
        last = (stamps[-1] - tok.timestamp_begin) * 0.02  # seconds
        assert row["duration"] / 2 < last <= row["duration"] + 1.0  # the speech, not beyond
        assert tok.sot not in tokens and tok.eot not in tokens
        assert 0 <= row["teacher_wer"] < 60
    wer = corpus_error_rates([r["text"] for r in rows], [r["pseudo_text"] for r in rows])["wer"]
    assert wer < 0.25
    assert summary["teacher_wer"] == pytest.approx(100 * wer)
    # a normal manifest: readable with its audio paths relative to the labels folder
    utterances = read_manifest(out / LABELS_FILE)
    assert len(utterances) == N_CLIPS and all(Path(u.audio).is_file() for u in utterances)
    assert utterances[0].extra["pseudo_tokens"] == rows[0]["pseudo_tokens"]


def test_a_broken_file_is_reported_and_the_rest_labelled(reference_run):
    out, summary = reference_run
    assert summary["labelled"] == N_CLIPS and summary["failed"] == 1
    (failure,) = summary["failures"]
    assert failure["id"] == "broken" and "cannot decode" in failure["reason"]
    on_disk = json.loads((out / "label_summary.json").read_text("utf-8"))
    assert on_disk["failures"] == summary["failures"]
    _, report = filter_by_wer(_rows(out), 10.0)
    assert summary["filter"]["dropped"] == report.dropped


def test_packed_windows_fit_30_s_and_cover_every_text(corpus, tmp_path):
    from whisperforge.metrics import word_errors

    summary = label(corpus, tmp_path / "packed", _options(pack=True), progress=False)
    rows = _rows(tmp_path / "packed")
    assert len(rows) == 2 and summary["failed"] == 1  # one window per voice
    members = sorted(m for r in rows for m in r["members"])
    assert members == sorted(f"clip{i}" for i in range(N_CLIPS))
    for row in rows:
        audio = tmp_path / "packed" / row["audio"]
        assert audio.is_file() and row["audio"].startswith("audio/")
        assert sf.info(str(audio)).duration == pytest.approx(row["duration"], abs=1e-3)
        assert row["duration"] <= 30.0
        texts = [SENTENCES[int(m.removeprefix("clip"))] for m in row["members"]]
        assert row["text"] == " ".join(texts)
        assert word_errors(row["text"], row["pseudo_text"]).wer < 0.3
        assert row["teacher_wer"] is not None


def test_stream_windows_are_cut_like_long_form_and_scored_on_what_they_hold(corpus, tmp_path):
    from whisperforge.data.manifest import load_manifest
    from whisperforge.metrics import word_errors
    from whisperforge.recipes.pseudo_label import plan_windows

    utterances = load_manifest(corpus).kept
    windows, _ = plan_windows(utterances, pack=False, stream=True, seed=3)
    assert windows == plan_windows(utterances, pack=False, stream=True, seed=3)[0]
    cut = next(
        seed
        for seed in range(40)
        if any(w.cut.cut_head for w in plan_windows(utterances, False, stream=True, seed=seed)[0])
    )  # fmt: skip  (a seed whose first cut lands inside an utterance)
    summary = label(corpus, tmp_path / "s", _options(stream=True, seed=cut), progress=False)
    rows = _rows(tmp_path / "s")
    assert summary["failed"] == 1 and rows
    assert any(r["cut"]["head"] for r in rows)
    for row in rows:
        audio = tmp_path / "s" / row["audio"]
        assert sf.info(str(audio)).duration == pytest.approx(row["duration"], abs=1e-3)
        assert 1.0 <= row["duration"] <= 30.0
        assert len(row["members"]) == len(row["cut"]["offsets"])
        # the WER counts only what the window can hold: the teacher is not charged for the
        # words cut off before the window starts, as scoring against every member's text would
        whole = 100.0 * word_errors(row["text"], row["pseudo_text"]).wer
        assert row["teacher_wer"] is not None and row["teacher_wer"] <= whole
        if row["cut"]["head"]:
            assert row["teacher_wer"] < whole
    with pytest.raises(ValueError, match="one of pack and stream"):
        LabelOptions(pack=True, stream=True)


def test_killed_run_resumes_without_redoing_finished_shards(corpus, reference_run, tmp_path):
    out = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, *_cli(corpus, out)], env=_env(), cwd=tmp_path)
    first = shard_path(out, 0)
    deadline = time.monotonic() + 120
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file(), "the labelling subprocess wrote no shard"
    done = sorted(p.name for p in (out / "shards").glob("shard-*.jsonl"))
    assert len(done) < 4 and not (out / LABELS_FILE).exists()  # 7 windows: 4 shards
    mtime = first.stat().st_mtime_ns
    summary = label(corpus, out, _options(), progress=False)
    assert first.stat().st_mtime_ns == mtime
    assert summary["shards"]["reused"] == len(done)
    assert _resolved(out) == _resolved(reference_run[0])


def test_two_processes_under_torchrun_match_one(corpus, reference_run, tmp_path):
    out = tmp_path / "ddp"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*run, *_cli(corpus, out)], env=_env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "label_summary.json").read_text("utf-8"))
    assert summary["shards"]["world_size"] == 2
    assert _resolved(out) == _resolved(reference_run[0])
    assert "cannot decode" in done.stderr  # the broken file is reported, once, by rank 0
    assert done.stderr.count("failed broken") == 1


def test_a_rerun_with_other_options_is_refused(corpus, reference_run):
    with pytest.raises(ValueError, match="other data or options"):
        label(corpus, reference_run[0], _options(pack=True), progress=False)


def _row(i: int, wer: float | None, duration: float = 3600.0) -> dict:
    return {"id": f"u{i}", "teacher_wer": wer, "duration": duration, "text": "x"}


def test_filter_by_wer_keeps_rows_below_the_threshold():
    rows = [_row(0, 0.0), _row(1, 9.99), _row(2, 10.0), _row(3, 55.0), _row(4, None)]
    kept, report = filter_by_wer(rows, max_wer=10.0)
    assert [r["id"] for r in kept] == ["u0", "u1"]
    assert report.kept == 2 and report.dropped == 3
    assert report.dropped_ids == {"u2": 10.0, "u3": 55.0, "u4": None}
    assert report.kept_hours == pytest.approx(2.0) and report.dropped_hours == pytest.approx(3.0)
    kept, _ = filter_by_wer(rows, max_wer=60)
    assert len(kept) == 4
    with pytest.raises(ValueError, match="percent"):
        filter_by_wer(rows, max_wer=-1)


def test_filter_by_wer_reads_utterances():
    from whisperforge.data.manifest import Utterance

    utts = [
        Utterance("a.wav", "x", duration=2.0, extra={"id": "a", "teacher_wer": 4.0}),
        Utterance("b.wav", "x", duration=2.0, extra={"id": "b", "teacher_wer": 40.0}),
    ]
    kept, report = filter_by_wer(utts)
    assert kept == [utts[0]] and report.dropped_ids == {"b": 40.0}


def test_filter_cli_writes_kept_rows_and_prints_the_dropped(reference_run, tmp_path, capsys):
    from whisperforge.cli import main

    out, _ = reference_run
    rows = _rows(out)
    threshold = sorted(r["teacher_wer"] for r in rows)[N_CLIPS // 2] + 1e-6
    kept_path = tmp_path / "kept.jsonl"
    assert main(["distill", "filter", str(out / LABELS_FILE), "--max-wer", str(threshold),
                 "--out", str(kept_path)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    expected = [r for r in rows if r["teacher_wer"] < threshold]
    kept = [json.loads(line) for line in kept_path.read_text("utf-8").splitlines()]
    assert [r["id"] for r in kept] == [r["id"] for r in expected]
    assert all((kept_path.parent / r["audio"]).is_file() for r in kept)
    assert kept[0]["pseudo_tokens"] == expected[0]["pseudo_tokens"]
    for r in rows:
        assert (f"dropped {r['id']}:" in printed) == (r["teacher_wer"] >= threshold)


def test_audio_without_a_transcript_is_labelled_without_a_wer(corpus, tmp_path):
    row = {"audio": str(corpus.parent / "clip1.wav"), "language": "en", "speaker": "kal16"}
    manifest = tmp_path / "unlabelled.jsonl"
    manifest.write_text(json.dumps(row) + "\n", "utf-8")
    summary = label(manifest, tmp_path / "out", _options(), progress=False)
    (labelled,) = _rows(tmp_path / "out")
    assert labelled["text"] == "" and labelled["teacher_wer"] is None
    assert "the plants while I am away" in labelled["pseudo_text"]
    assert labelled["duration"] > 2.0  # read from the file header
    assert summary["teacher_wer"] is None and summary["with_reference"] == 0
    assert summary["filter"]["dropped"] == 1  # nothing to check it against


def test_plan_packs_within_pack_seconds_and_reports_long_utterances():
    from whisperforge.data.manifest import Utterance
    from whisperforge.recipes.pseudo_label import plan_windows

    def utt(name: str, seconds: float | None, voice: str) -> Utterance:
        return Utterance(f"/data/{name}.wav", name, "en", seconds, voice)

    utts = [utt("a", 4.0, "x"), utt("b", 5.0, "y"), utt("c", 5.0, "x"), utt("d", 3.0, "x"),
            utt("long", 31.0, "x"), utt("mp3", None, "x"), utt("e", 2.0, "y")]  # fmt: skip
    windows, failures = plan_windows(utts, pack=True, pack_seconds=10.0)
    assert [(w.id, w.member_ids) for w in windows] == [
        ("a+1", ["a", "c"]), ("b+1", ["b", "e"]), ("d", ["d"]), ("mp3", ["mp3"])
    ]  # fmt: skip
    assert [w.packed for w in windows] == [True, True, True, False]
    assert [f["id"] for f in failures] == ["long"] and "too long" in failures[0]["reason"]
    unpacked, _ = plan_windows(utts, pack=False)
    assert [w.id for w in unpacked] == ["a", "b", "c", "d", "mp3", "e"]
    with pytest.raises(ValueError, match="pack_seconds"):
        LabelOptions(pack_seconds=31)
