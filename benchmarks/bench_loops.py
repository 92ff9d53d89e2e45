"""What cutting greedy repetition loops saves: each model with the cut on and off.

A greedy row caught in a repetition loop ("the river flooded the river flooded ...") runs
to the token limit (224), and the rows batched with it wait, although its text will be
thrown away: temperature fallback decodes that window again. ``decoding._sample`` cuts
such a row once its text compresses better than ``compression_ratio_threshold`` (checked
from ``LOOP_MIN_TOKENS`` tokens on), and the transcriber asks for the cut only at
temperatures that have a higher one after them. This times both ways in one process, same
audio, same engine, each model with its own defaults (temperature fallback, VAD where the
model uses it); ``off`` sets ``decoding.LOOP_MIN_TOKENS`` out of reach.

- ``recordings``: ``bench_words``' six recordings (the benchmark's sentences joined eight at
  a time with 0.3-2.5 s pauses, about 50 s each);
- ``long``: the benchmark's 5-minute file.

``decoder row-steps``: rows advanced by one token, summed over every decoder step (the
decoder's work); ``same text``: whether both ways gave identical transcripts.

    python benchmarks/bench_loops.py --threads 2 --out benchmarks/results/loops.json \\
        --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench_common import (
    Case,
    Clip,
    EncoderClock,
    Workload,
    machine_sentence,
    markdown_table,
    measure,
    publish,
    report_from,
    run_facts,
    summarize,
    transcribe_run,
)

START_MARK, END_MARK = "<!-- loops:start -->", "<!-- loops:end -->"
MODELS = ("whisper-base", "distil-whisper-base.en")


class RowSteps:
    """Counts the rows of every decoder step (``InferenceSession.step``) of one session."""

    def __init__(self, session) -> None:
        self.rows = 0
        step = session.step

        def counted(state, tokens):
            self.rows += tokens.shape[0]
            return step(state, tokens)

        session.step = counted

    def reset(self) -> None:
        self.rows = 0

    def read(self) -> dict:
        return {"row_steps": self.rows}


def cut_switch(run, cut: bool):
    """``run`` with loops cut (the default) or with ``LOOP_MIN_TOKENS`` out of reach."""
    from whisperforge import decoding

    def switched(audio):
        default = decoding.LOOP_MIN_TOKENS
        decoding.LOOP_MIN_TOKENS = default if cut else 10**9
        try:
            return run(audio)
        finally:
            decoding.LOOP_MIN_TOKENS = default

    return switched


def cases(model: str, workloads: list[str]) -> list[Case]:
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    clock = EncoderClock()
    transcriber.session.encode = clock.wrap(transcriber.session.encode)
    probe = RowSteps(transcriber.session)
    run = transcribe_run(transcriber, model, {"language": "en"})
    return [
        Case(
            f"{model} {'cut' if cut else 'off'} {name}",
            model,
            name,
            8,
            "chunked",
            cut_switch(run, cut),
            clock,
            probe=probe,
        )
        for name in workloads
        for cut in (False, True)
    ]


def recordings(quick: bool) -> Workload:
    """``bench_words``' recordings, with their sentences' words as the reference."""
    from bench_words import _all_sentences
    from bench_words import recordings as join

    joined = join(_all_sentences())[: 1 if quick else None]
    clips = [
        Clip(r["audio"], " ".join(w for s in r["sentences"] for w in s["words"])) for r in joined
    ]
    return Workload("recordings", clips, [clips[0].audio])


def run_benchmark(args: argparse.Namespace, workloads: list[Workload], note: str) -> dict:
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    by_name = {"recordings": recordings(args.quick), "long": workloads[1]}
    rows = []
    for model in args.models:
        timed = cases(model, list(by_name))
        measure(timed, by_name, args.repeats)
        for name, workload in by_name.items():
            off, cut = (c for c in timed if c.workload == name)
            summary = {}
            for key, case in (("off", off), ("cut", cut)):
                summary[key] = summarize(case, workload)
                summary[key]["row_steps"] = statistics.median(p["row_steps"] for p in case.probes)
            rows.append(
                {
                    "model": model,
                    "workload": name,
                    "audio_seconds": workload.seconds,
                    **summary,
                    "speed": summary["cut"]["throughput"] / summary["off"]["throughput"],
                    "same_text": off.hypotheses == cut.hypotheses,
                }
            )
    return {
        "threads": args.threads,
        "repeats": args.repeats,
        "audio": note + "; recordings: bench_words' (same sentences, 0.3-2.5 s pauses)",
        "facts": run_facts(("torch",), load),
        "rows": rows,
    }


def render(report: dict) -> str:
    facts = report["facts"]

    def cell(case: dict) -> str:
        wer = "n/a" if case["wer"] is None else f"{100 * case['wer']:.2f} %"
        return f"{case['wall_seconds']:.2f} / {case['row_steps']:,.0f} / {wer}"

    table = markdown_table(
        [
            "model",
            "workload",
            "audio s",
            "off: wall s / decoder row-steps / WER",
            "cut: wall s / decoder row-steps / WER",
            "speed",
            "same text",
        ],
        [
            [
                f"`{r['model']}`",
                f"`{r['workload']}`",
                f"{r['audio_seconds']:.1f}",
                cell(r["off"]),
                cell(r["cut"]),
                f"**{r['speed']:.2f}x**",
                "yes" if r["same_text"] else "**no**",
            ]
            for r in report["rows"]
        ],
        left=2,
    )
    return (
        f"{START_MARK}\n\n### Loop cut, {report['threads']} threads ({facts['date']})\n\n"
        f"Command:\n\n```\n{facts['command']}\n```\n\n"
        f"{machine_sentence(facts)} Audio: {report['audio']}.\n\n"
        f"Median of {report['repeats']} timed runs per case; each model's defaults (temperature "
        "fallback, batch 8, chunked long-form); WER is corpus WER after Whisper's English "
        "normaliser; speed is throughput with the cut over throughput without (> 1: faster).\n\n"
        f"{table}\n\n{END_MARK}"
    )


INTRO = """## Cutting greedy repetition loops

`benchmarks/bench_loops.py` transcribes the same audio with each model with greedy loops cut
(the default) and run to the token limit, in one process.

"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (2)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's loops section")
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    parser.add_argument("--quick", action="store_true", help="smoke test: numbers mean nothing")
    args = parser.parse_args(argv)
    report = report_from(args, lambda workloads, note: run_benchmark(args, workloads, note))
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
