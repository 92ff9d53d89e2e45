"""How right word timestamps are, and what they cost: models with ``word_timestamps`` on and
off, on recordings whose pauses are known.

The benchmark's sentences (flite, four voices; ``bench_common``) are joined eight at a time
into recordings with seeded pauses of 0.3-2.5 s (about 50 s each: chunked long-form, more
than one window). Where each sentence's sound starts and ends is measured on the sentence
alone (first and last 20 ms frame within 40 dB of its loudest), so the truth is known to a
frame. Each model transcribes every recording with word timestamps, twice: with the words'
attention times as they come (``attention``) and moved off the pauses by the audio's level
(``timing.trim_to_sound``, the default: ``trimmed``); and once without, for the cost.

- ``start error``: |start of a sentence's first word - where its sound starts|, over the
  sentences whose first word the model got right (difflib alignment of normalised words);
  ``end error`` the same for the last word and where the sound ends (the JSON report also
  holds the signed medians, ``start_bias`` and ``end_bias``: < 0 is early);
- ``pause in words``: share of the pause time between sentences that some word's span
  covers (0: no word runs over a pause);
- ``cost``: wall time with word timestamps over wall time without (same model, same audio,
  alternating, median of ``--repeats``).

    python benchmarks/bench_words.py --threads 2 --out benchmarks/results/words.json \\
        --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
from bench_common import (
    Clip,
    machine_sentence,
    markdown_table,
    publish,
    report_from,
    run_facts,
)

START_MARK, END_MARK = "<!-- words:start -->", "<!-- words:end -->"
PAUSES = (0.3, 2.5)  # s of silence between sentences
PER_RECORDING = 8
SEED = 11
SOUND_RANGE_DB = 40.0  # a frame within this of a sentence's loudest is sound
MODELS = ("whisper-base", "distil-whisper-base.en")


def sound_span(audio: np.ndarray) -> tuple[float, float]:
    """Seconds where a clip's sound starts and ends (20 ms frames, each measured alone,
    within ``SOUND_RANGE_DB`` of its loudest)."""
    from whisperforge.timing import frame_levels

    level = frame_levels(audio, smooth=1)
    loud = np.flatnonzero(level > level.max() - SOUND_RANGE_DB)
    return loud[0] * 0.02, (loud[-1] + 1) * 0.02


def recordings(clips: list[Clip]) -> list[dict]:
    """Clips joined ``PER_RECORDING`` at a time with seeded pauses; each with its audio and,
    per sentence, its words and where its sound starts and ends in the recording."""
    rng = np.random.default_rng(SEED)
    out = []
    spoken = [c for c in clips if c.text]
    for i in range(0, len(spoken) - PER_RECORDING + 1, PER_RECORDING):
        pieces, sentences, at = [], [], 0.0
        for k, clip in enumerate(spoken[i : i + PER_RECORDING]):
            if k:
                pause = np.zeros(int(rng.uniform(*PAUSES) * 16000), np.float32)
                pieces.append(pause)
                at += len(pause) / 16000
            start, end = sound_span(clip.audio)
            sentences.append({"words": words_of(clip.text), "start": at + start, "end": at + end})
            pieces.append(clip.audio)
            at += len(clip.audio) / 16000
        out.append({"audio": np.concatenate(pieces), "sentences": sentences})
    return out


def normalised(word: str) -> str:
    """A word as the scoring compares it: lower case, letters, digits and apostrophes."""
    return re.sub(r"[^a-z0-9']", "", word.lower())


def words_of(text: str) -> list[str]:
    return [w for w in map(normalised, text.split()) if w]


def score(recording: dict, words: list) -> dict:
    """Start and end errors of the sentences' first and last words, and pause coverage."""
    ref, owner = [], []
    for k, sentence in enumerate(recording["sentences"]):
        ref += sentence["words"]
        owner += [k] * len(sentence["words"])
    hyp = [normalised(w.word) for w in words]
    match = {}
    for block in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_matching_blocks():
        for n in range(block.size):
            match[block.a + n] = block.b + n
    starts, ends = [], []
    first = 0
    for sentence in recording["sentences"]:
        last = first + len(sentence["words"]) - 1
        if first in match:
            starts.append(words[match[first]].start - sentence["start"])
        if last in match:
            ends.append(words[match[last]].end - sentence["end"])
        first = last + 1
    sentences = recording["sentences"]
    pauses = [(a["end"], b["start"]) for a, b in zip(sentences, sentences[1:])]
    covered = sum(
        max(0.0, min(w.end, b) - max(w.start, a)) for a, b in pauses for w in words
    )  # words never overlap each other, so their overlaps with a pause add up
    return {"starts": starts, "ends": ends, "covered": covered,
            "pause": sum(b - a for a, b in pauses)}  # fmt: skip


def transcribe_words(transcriber, audio: list[np.ndarray], words: bool) -> tuple[list, float]:
    start = time.perf_counter()
    results = list(
        transcriber.transcribe_batch(
            audio, language="en", word_timestamps=words, temperature=(0.0,)
        )  # fmt: skip
    )
    wall = time.perf_counter() - start
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"transcription failed: {failed}")
    return [[w for s in r.segments for w in (s.words or ())] for r in results], wall


