"""Manifests: round trip, validation of broken rows with reasons, audiofolder, HF, stats."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from whisperforge.cli import main as data_main
from whisperforge.data.hf import iter_utterances, load_utterances
from whisperforge.data.manifest import (
    ManifestError,
    Utterance,
    load_manifest,
    read_manifest,
    write_manifest,
)
from whisperforge.data.stats import duration_histogram, format_stats, manifest_stats

RATE = 16000


def _wav(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * RATE), dtype=np.float32), RATE)
    return path


@pytest.fixture
def broken_manifest(tmp_path):
    _wav(tmp_path / "audio" / "a.wav", 1.0)
    _wav(tmp_path / "audio" / "b.wav", 2.0)
    rows = [
        {"audio": "audio/a.wav", "text": "hello there", "language": "en", "duration": 1.0,
         "speaker": "s1"},
        {"audio": "audio/gone.wav", "text": "missing file", "duration": 1.0},
        {"audio": "audio/b.wav", "text": "   ", "duration": 2.0},
        {"audio": "audio/b.wav", "text": "negative", "duration": -1.0},
        {"audio": "audio/b.wav", "text": "wrong length", "duration": 9.0},
        {"audio": "audio/b.wav", "text": "not a number", "duration": "long"},
        {"text": "no audio at all", "duration": 1.0},
        {"audio": "audio/b.wav", "text": "duration from the header"},
    ]  # fmt: skip
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_validation_reports_every_skipped_row_with_its_reason(broken_manifest):
    report = load_manifest(broken_manifest)
    assert [u.text for u in report.kept] == ["hello there", "duration from the header"]
    assert report.kept[1].duration == pytest.approx(2.0)
    reasons = {s.line: s.reason.split(":")[0] for s in report.skipped}
    assert reasons == {
        2: "missing file",
        3: "empty text",
        4: "invalid JSON",
        5: "bad duration",
        6: "duration mismatch",
        7: "bad duration",
        8: "missing audio",
    }
    assert report.summary().startswith("kept 2 of 9 rows; skipped 7:")


def test_read_manifest_logs_skipped_rows(broken_manifest, caplog):
    kept = read_manifest(broken_manifest)
    assert len(kept) == 2
    assert "skipped 7" in caplog.text and "line 2: missing file" in caplog.text


def test_round_trip_keeps_extra_fields_and_relative_paths(tmp_path):
    audio = _wav(tmp_path / "clips" / "x.wav", 0.5)
    utt = Utterance(str(audio), "Hi there you.", "en", 0.5, "anna", extra={"voice": "v", "k": 1})
    path = write_manifest([utt], tmp_path / "sub" / "m.jsonl")
    row = json.loads(path.read_text("utf-8"))
    assert row["audio"] == "../clips/x.wav" and row["k"] == 1 and row["speaker"] == "anna"
    (back,) = read_manifest(path)
    assert back.audio == str(tmp_path / "sub" / "../clips/x.wav")
    assert back.voice == "v" and back.extra["k"] == 1 and back.duration == 0.5


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.jsonl")


def test_audiofolder_without_datasets(tmp_path):
    _wav(tmp_path / "0.wav", 1.0)
    _wav(tmp_path / "1.wav", 2.5)
    meta = [
        {"file_name": "0.wav", "transcription": "first clip here", "speaker_id": 7},
        {"file_name": "1.wav", "sentence": "second clip here", "locale": "vi"},
        {"file_name": "2.wav", "text": "not on disk"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta), "utf-8")
    report = load_utterances(tmp_path, language="en")
    assert [(u.text, u.speaker, u.language) for u in report.kept] == [
        ("first clip here", "7", "en"),
        ("second clip here", None, "vi"),
    ]
    assert report.kept[1].duration == pytest.approx(2.5)
    assert report.skipped[0].reason.startswith("missing file")


def test_corpus_folder_split(tmp_path):
    audio = _wav(tmp_path / "a.wav", 1.0)
    write_manifest([Utterance(str(audio), "one two three", "en", 1.0, "s")], tmp_path / "dev.jsonl")
    assert len(load_utterances(tmp_path, split="dev").kept) == 1
    with pytest.raises(ManifestError, match="not for split 'test'"):
        load_utterances(tmp_path, split="test")


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(RATE, dtype=np.float32), RATE, format="WAV")
    file = _wav(tmp_path / "f.wav", 2.0)
    data = datasets.Dataset.from_dict(
        {
            "audio": [
                {"bytes": buffer.getvalue(), "path": None},
                {"bytes": None, "path": str(file)},
            ],
            "sentence": ["from bytes here", "from a file"],
            "speaker_id": [1, 2],
        }
    ).cast_column("audio", datasets.Audio(decode=False))
    data.save_to_disk(str(tmp_path / "saved"))
    report = load_utterances(tmp_path / "saved", language="en")
    first, second = report.kept
    assert first.array is not None and first.duration == pytest.approx(1.0)
    # save_to_disk embeds the file's bytes, so both rows decode from bytes
    assert second.array is not None and second.duration == pytest.approx(2.0)
    streamed = [u for _, u in iter_utterances(tmp_path / "saved", streaming=True)]
    assert [u.text for u in streamed] == ["from bytes here", "from a file"]


def test_stats_and_histogram():
    utts = [
        Utterance("a", "x y z", "en", 1.0, "v1"),
        Utterance("b", "x y z", "en", 12.0, "v1"),
        Utterance("c", "x y z", "vi", 40.0, "v2"),
    ]
    stats = manifest_stats(utts)
    assert stats["utterances"] == 3 and stats["hours"] == pytest.approx(53 / 3600, abs=1e-4)
    assert stats["voices"]["v1"]["utterances"] == 2
    assert set(stats["languages"]) == {"en", "vi"}
    assert duration_histogram([1.0, 12.0, 40.0]) == {
        "0-2s": 1, "2-5s": 0, "5-10s": 0, "10-15s": 1, "15-20s": 0, "20-25s": 0, "25-30s": 0,
        ">=30s": 1,
    }  # fmt: skip
    assert "speakers/voices 2" in format_stats(stats)


def test_cli_validate_and_stats(broken_manifest, tmp_path, capsys):
    clean = tmp_path / "clean.jsonl"
    report = tmp_path / "skipped.jsonl"
    code = data_main(["data", "validate", str(broken_manifest), "--out", str(clean),
                      "--report", str(report)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1 and "line 2: missing file" in out
    assert len(report.read_text().splitlines()) == 7
    assert data_main(["data", "stats", str(clean)]) == 0
    out = capsys.readouterr().out
    assert "utterances 2" in out and "kept 2 of 2 rows" in out


def _corpus(folder, split, texts):
    rows = [Utterance(str(_wav(folder / "audio" / f"{split}-{i}.wav", 0.5)), t, "en", 0.5, "s")
            for i, t in enumerate(texts)]  # fmt: skip
    return write_manifest(rows, folder / f"{split}.jsonl")


def test_combine_keeps_a_fresh_set_apart_from_other_corpora(tmp_path, caplog):
    from whisperforge.data.combine import combine, sentence_key, texts_in

    _corpus(tmp_path / "trained", "train", ["The cat sat.", "A dog ran."])
    _corpus(tmp_path / "trained", "dev", ["Birds  fly south."])
    tested = _corpus(tmp_path / "tested", "test", ["Rain fell."])
    exclude = texts_in([tmp_path / "trained", tested])  # a folder: all its splits
    assert exclude == {"the cat sat.", "a dog ran.", "birds fly south.", "rain fell."}
    assert sentence_key("  the  CAT sat. ") == "the cat sat."
    new = [Utterance(f"{i}.wav", t) for i, t in enumerate(
        ["the cat  sat.", "Snow fell.", "Rain fell.", "Snow fell.", "Fog rose.", "BIRDS fly south."]
    )]  # fmt: skip
    rows, report = combine([("new", new)], exclude, unique_texts=True)
    assert [u.text for u in rows] == ["Snow fell.", "Fog rose."]
    assert report.sources == [{"source": "new", "read": 6, "excluded": 3, "repeated": 1,
                               "kept": 2}]  # fmt: skip
    # without --unique-texts both renderings of a sentence stay; sources keep their order
    rows, report = combine([("a", new[:2]), ("b", new[3:5])], exclude)
    assert [u.audio for u in rows] == ["1.wav", "3.wav", "4.wav"] and report.kept == 3
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "Hail fell."}\n{not json\n[1]\n', encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert texts_in([broken]) == {"hail fell."}
    assert "2 line(s) are not JSON rows" in caplog.text
    with pytest.raises(ManifestError, match="no such manifest or folder"):
        texts_in([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .jsonl manifest"):
        texts_in([tmp_path / "empty"])


def test_cli_combine_rebases_audio_paths(tmp_path, capsys):
    _corpus(tmp_path / "a", "test", ["One sentence.", "Two sentences."])
    _corpus(tmp_path / "b", "test", ["two sentences.", "Three sentences."])
    _corpus(tmp_path / "seen", "dev", ["Three sentences."])
    out = tmp_path / "sets" / "fresh.jsonl"
    argv = ["data", "combine", str(tmp_path / "a"), str(tmp_path / "b"), "--unique-texts",
            "--exclude-texts", str(tmp_path / "seen"), "--out", str(out)]  # fmt: skip
    assert data_main(argv) == 0
    text = capsys.readouterr().out
    assert "1 with an excluded sentence, 1 repeating an earlier sentence, 0 kept" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["One sentence.", "Two sentences."]
    assert rows[0]["audio"] == "../a/audio/test-0.wav"
    assert [u.text for u in load_utterances(out).kept] == ["One sentence.", "Two sentences."]
    # everything excluded: nothing written, status 1
    none = tmp_path / "none.jsonl"
    argv = ["data", "combine", str(tmp_path / "seen"), "--split", "dev",
            "--exclude-texts", str(tmp_path / "b"), "--out", str(none)]  # fmt: skip
    assert data_main(argv) == 1 and not none.exists()
    assert "no rows left" in capsys.readouterr().err
