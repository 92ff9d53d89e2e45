"""Speech tokenization throughput: a speech tokenizer with its Whisper encoder in float32
against the same tokenizer with the encoder in bfloat16 (or float16), in one process.

Both systems tokenize the benchmark audio of ``bench_common.build_workloads``: the short
clips (one 30 s window each) and the ~5 minute long-form file (consecutive 30 s windows), at
``--batch-size`` windows per encoder call. Every case is warmed once, then timed
``--repeats`` times in alternating order; the median is kept. The table gives audio seconds
per wall second, speech tokens per wall second, the share of the time spent in the Whisper
encoder (the rest is the bottleneck's quantizer and feature extraction), and how many ids
the faster precision gives identical to float32's (codes near a tie may flip).

    python benchmarks/bench_tokens.py --threads 2 --out benchmarks/results/tokens-vq-base.json \\
        --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from bench_common import (
    EncoderClock,
    fmt,
    machine_sentence,
    markdown_table,
    publish,
    report_from,
    run_facts,
)

START_MARK, END_MARK = "<!-- tokens:start -->", "<!-- tokens:end -->"


def measure(args: argparse.Namespace, workloads) -> dict:
    from whisperforge.models import load_model
    from whisperforge.tokens import SpeechTokenizer, load_bottleneck

    _, meta = load_bottleneck(args.tokenizer)
    whisper = load_model(meta["teacher"])  # one copy of the weights for both systems
    systems = {
        dtype: SpeechTokenizer.load(args.tokenizer, whisper=whisper, encoder_dtype=dtype)
        for dtype in ("float32", args.encoder_dtype)
    }
    clocks = {dtype: EncoderClock() for dtype in systems}
    for dtype, tok in systems.items():
        tok.session.encode = clocks[dtype].wrap(tok.session.encode)
    rows = []
    for workload in workloads:
        audio = workload.audio
        walls: dict[str, list[float]] = {d: [] for d in systems}
        encoder: dict[str, list[float]] = {d: [] for d in systems}
        ids: dict[str, list[list[int]]] = {}
        for tok in systems.values():
            tok.tokenize_batch(workload.warmup, batch_size=args.batch_size, vad=False)
        for r in range(args.repeats):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for dtype in order:
                clocks[dtype].reset()
                start = time.perf_counter()
                # every sample, no VAD: this compares encoder precisions
                ids[dtype] = systems[dtype].tokenize_batch(audio, batch_size=args.batch_size,
                                                           vad=False)  # fmt: skip
                walls[dtype].append(time.perf_counter() - start)
                encoder[dtype].append(clocks[dtype].seconds)
        reference = [i for row in ids["float32"] for i in row]
        for dtype in systems:
            flat = [i for row in ids[dtype] for i in row]
            wall = statistics.median(walls[dtype])
            rows.append(
                {
                    "workload": workload.name,
                    "encoder_dtype": dtype,
                    "audio_seconds": workload.seconds,
                    "tokens": len(flat),
                    "wall_seconds": wall,
                    "walls": walls[dtype],
                    "encoder_seconds": statistics.median(encoder[dtype]),
                    "audio_per_second": workload.seconds / wall,
                    "tokens_per_second": len(flat) / wall,
                    "same_ids": sum(a == b for a, b in zip(flat, reference)) / len(reference),
                }
            )
            print(
                f"{workload.name} {dtype}: {workload.seconds / wall:.1f} audio s/s, "
                f"{len(flat) / wall:.0f} tokens/s",
                flush=True,
            )
    base = {r["workload"]: r["wall_seconds"] for r in rows if r["encoder_dtype"] == "float32"}
    for r in rows:
        r["speedup"] = base[r["workload"]] / r["wall_seconds"]
    return {"tokenizer": str(args.tokenizer), "teacher": meta["teacher"], "rows": rows}


def render(report: dict) -> str:
    facts = report["facts"]
    table = markdown_table(
        [
            "workload",
            "encoder",
            "audio s",
            "audio s / s",
            "tokens / s",
            "speed-up",
            "encoder share",
            "ids as float32",
        ],
        [
            [
                r["workload"],
                r["encoder_dtype"],
                f"{r['audio_seconds']:.0f}",
                f"{r['audio_per_second']:.1f}",
                f"{r['tokens_per_second']:.0f}",
                f"**{r['speedup']:.2f}x**",
                f"{100 * r['encoder_seconds'] / r['wall_seconds']:.0f} %",
                fmt(100 * r["same_ids"], ".1f") + " %",
            ]
            for r in report["rows"]
        ],
        left=2,
    )
    return (
        f"{START_MARK}\n\n### `{report['tokenizer']}` (in `{report['teacher']}`), "
        f"{report['threads']} threads, batch {report['batch_size']} ({facts['date']})\n\n"
        f"Command:\n\n```\n{facts['command']}\n```\n\n"
        f"{machine_sentence(facts)} "
        f"Audio: {report['audio_note']}.\n\n"
        f"Median of {report['repeats']} runs per case, alternating order. Speed-up: against "
        "float32 on the same workload in this run.\n\n"
        f"{table}\n\n{END_MARK}"
    )


INTRO = """## Speech tokenization: float32 vs bfloat16 encoder

`benchmarks/bench_tokens.py` times `SpeechTokenizer.tokenize_batch` of one speech tokenizer
with its Whisper encoder in float32 and in bfloat16 (`encoder_dtype`, docs/tokens.md), on the
same audio in one process (every sample, `vad=False`), and counts the ids that stay the same.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default="whisper-vq-base")
    parser.add_argument("--encoder-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="trimmed audio: a smoke test")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def run(workloads, note: str) -> dict:
        load = os.getloadavg()
        return {
            **measure(args, workloads),
            "facts": run_facts(("torch",), load),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "audio_note": note,
        }

    report = report_from(args, run)
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
