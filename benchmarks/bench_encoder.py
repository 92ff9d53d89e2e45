"""The encoder on CPU: a batch of windows in one call against groups of about 1500 states.

``InferenceSession.encode`` hands a CPU encoder the windows of a batch in groups of
``cpu_encoder_rows(frames)`` (about ``CPU_ENCODER_STATES`` encoder states a call: one 30 s
window, two of up to 15 s...) instead of all at once. Both ways run here on the same
weights in one process, alternating:

- ``encoder``: the first model's encoder on ``--rows`` windows of each length in
  ``--seconds`` (random log-mel), one call against the groups; the median of ``--rounds``
  and the largest difference between the two ways' states;
- ``transcribe``: each model of ``--models`` transcribes the benchmark's short clips and its
  5-minute file (``bench_common.build_workloads``; greedy, English, chunked, batch 8) with
  the groups and with one call a batch (``CPU_ENCODER_STATES`` set past any batch); median
  wall of ``--repeats`` runs after a warm-up, the encoder's share, whether the texts agree.

    python benchmarks/bench_encoder.py --threads 2 \\
        --models whisper-base distil-whisper-base.en \\
        --out benchmarks/results/encoder-base.json --markdown BENCHMARKS.md
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
    machine_sentence,
    markdown_table,
    publish,
    report_from,
    run_facts,
)

from whisperforge.models.inference import CPU_ENCODER_STATES as DEFAULT_STATES

START_MARK, END_MARK = "<!-- encoder:start -->", "<!-- encoder:end -->"
WAYS = ("one call", "groups")


def set_way(way: str) -> int:
    """Make ``InferenceSession.encode`` use ``way``; the previous ``CPU_ENCODER_STATES``."""
    from whisperforge.models import inference

    before = inference.CPU_ENCODER_STATES
    inference.CPU_ENCODER_STATES = 10**9 if way == "one call" else DEFAULT_STATES
    return before


def encoder_alone(model: str, rows: int, seconds: list[float], rounds: int) -> list[dict]:
    from whisperforge.models.inference import InferenceSession, cpu_encoder_rows
    from whisperforge.models.loading import load_model

    session = InferenceSession(load_model(model).model)
    n_mels = session.encoder.config.num_mel_bins
    gen = torch.Generator().manual_seed(0)
    out = []
    for length in seconds:
        frames = 2 * round(length * 50)
        features = torch.randn(rows, n_mels, frames, generator=gen)
        states, times = {}, {way: [] for way in WAYS}
        for way in WAYS:
            set_way(way)
            states[way] = session.encode(features)  # warm-up
        for r in range(rounds):
            for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                set_way(way)
                start = time.perf_counter()
                session.encode(features)
                times[way].append(time.perf_counter() - start)
        whole, grouped = (statistics.median(times[w]) / rows for w in WAYS)
        diff = (states["one call"] - states["groups"]).abs().max().item()
        out.append(
            {
                "model": model,
                "seconds": length,
                "rows": rows,
                "group": cpu_encoder_rows(frames),
                "one_call_s": whole,
                "groups_s": grouped,
                "speedup": whole / grouped,
                "max_abs_diff": diff,
                "runs_s": times,
            }
        )
        print(
            f"{model} {length:g} s x {rows}: one call {whole:.3f} s a window, groups of "
            f"{cpu_encoder_rows(frames)} {grouped:.3f} s ({whole / grouped:.2f}x)",
            flush=True,
        )
    return out


def transcribe_both(model: str, workloads, batch: int, repeats: int) -> list[dict]:
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    clock = EncoderClock()
    transcriber.session.encode = clock.wrap(transcriber.session.encode)
    options = {"language": "en", "temperature": (0.0,), "batch_size": batch}
    out = []
    for work in workloads:
        walls, encoder, texts = ({w: [] for w in WAYS} for _ in range(3))
        for way in WAYS:
            set_way(way)
            list(transcriber.transcribe_batch(work.warmup, **options))
        for r in range(repeats):
            for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                set_way(way)
                clock.reset()
                start = time.perf_counter()
                results = list(transcriber.transcribe_batch(work.audio, **options))
                walls[way].append(time.perf_counter() - start)
                encoder[way].append(clock.seconds)
                failed = [x.error for x in results if x.error]
                if failed:
                    raise RuntimeError(f"{model} failed: {failed}")
                texts[way] = [x.text for x in results]
        whole, grouped = (statistics.median(walls[w]) for w in WAYS)
        row = {
            "model": model,
            "workload": work.name,
            "audio_seconds": work.seconds,
            "batch": batch,
            "one_call_s": whole,
            "groups_s": grouped,
            "encoder_one_call_s": statistics.median(encoder["one call"]),
            "encoder_groups_s": statistics.median(encoder["groups"]),
            "speedup": whole / grouped,
            "same_text": texts["one call"] == texts["groups"],
            "walls": walls,
        }
        out.append(row)
        print(
            f"{model} {work.name} b{batch}: one call {whole:.2f} s (encoder "
            f"{row['encoder_one_call_s']:.2f}), groups {grouped:.2f} s (encoder "
            f"{row['encoder_groups_s']:.2f}); same text {row['same_text']}",
            flush=True,
        )
    return out


def render(report: dict) -> str:
    facts = report["facts"]
    alone = markdown_table(
        [
            "model",
            "window",
            "windows",
            "group",
            "one call s / window",
            "groups s / window",
            "speed",
            "max abs diff",
        ],  # fmt: skip
        [
            [
                f"`{r['model']}`",
                f"{r['seconds']:g} s",
                str(r["rows"]),
                str(r["group"]),
                f"{r['one_call_s']:.3f}",
                f"{r['groups_s']:.3f}",
                f"**{r['speedup']:.2f}x**",
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in report["encoder"]
        ],
    )
    whole = markdown_table(
        [
            "model",
            "workload",
            "audio s",
            "one call: wall s (encoder s)",
            "groups: wall s (encoder s)",
            "speed",
            "same text",
        ],  # fmt: skip
        [
            [
                f"`{r['model']}`",
                f"{r['workload']} b{r['batch']}",
                f"{r['audio_seconds']:.1f}",
                f"{r['one_call_s']:.2f} ({r['encoder_one_call_s']:.2f})",
                f"{r['groups_s']:.2f} ({r['encoder_groups_s']:.2f})",
                f"**{r['speedup']:.2f}x**",
                "yes" if r["same_text"] else "**no**",
            ]
            for r in report["transcribe"]
        ],
    )
    return (
        f"{START_MARK}\n\n### Encoder batches, {report['threads']} threads ({facts['date']})"
        f"\n\nCommand:\n\n```\n{facts['command']}\n```\n\n{machine_sentence(facts)}\n\n"
        f"Audio: {report['note']}.\n\nThe encoder alone (random log-mel), median of "
        f"{report['rounds']} alternating rounds, time per window:\n\n{alone}\n\n"
        f"Transcription (greedy, English, chunked long-form), median of {report['repeats']} "
        f"alternating runs after a warm-up:\n\n{whole}\n\n{END_MARK}"
    )


INTRO = """## Encoder batches on CPU: one call against groups

`benchmarks/bench_encoder.py` encodes a batch of windows in one encoder call and in groups
of about 1500 encoder states (`whisperforge.models.inference.cpu_encoder_rows`, what
`InferenceSession.encode` does on CPU), on the same weights in one process, the encoder
alone and in whole transcriptions.

"""


def run_benchmark(args: argparse.Namespace, workloads, note: str) -> dict:
    load = os.getloadavg()
    # students share their teacher's encoder: the first model's is timed alone
    encoder = encoder_alone(args.models[0], args.rows, args.seconds, args.rounds)
    whole = [r for m in args.models for r in transcribe_both(m, workloads, 8, args.repeats)]
    set_way("groups")
    return {
        "facts": run_facts(("torch",), load),
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "note": note,
        "encoder": encoder,
        "transcribe": whole,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["whisper-base"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[30, 21, 10, 5])
    parser.add_argument("--rows", type=int, default=8, help="windows a batch (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="trimmed audio, a smoke test")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = report_from(args, lambda workloads, note: run_benchmark(args, workloads, note))
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
