"""The command line, end to end: real weights, real files, bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from tests.conftest import JFK, JFK_TEXT

from whisperforge.cli import main
from whisperforge.metrics import normalize_text


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, str]:
    """Each broken or awkward input, and 'ok' or 'error' for what must happen."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(b"")
    (d / "truncated.wav").write_bytes(JFK.read_bytes()[:40])
    (d / "random.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    (d / "text.flac").write_text("this is not audio\n" * 100)
    sf.write(d / "short.wav", np.zeros(1600, np.float32) + 0.01, 16000)
    sf.write(d / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)
    nan = np.full(16000, np.nan, np.float32)
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    jfk, _ = sf.read(JFK, dtype="float32")
    import soxr

    stereo = soxr.resample(jfk, 16000, 44100)
    sf.write(d / "stereo44k.wav", np.stack([stereo, stereo * 0.5], axis=1), 44100)
    shutil.copy(JFK, d / "discours de président — ünïcødé.wav")
    return {
        str(d / "empty.wav"): "error",
        str(d / "truncated.wav"): "error",
        str(d / "random.mp3"): "error",
        str(d / "text.flac"): "error",
        str(d / "nan.wav"): "error",
        str(d / "short.wav"): "ok",
        str(d / "silence.wav"): "ok",
        str(d / "stereo44k.wav"): "jfk",
        str(d / "discours de président — ünïcødé.wav"): "jfk",
    }


@pytest.mark.parametrize("vad", [[], ["--vad"]], ids=["whole-files", "vad"])
def test_transcribe_cli_reports_each_bad_file_and_goes_on(bad_inputs, capsys, tmp_path, vad):
    files = list(bad_inputs)
    code = main(["transcribe", *files, "--model", "whisper-tiny.en", "-q", *vad,
                 "--output-dir", str(tmp_path), "--output-format", "json"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    expected_errors = [f for f, want in bad_inputs.items() if want == "error"]
    assert len(error_lines) == len(expected_errors)
    for f in expected_errors:
        name = f.rsplit("/", 1)[-1]
        assert sum(name in line for line in error_lines) == 1, name
    for f, want in bad_inputs.items():
        stem = f.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        written = tmp_path / f"{stem}.json"
        assert written.exists() == (want != "error"), f
        if want == "jfk":
            text = json.loads(written.read_text())["text"]
            assert normalize_text(text) == normalize_text(JFK_TEXT)
        if vad and want == "ok":  # silence and 0.1 s of a constant: nothing reaches the decoder
            assert json.loads(written.read_text())["text"] == ""


def test_transcribe_cli_prints_segments_and_writes_all_formats(capsys, tmp_path):
    code = main(["transcribe", str(JFK), "--model", "whisper-tiny.en",
                 "--output-dir", str(tmp_path), "--output-format", "all"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "[00:00.000 --> " in out and "ask not what your country" in out
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".srt", ".tsv", ".txt", ".vtt"]
    assert "00:00:00,000 --> " in (tmp_path / "jfk.srt").read_text()


def test_transcribe_cli_word_timestamps_and_subtitle_cues(capsys, tmp_path):
    code = main(["transcribe", str(JFK), "--model", "whisper-tiny.en", "--word-timestamps",
                 "--max-words-per-cue", "5", "--output-dir", str(tmp_path),
                 "--output-format", "all", "-q"])  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "jfk.json").read_text())
    words = [w for s in data["segments"] for w in s["words"]]
    assert normalize_text(" ".join(w["word"] for w in words)) == normalize_text(JFK_TEXT)
    srt = (tmp_path / "jfk.srt").read_text().strip().split("\n\n")
    assert len(srt) == sum(-(-len(s["words"]) // 5) for s in data["segments"])
    assert all(len(cue.splitlines()[2].split()) <= 5 for cue in srt)
    assert (tmp_path / "jfk.txt").read_text().count("\n") == len(data["segments"])
    code = main(["transcribe", str(JFK), "--model", "whisper-tiny.en", "--max-chars-per-cue",
                 "30", "--output-format", "srt", "--output-dir", str(tmp_path), "-q"])  # fmt: skip
    assert code == 2 and "add --word-timestamps" in capsys.readouterr().err
    assert main(["transcribe", str(JFK), "--word-timestamps", "--max-words-per-cue", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    code = main(["transcribe", str(JFK), "--model", "whisper-tiny.en", "--word-timestamps",
                 "--highlight-words", "--output-format", "vtt", "--output-dir", str(tmp_path),
                 "-q"])  # fmt: skip
    vtt = (tmp_path / "jfk.vtt").read_text()
    assert code == 0 and vtt.count("<u>") == len(words) and "<u>country.</u>" in vtt


def test_progress_in_a_log_is_plain_lines_and_quiet_hides_it():
    argv = [sys.executable, "-m", "whisperforge.cli", "transcribe", str(JFK),
            "--model", "whisper-tiny.en"]  # fmt: skip
    logged = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-2000:]
    progress = [line for line in logged.stderr.splitlines() if "/1 [" in line]
    assert progress[0].lstrip().startswith("0% 0/1") and "100% 1/1" in progress[-1], progress
    assert "\r" not in logged.stderr
    quiet = subprocess.run([*argv, "-q"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "/1 [" not in quiet.stderr


def test_cli_errors_are_one_line_without_traceback():
    for argv in (
        ["transcribe", str(JFK), "--model", "no-such-model"],
        ["transcribe", "/nonexistent/file.wav", "--model", "whisper-tiny.en"],
        ["transcribe", str(JFK), "--model", "whisper-tiny.en", "--language", "klingon"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "whisperforge.cli", *argv, "-q"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode in (1, 2), argv
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.strip().splitlines() if "error" in line]
        assert len(lines) == 1, proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`whisperforge models | head -1`: the closed pipe ends the command without a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "whisperforge.cli", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before it writes a line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_models_lists_presets_with_sizes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "whisper-base" in out and "145 MB" in out and "whisper-tiny.en" in out
    assert "distil-whisper-base.en" in out and "distilled student of whisper-base" in out


def test_evaluate_reports_wer_per_speaker(speech_clips, tmp_path, capsys):
    manifest = tmp_path / "test.jsonl"
    rows = [
        {
            "audio": str(p),
            "text": t,
            "language": "en",
            "speaker": p.stem[-1] in "02468" and "slt" or "kal",
        }
        for p, t in speech_clips[:8]
    ]
    rows.append({"audio": "missing.wav", "text": "gone", "language": "en"})
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report_path = tmp_path / "report.json"
    code = main(["evaluate", "--manifest", str(manifest), "--model", "whisper-base",
                 "--language", "en", "--report", str(report_path), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "missing" in captured.err  # the skipped row is reported, not silently dropped
    report = json.loads(report_path.read_text())
    assert report["utterances"] == 8 and len(report["skipped"]) == 1
    assert report["wer"] < 0.15 and report["throughput"] > 0
    assert set(report["by_speaker"]) == {"slt", "kal"}
    assert report["chunking"] == {"chunk_length": 30.0, "stride_length": 5.0}  # whisper-base's
    assert report["condition_on_previous_text"] is True  # Whisper's own default
    from whisperforge.models.inference import cpu_has_bf16_matmul

    assert report["vocab_screen"] is cpu_has_bf16_matmul()  # the default: where bf16 is fast
    assert {
        "substitution_rate",
        "deletion_rate",
        "insertion_rate",
        "cer",
        "repeated_5grams",
        "echoed_words",
    } <= set(report)
    assert len(report["per_utterance"]) == 8 and "hypothesis" in report["per_utterance"][0]
    assert "WER" in captured.out


def test_transcribe_cli_keeps_files_of_one_name_apart_and_resumes(tmp_path, capsys):
    inputs = [tmp_path / "in" / speaker / "001.wav" for speaker in ("s1", "s2")]
    for path in inputs:
        path.parent.mkdir(parents=True)
        shutil.copy(JFK, path)
    out = tmp_path / "out"
    argv = ["transcribe", *map(str, inputs), "--model", "whisper-tiny.en",
            "--output-dir", str(out), "--output-format", "txt"]  # fmt: skip
    assert main([*argv, "-q"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert written == ["s1/001.txt", "s2/001.txt"]  # neither overwrote the other
    # an interrupted batch: one result is missing; --skip-existing transcribes only that one
    (out / "s2" / "001.txt").unlink()
    kept = (out / "s1" / "001.txt").stat().st_mtime_ns
    capsys.readouterr()
    folder = ["transcribe", str(tmp_path / "in"), *argv[len(inputs) + 1 :]]  # the folder: the same
    assert main([*folder, "--skip-existing"]) == 0
    captured = capsys.readouterr()
    assert "skipping 1 of 2 file(s)" in captured.err and "==> " not in captured.out
    assert (out / "s1" / "001.txt").stat().st_mtime_ns == kept
    assert normalize_text((out / "s2" / "001.txt").read_text()) == normalize_text(JFK_TEXT)
    assert main(["transcribe", str(inputs[0]), "--skip-existing"]) == 2  # no output folder
    assert "--output-dir" in capsys.readouterr().err


def test_a_killed_evaluation_resumes_from_its_journal(speech_clips, tmp_path, capsys):
    from whisperforge.recipes.evaluate import EvalItem, evaluate
    from whisperforge.transcribe import Transcriber

    manifest = tmp_path / "test.jsonl"
    rows = [{"audio": str(p), "text": t, "language": "en"} for p, t in speech_clips[:6]]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report_path = tmp_path / "report.json"
    argv = ["evaluate", "--manifest", str(manifest), "--model", "whisper-tiny.en", "-q",
            "--language", "en", "--batch-size", "2", "--report", str(report_path)]  # fmt: skip
    assert main(argv) == 0
    whole = json.loads(report_path.read_text())
    journal = tmp_path / "report.json.partial.jsonl"
    assert whole["resumed"] == 0 and not journal.exists()  # removed with the report written

    # the same evaluation killed after three utterances: they are in the journal
    items = [EvalItem(r["audio"], r["text"], "en", id=f"{n}") for n, r in enumerate(rows)]
    seen = []

    def kill_after_three(row):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    options = dict(language="en", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(Transcriber("whisper-tiny.en"), items, kill_after_three, journal, **options)
    assert len(journal.read_text().splitlines()) == 1 + 3  # its header, three utterances
    resumed = evaluate(Transcriber("whisper-tiny.en"), items, journal=journal, **options)
    assert resumed["resumed"] == 3 and resumed["utterances"] == 6
    assert [r["hypothesis"] for r in resumed["per_utterance"]] == [
        r["hypothesis"] for r in whole["per_utterance"]
    ]
    assert resumed["wer"] == whole["wer"]
    # other utterances: the journal is not theirs, the evaluation starts again
    other = evaluate(Transcriber("whisper-tiny.en"), items[:2], journal=journal, **options)
    assert other["resumed"] == 0 and other["utterances"] == 2
    # a file that failed is tried again on resuming (it may have been mended since)
    broken = [*items[:2], EvalItem(str(tmp_path / "missing.wav"), "gone", "en", id="x")]
    first = evaluate(Transcriber("whisper-tiny.en"), broken, journal=journal, **options)
    again = evaluate(Transcriber("whisper-tiny.en"), broken, journal=journal, **options)
    assert len(first["failed"]) == len(again["failed"]) == 1 and again["resumed"] == 2


def test_transcribe_cli_reads_a_file_piped_in(tmp_path):
    argv = [sys.executable, "-m", "whisperforge.cli", "transcribe", "-", "-q", "--model",
            "whisper-tiny.en", "--output-dir", str(tmp_path), "--output-format", "txt"]  # fmt: skip
    with open(JFK, "rb") as piped:
        done = subprocess.run(argv, stdin=piped, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert normalize_text((tmp_path / "stdin.txt").read_text()) == normalize_text(JFK_TEXT)
    broken = subprocess.run(argv, input="not audio", capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and "cannot decode '<stdin>'" in broken.stderr
    empty = subprocess.run(argv, input="", capture_output=True, text=True, timeout=300)
    assert empty.returncode == 1 and "'<stdin>': empty file" in empty.stderr
    assert main(["transcribe", "-", "-", "--model", "whisper-tiny.en"]) == 2  # read once
