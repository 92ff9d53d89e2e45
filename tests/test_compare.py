"""Comparing two evaluation reports: matching, the paired bootstrap, wins and losses, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisperforge.cli import main
from whisperforge.recipes.compare import bootstrap_difference, compare_reports
from whisperforge.recipes.evaluate import EvalItem, load_report, score_utterance

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "month by month the betrayal gnawed at his heart",
    "ask not what your country can do for you",
    "a minor tropical disturbance",
    "let the dough rest for half an hour",
    "the ship landed in pearl harbor",
    "if you are cold turn up the heat",
]


def _report(model: str, hypotheses: list[str], references: list[str]) -> dict:
    rows = []
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        item = EvalItem(audio=f"audio/{i:03d}.flac", text=ref, speaker=f"v{i % 2}", id=f"u{i}")
        rows.append(score_utterance(item, hyp, "en", 2.0))
    return {"model": model, "manifest": "m.jsonl", "per_utterance": rows}


def _corpus(n_copies: int) -> list[str]:
    return SENTENCES * n_copies


def _drop_last_word(text: str) -> str:
    return text.rsplit(" ", 1)[0]


def test_a_clearly_worse_system_has_an_interval_above_zero():
    refs = _corpus(8)  # 64 utterances
    teacher = _report("teacher", refs, refs)
    # the student drops the last word of every other utterance and loops one phrase once
    hyps = [_drop_last_word(r) if i % 2 else r for i, r in enumerate(refs)]
    hyps[0] = "month by month by month the betrayal gnawed at his heart"  # not ref[0]'s text
    student = _report("student", hyps, refs)
    c = compare_reports(teacher, student, resamples=500, seed=1, top=3)
    words = sum(len(r.split()) for r in refs)
    errors = 32 + student["per_utterance"][0]["word_errors"]
    assert c["utterances"] == 64 and c["a"]["ref_words"] == words
    assert c["word_errors_difference"] == errors
    assert c["wer_difference"] == pytest.approx(errors / words)
    assert 0 < c["bootstrap"]["low"] < c["wer_difference"] < c["bootstrap"]["high"]
    assert c["bootstrap"]["b_higher"] == 1.0
    assert (c["b_worse"], c["b_better"], c["same"]) == (33, 0, 31)
    assert c["b"]["echoed_words"] == 2 and c["a"]["echoed_words"] == 0
    # the largest loss first: utterance 0 is wrong almost everywhere
    assert c["b_largest_losses"][0]["id"] == "u0" and len(c["b_largest_losses"]) == 3
    assert c["b_largest_gains"] == []
    assert set(c["by_speaker"]) == {"v0", "v1"} and c["by_speaker"]["v0"]["a"] == 0.0


def test_one_differing_utterance_leaves_zero_inside_the_interval():
    refs = _corpus(8)
    a = _report("a", refs, refs)
    hyps = list(refs)
    hyps[5] = _drop_last_word(hyps[5])
    c = compare_reports(a, _report("b", hyps, refs), resamples=500, seed=0)
    boot = c["bootstrap"]
    assert boot["low"] == 0.0 <= c["wer_difference"] <= boot["high"]
    assert 0 < boot["equal"] < 1 and boot["b_lower"] == 0.0
    # the same reports: no difference at all
    same = compare_reports(a, a, resamples=100)
    assert same["wer_difference"] == 0.0 and same["same"] == 64
    assert same["bootstrap"]["low"] == same["bootstrap"]["high"] == 0.0


def test_the_bootstrap_is_seeded_and_checks_its_arguments():
    rng = np.random.default_rng(3)
    words = rng.integers(3, 12, 40)
    ea, eb = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
    first = bootstrap_difference(ea, eb, words, resamples=300, seed=7)
    assert first == bootstrap_difference(ea, eb, words, resamples=300, seed=7)
    assert first != bootstrap_difference(ea, eb, words, resamples=300, seed=8)
    # more resamples than one block of 256 gives the same kind of answer
    wide = bootstrap_difference(ea, eb, words, resamples=1000, level=0.99)
    assert wide["low"] < first["low"] and wide["high"] > first["high"]
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_difference(ea, eb, words, resamples=0)
    with pytest.raises(ValueError, match="level must be between"):
        bootstrap_difference(ea, eb, words, level=1.0)
    with pytest.raises(ValueError, match="no reference words"):
        bootstrap_difference(ea[:0], eb[:0], words[:0])


def test_reports_of_different_utterances_are_refused_or_matched():
    refs = _corpus(1)
    a = _report("a", refs, refs)
    other = _report("b", refs, [r.upper() for r in refs])
    with pytest.raises(ValueError, match="8 utterance\\(s\\) have different references"):
        compare_reports(a, other)
    # a report missing two utterances (they failed): the rest compare, the two are counted
    partial = _report("b", refs, refs)
    del partial["per_utterance"][2:4]
    c = compare_reports(a, partial)
    assert (c["utterances"], c["only_a"], c["only_b"]) == (6, 2, 0)
    moved = _report("b", refs, refs)
    for row in moved["per_utterance"]:
        row["id"] = "x" + row["id"]
    with pytest.raises(ValueError, match="share no utterance"):
        compare_reports(a, moved)
    # the same manifest evaluated from another folder: other audio paths, the same ids
    elsewhere = _report("b", refs, refs)
    for row in elsewhere["per_utterance"]:
        row["audio"] = "../corpus/" + row["audio"]
    assert compare_reports(a, elsewhere)["utterances"] == 8
    # ids repeated (two corpora joined): rows are told apart by audio path as well
    joined = _report("a", refs + refs, refs + refs)
    for i, row in enumerate(joined["per_utterance"][8:]):
        row["id"], row["audio"] = f"u{i}", "other/" + row["audio"]
    c = compare_reports(joined, joined)
    assert c["utterances"] == 16 and c["same"] == 16
    with pytest.raises(ValueError, match="share no utterance"):  # paths differ, ids repeat
        compare_reports(joined, {"per_utterance": [
            {**row, "audio": "x/" + row["audio"]} for row in joined["per_utterance"]
        ]})  # fmt: skip
    with pytest.raises(ValueError, match="top must be >= 0"):
        compare_reports(a, a, top=-1)


def test_load_report_names_what_is_wrong(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON report"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "summary.json").write_text(json.dumps({"wer": 0.1}))
    with pytest.raises(ValueError, match="no per_utterance rows"):
        load_report(tmp_path / "summary.json")
    with pytest.raises(ValueError, match="cannot read the report"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match="not a JSON report"):
        load_report(tmp_path / "empty.json")


def test_compare_cli(tmp_path, capsys):
    refs = _corpus(2)
    hyps = list(refs)
    hyps[3] = "ask not what your country can can do for you"
    hyps[9] = "she sells sea shells by the sea"
    for name, report in (("a", _report("teacher", refs, refs)), ("b", _report("st", hyps, refs))):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    out = tmp_path / "cmp" / "c.json"
    argv = ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--report", str(out)]
    assert main([*argv, "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert "B - A: +1.64 points (+2 word errors)" in text  # 2 errors in 122 words
    assert "B worse on 2, better on 0, the same on 14" in text
    assert "echoed words 1" in text and "ref: she sells sea shells by the sea shore" in text
    saved = json.loads(out.read_text())
    assert saved["reports"] == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert saved["bootstrap"]["resamples"] == 200
    # a file that is not a report: a clear error, status 2
    (tmp_path / "x.json").write_text("[]")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "x.json")]) == 2
    assert "no per_utterance rows" in capsys.readouterr().err
