"""Compare two evaluation reports of the same utterances.

A student against its teacher, one checkpoint against another: the WER difference, how sure
it is (a paired bootstrap over utterances: the utterances are resampled with replacement and
both systems scored on each resample, so the interval reflects which sentences happened to be
in the test set), the utterances each system wins, and the ones that differ most. Reads the
``per_utterance`` rows of ``whisperforge evaluate --report`` and ``whisperforge tokenizer
evaluate --report`` files; rows are matched by id (by id and audio path where a report lacks
ids or repeats one), and their references must agree.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from whisperforge.recipes.evaluate import rates_by, summarize

RATES = ("wer", "cer", "substitution_rate", "deletion_rate", "insertion_rate")
COUNTS = ("utterances", "ref_words", "repeated_5grams", "echoed_words")


def _unique_ids(rows: list[dict]) -> bool:
    ids = [row.get("id") for row in rows]
    return all(ids) and len(set(ids)) == len(ids)


def _keyed(rows: list[dict], by_id: bool) -> dict[tuple, dict]:
    """Rows by id (where both reports give every row its own), else by (id, audio,
    occurrence): a manifest may list one file twice."""
    if by_id:
        return {(row["id"], None, 0): row for row in rows}
    seen: Counter = Counter()
    keyed = {}
    for row in rows:
        base = (row.get("id"), row.get("audio"))
        keyed[(*base, seen[base])] = row
        seen[base] += 1
    return keyed


def bootstrap_difference(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    words: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap of corpus WER(B) - WER(A) over utterances.

    Each resample draws as many utterances as there are, with replacement, and takes both
    corpus WERs on it (errors summed over words summed). Returns the interval holding
    ``level`` of the differences (percentiles) and the share of resamples where B's WER is
    lower, equal and higher.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    n = len(words)
    if n == 0 or words.sum() == 0:
        raise ValueError("no reference words to compare on")
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, 256):  # a block of resamples at a time: bounded memory
        idx = rng.integers(0, n, size=(min(256, resamples - start), n))
        total = words[idx].sum(axis=1)
        total = np.where(total > 0, total, 1)  # a resample of empty references only: 0 vs 0
        diffs.append((errors_b[idx].sum(axis=1) - errors_a[idx].sum(axis=1)) / total)
    d = np.concatenate(diffs)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(d, [tail, 100 - tail])
    return {
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "low": float(low),
        "high": float(high),
        "b_lower": float(np.mean(d < 0)),
        "equal": float(np.mean(d == 0)),
        "b_higher": float(np.mean(d > 0)),
    }


def _side(report: dict, rows: list[dict]) -> dict:
    totals = summarize(rows)
    return {
        "model": report.get("model"),
        "manifest": report.get("manifest"),
        **{k: totals[k] for k in RATES + COUNTS},
    }


def _example(a: dict, b: dict) -> dict:
    return {
        "id": a.get("id"),
        "audio": a.get("audio"),
        "reference": a["reference"],
        "errors_a": a["word_errors"],
        "errors_b": b["word_errors"],
        "hypothesis_a": a["hypothesis"],
        "hypothesis_b": b["hypothesis"],
    }


def compare_reports(
    report_a: dict, report_b: dict, resamples: int = 1000, seed: int = 0, top: int = 5
) -> dict:
    """The comparison of two reports (see the module docstring) as a JSON-ready dict."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    a_rows, b_rows = report_a["per_utterance"], report_b["per_utterance"]
    # ids survive a run from another folder, where the audio paths read differently
    by_id = _unique_ids(a_rows) and _unique_ids(b_rows)
    rows_a, rows_b = _keyed(a_rows, by_id), _keyed(b_rows, by_id)
    common = [key for key in rows_a if key in rows_b]
    if not common:
        raise ValueError(
            "the reports share no utterance (matched by id, or by id and audio path where "
            "ids are missing or repeated)"
        )
    differing = [k for k in common if rows_a[k]["reference"] != rows_b[k]["reference"]]
    if differing:
        raise ValueError(
            f"{len(differing)} utterance(s) have different references in the two reports "
            f"(first: {rows_a[differing[0]].get('id') or rows_a[differing[0]].get('audio')}): "
            "compare reports of one manifest"
        )
    a = [rows_a[k] for k in common]
    b = [rows_b[k] for k in common]
    errors_a = np.array([r["word_errors"] for r in a], dtype=np.int64)
    errors_b = np.array([r["word_errors"] for r in b], dtype=np.int64)
    words = np.array([r["ref_words"] for r in a], dtype=np.int64)
    side_a, side_b = _side(report_a, a), _side(report_b, b)
    delta = errors_b - errors_a
    order = np.argsort(-delta, kind="stable")
    losses = [_example(a[i], b[i]) for i in order[:top] if delta[i] > 0]
    gains = [_example(a[i], b[i]) for i in order[::-1][:top] if delta[i] < 0]
    speakers_a, speakers_b = rates_by(a, "speaker"), rates_by(b, "speaker")
    return {
        "a": side_a,
        "b": side_b,
        "utterances": len(common),
        "only_a": len(rows_a) - len(common),
        "only_b": len(rows_b) - len(common),
        "wer_difference": side_b["wer"] - side_a["wer"],
        "word_errors_difference": int(delta.sum()),
        "bootstrap": bootstrap_difference(errors_a, errors_b, words, resamples, seed),
        "b_worse": int((delta > 0).sum()),
        "b_better": int((delta < 0).sum()),
        "same": int((delta == 0).sum()),
        "by_speaker": {
            name: {
                "a": speakers_a[name]["wer"],
                "b": speakers_b[name]["wer"],
                "utterances": speakers_a[name]["utterances"],
            }
            for name in speakers_a
        },  # fmt: skip
        "b_largest_losses": losses,
        "b_largest_gains": gains,
    }