def summary(scores: list[dict]) -> dict:
    signed_starts = [e for s in scores for e in s["starts"]]
    signed_ends = [e for s in scores for e in s["ends"]]
    starts, ends = np.abs(signed_starts).tolist(), np.abs(signed_ends).tolist()
    pause = sum(s["pause"] for s in scores)
    return {
        "sentences": len(starts),
        "start_bias": statistics.median(signed_starts),  # < 0: words start early
        "end_bias": statistics.median(signed_ends),
        "start_median": statistics.median(starts),
        "start_within_0.2": float(np.mean([e <= 0.2 for e in starts])),
        "end_median": statistics.median(ends),
        "end_within_0.2": float(np.mean([e <= 0.2 for e in ends])),
        "pause_in_words": sum(s["covered"] for s in scores) / pause,
    }


def run_benchmark(args: argparse.Namespace, clips: list[Clip], note: str) -> dict:
    import torch

    from whisperforge import timing
    from whisperforge.transcribe import Transcriber

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    recs = recordings(clips)
    audio = [r["audio"] for r in recs]
    trim = timing.trim_to_sound
    rows = []
    for model in args.models:
        transcriber = Transcriber(model)
        transcribe_words(transcriber, audio[:1], True)  # warm-up
        walls = {True: [], False: []}
        found = None
        for _ in range(args.repeats):
            for words in (False, True):
                out, wall = transcribe_words(transcriber, audio, words)
                walls[words].append(wall)
                found = out if words else found
        timing.trim_to_sound = lambda starts, ends, *_: (starts, ends)
        try:
            raw, _ = transcribe_words(transcriber, audio, True)
        finally:
            timing.trim_to_sound = trim
        rows.append({
            "model": model,
            "vad": transcriber.uses_vad(None),
            "trimmed": summary([score(r, w) for r, w in zip(recs, found)]),
            "attention": summary([score(r, w) for r, w in zip(recs, raw)]),
            "wall_without": statistics.median(walls[False]),
            "wall_with": statistics.median(walls[True]),
        })  # fmt: skip
    return {
        "threads": args.threads,
        "repeats": args.repeats,
        "audio": note,
        "recordings": len(recs),
        "audio_seconds": sum(len(a) for a in audio) / 16000,
        "facts": run_facts(("torch",), load),
        "rows": rows,
    }


def render(report: dict) -> str:
    facts = report["facts"]

    def cells(s: dict) -> list[str]:
        return [
            f"{s['start_median']:.3f} / {100 * s['start_within_0.2']:.0f} %",
            f"{s['end_median']:.3f} / {100 * s['end_within_0.2']:.0f} %",
            f"{100 * s['pause_in_words']:.1f} %",
        ]

    rows = []
    for r in report["rows"]:
        cost = r["wall_with"] / r["wall_without"]
        for name in ("attention", "trimmed"):
            s = r[name]
            rows.append([f"`{r['model']}`" + (" (VAD)" if r["vad"] else ""), name,
                         str(s["sentences"]), *cells(s),
                         f"{cost:.2f}x" if name == "trimmed" else ""])  # fmt: skip
    table = markdown_table(
        [
            "model",
            "word times",
            "sentences",
            "start error s: median / within 0.2 s",
            "end error s: median / within 0.2 s",
            "pause in words",
            "cost",
        ],  # fmt: skip
        rows,
    )
    return (
        f"{START_MARK}\n\n### {report['threads']} threads ({facts['date']})\n\nCommand:\n\n"
        f"```\n{facts['command']}\n```\n\n{machine_sentence(facts)} Audio: {report['audio']}, "
        f"joined into {report['recordings']} recordings ({report['audio_seconds']:.0f} s) with "
        f"pauses of {PAUSES[0]}-{PAUSES[1]} s.\n\n"
        "`trimmed` is what `word_timestamps=True` gives; `attention` the same without moving "
        "words off pauses. Cost: wall time with word timestamps over without (median of "
        f"{report['repeats']}).\n\n{table}\n\n{END_MARK}"
    )


INTRO = """## Word timestamps: how right, and what they cost

`benchmarks/bench_words.py` transcribes recordings whose sentence boundaries are known with
`word_timestamps=True` and scores where each sentence's first word starts and last word ends
against where its sound does.

"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (1)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's words section")
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    parser.add_argument("--quick", action="store_true", help="smoke test: numbers mean nothing")
    args = parser.parse_args(argv)

    def measure(workloads, note):
        short, long_form = workloads
        clips = [c for c in short.clips if c.text]
        if not args.quick:
            clips = _all_sentences()
        return run_benchmark(args, clips, note)

    report = report_from(args, measure)
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


def _all_sentences() -> list[Clip]:
    """Every benchmark sentence spoken by flite (``bench_common.synthesize``)."""
    import tempfile

    from bench_common import synthesize

    with tempfile.TemporaryDirectory(prefix="wf-words-") as tmp:
        return synthesize(Path(tmp))


if __name__ == "__main__":
    main()
