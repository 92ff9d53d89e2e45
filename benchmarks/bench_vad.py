"""What voice activity detection costs and gives: one model with ``vad=False`` and ``vad=True``.

``distil-whisper-base.en`` transcribes with Silero VAD by default (docs/distill.md, *Speech
after silence*); this measures that default against ``--no-vad`` in one process, same audio,
same engine (greedy, temperature 0, batch ``--batch-size``, chunked long-form):

- ``short``: the benchmark's short clips (speech from their first word);
- ``padded``: the same clips, each after 2-15 s of digital silence (seeded): speech that starts
  seconds into a window, as in recordings;
- ``long``: the benchmark's 5-minute file (pauses under a second: VAD keeps nearly all of it).

Every case is warmed once and timed ``--repeats`` times in alternating order (median kept);
``vad`` is Silero's own time on the same audio (``whisperforge.vad.speech_map``, one pass).

    python benchmarks/bench_vad.py --threads 2 --out benchmarks/results/vad-distil.json \\
        --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
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

START_MARK, END_MARK = "<!-- vad:start -->", "<!-- vad:end -->"
LEAD_SECONDS = (2.0, 15.0)  # silence before each padded clip
SEED = 7


def padded(short: Workload) -> Workload:
    """``short``'s clips, each after a seeded stretch of digital silence."""
    from whisperforge.audio import SAMPLE_RATE

    rng = np.random.default_rng(SEED)
    clips = [
        Clip(np.concatenate([np.zeros(int(rng.uniform(*LEAD_SECONDS) * SAMPLE_RATE), np.float32),
                             c.audio]), c.text)
        for c in short.clips
    ]  # fmt: skip
    return Workload("padded", clips, [c.audio for c in clips[: len(short.warmup)]])


def cases(model: str, batch_size: int, workloads: list[str]) -> list[Case]:
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    clock = EncoderClock()
    transcriber.session.encode = clock.wrap(transcriber.session.encode)

    def runner(vad: bool):
        options = {"language": "en", "beam_size": 1, "temperature": (0.0,), "vad": vad,
                   "batch_size": batch_size}  # fmt: skip
        return transcribe_run(transcriber, model, options)

    return [
        Case(
            f"{'vad' if vad else 'no vad'} {name}",
            "vad" if vad else "no vad",
            name,
            batch_size,
            "chunked",
            runner(vad),
            clock,
        )  # fmt: skip
        for name in workloads
        for vad in (False, True)
    ]


def silero(audio: list[np.ndarray]) -> tuple[float, float]:
    """Silero's own wall time over ``audio`` and the seconds of speech it keeps (one pass)."""
    from whisperforge.vad import speech_map

    start = time.perf_counter()
    found = [speech_map(a) for a in audio]
    return time.perf_counter() - start, sum(f.duration_after_vad for f in found)


def run_benchmark(args: argparse.Namespace, workloads: list[Workload], note: str) -> dict:
    import torch

    from whisperforge.vad import speech_map

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    short, long_form = workloads
    by_name = {w.name: w for w in (short, padded(short), long_form)}
    speech_map(short.clips[0].audio)  # load Silero before anything is timed
    timed = cases(args.model, args.batch_size, list(by_name))
    measure(timed, by_name, args.repeats)
    rows = []
    for name, workload in by_name.items():
        off, on = (summarize(c, workload) for c in timed if c.workload == name)
        seconds, kept = silero(workload.audio)
        rows.append({
            "workload": name, "audio_seconds": workload.seconds, "kept_seconds": kept,
            "silero_seconds": seconds, "no_vad": off, "vad": on,
            "speed": on["throughput"] / off["throughput"],
        })  # fmt: skip
    return {
        "model": args.model,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "audio": note,
        "facts": run_facts(("torch", "silero-vad"), load),
        "rows": rows,
    }


def _wall_and_wer(case: dict) -> str:
    wer = case["wer"]
    return f"{case['wall_seconds']:.2f} / " + ("n/a" if wer is None else f"{100 * wer:.2f} %")


def render(report: dict) -> str:
    facts = report["facts"]
    table = markdown_table(
        [
            "workload",
            "audio s",
            "kept by VAD s",
            "no VAD: wall s / WER",
            "VAD: wall s / WER",
            "VAD speed",
            "Silero alone s",
        ],  # fmt: skip
        [
            [
                f"`{r['workload']}`",
                f"{r['audio_seconds']:.1f}",
                f"{r['kept_seconds']:.1f}",
                _wall_and_wer(r["no_vad"]),
                _wall_and_wer(r["vad"]),
                f"**{r['speed']:.2f}x**",
                f"{r['silero_seconds']:.2f}",
            ]
            for r in report["rows"]
        ],
        left=1,
    )
    return (
        f"{START_MARK}\n\n### `{report['model']}`, {report['threads']} threads, batch "
        f"{report['batch_size']} ({facts['date']})\n\nCommand:\n\n```\n{facts['command']}\n```\n\n"
        f"{machine_sentence(facts)} Audio: {report['audio']}.\n\n"
        f"Median of {report['repeats']} timed runs per case; WER is corpus WER after Whisper's "
        "English normaliser; VAD speed is throughput with VAD over throughput without (> 1: "
        "faster).\n\n"
        f"{table}\n\n{END_MARK}"
    )


INTRO = """## Voice activity detection: its cost and what it fixes

`benchmarks/bench_vad.py` transcribes the same audio with one model with `vad=False` and
`vad=True` in one process: the short clips, the same clips after 2-15 s of silence each, and
the 5-minute file. `distil-whisper-base.en` transcribes with VAD by default.

"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="distil-whisper-base.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (2)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's vad section")
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke test of the script: 4 short clips, 60 s long-form (numbers mean nothing)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    report = report_from(args, lambda workloads, note: run_benchmark(args, workloads, note))
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