def format_comparison(c: dict) -> str:
    """The comparison as text for a terminal."""

    def side(tag: str, s: dict) -> str:
        return (
            f"{tag}  {s['model']}: WER {100 * s['wer']:.2f} % "
            f"(sub {100 * s['substitution_rate']:.2f}, del {100 * s['deletion_rate']:.2f}, "
            f"ins {100 * s['insertion_rate']:.2f}), "
            f"CER {100 * s['cer']:.2f} %, echoed words {s['echoed_words']}, "
            f"repeated 5-grams {s['repeated_5grams']}"
        )

    boot = c["bootstrap"]
    left_out = ""
    if c["only_a"] or c["only_b"]:
        left_out = f" ({c['only_a']} only in A, {c['only_b']} only in B: left out)"
    lines = [
        f"{c['utterances']} utterances, {c['a']['ref_words']} reference words{left_out}",
        side("A", c["a"]),
        side("B", c["b"]),
        f"B - A: {100 * c['wer_difference']:+.2f} points ({c['word_errors_difference']:+d} word "
        f"errors); {100 * boot['level']:.0f} % interval [{100 * boot['low']:+.2f}, "
        f"{100 * boot['high']:+.2f}] (paired bootstrap, {boot['resamples']} resamples of the "
        f"utterances); B lower in {100 * boot['b_lower']:.1f} % of them",
        f"per utterance: B worse on {c['b_worse']}, better on {c['b_better']}, "
        f"the same on {c['same']}",
    ]
    if len(c["by_speaker"]) > 1:
        for name, g in c["by_speaker"].items():
            lines.append(
                f"  {name:<24} A {100 * g['a']:6.2f} %  B {100 * g['b']:6.2f} %  "
                f"n={g['utterances']}"
            )
    for title, examples in (("B's largest losses", c["b_largest_losses"]),
                            ("B's largest gains", c["b_largest_gains"])):  # fmt: skip
        if examples:
            lines.append(f"{title}:")
        for e in examples:
            lines += [
                f"  {e['errors_b'] - e['errors_a']:+d}  {e['id'] or e['audio']}",
                f"     ref: {e['reference']}",
                f"       A: {e['hypothesis_a']}",
                f"       B: {e['hypothesis_b']}",
            ]
    return "\n".join(lines)
