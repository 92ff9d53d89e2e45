"""The vocabulary projection of a decoding step: ``F.linear`` against ``InferenceSession.logits``,
exact (float32) and through the bfloat16 vocabulary screen.

Every decoding step multiplies a few final hidden states by the whole ``(vocab, d_model)``
token embedding (51,865 x 512 for whisper-base: 106 MB in float32). The ways below use the
same weights in the same process:

- ``F.linear``: ``hidden @ embed.T``, what ``torch.nn.Linear`` and transformers do;
- ``exact``: ``InferenceSession.logits`` with ``vocab_screen=False``: ``(embed @ hidden.T).T``
  (one row doubled), the same numbers as ``F.linear``;
- ``screen``: ``InferenceSession.logits`` with ``vocab_screen=True``: the product on a
  bfloat16 copy, then each row's best text tokens and every special and timestamp token in
  float32 (fast where the CPU has bfloat16 matrix instructions; ``cpu_has_bf16_matmul``).

After a warm-up, ``--rounds`` rounds time ``--calls`` calls of each way on its own (the
embedding stays in the CPU's caches between calls), alternating the order; the median ms per
call is kept. A decoding step is different: the decoder layers run between two projections
and push the embedding out of the caches. So ``step`` times a whole step, every decoder
layer (cross-attention over 1500 encoder frames) and then the projection, each way; and
``--transcribe`` transcribes the benchmark's short clips (greedy, batch 1) with both
sessions, wall time and whether the texts are the same.

    python benchmarks/bench_head.py --threads 2 --transcribe \\
        --models whisper-base distil-whisper-base.en \\
        --out benchmarks/results/head-base.json --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import (
    atomic_write,
    machine_sentence,
    markdown_table,
    publish,
    run_facts,
)

START_MARK, END_MARK = "<!-- head:start -->", "<!-- head:end -->"


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def load_both(model: str) -> tuple:
    """A ``Transcriber`` of ``model`` and two sessions over its weights: ``exact``
    (float32 projection) and ``screen`` (the bfloat16 vocabulary screen)."""
    from whisperforge.models.inference import InferenceSession
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    weights = transcriber.bundle.model
    return transcriber, {
        "exact": InferenceSession(weights, vocab_screen=False),
        "screen": InferenceSession(weights, vocab_screen=True),
    }


def measure(model: str, batches: list[int], rounds: int, calls: int) -> list[dict]:
    transcriber, sessions = load_both(model)
    tok = transcriber.tokenizer
    exact = sessions["exact"]
    language = "en" if tok.multilingual else None
    prompt = [*tok.sot_sequence(language), tok.no_timestamps]
    word = tok.encode(" the")[0]
    embed = exact.embed
    gen = torch.Generator().manual_seed(0)
    audio = exact.encode(torch.randn(1, exact.encoder.config.num_mel_bins, 3000, generator=gen))
    rows = []
    for batch in batches:
        hidden = torch.randn(batch, exact.d_model, generator=gen, dtype=embed.dtype)
        ways = {
            "F.linear": lambda h=hidden: F.linear(h, embed),
            "exact": lambda h=hidden: exact.logits(h),
            "screen": lambda h=hidden: sessions["screen"].logits(h),
        }
        worst = (ways["F.linear"]() - ways["exact"]()).abs().max().item()
        screen_worst = (ways["exact"]() - ways["screen"]()).abs().max().item()
        for fn in ways.values():
            fn()
        times = {name: [] for name in ways}
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                times[name].append(per_call_ms(ways[name], calls))
        steps = {}
        for name, session in sessions.items():
            # `calls` decoder steps fill the cache, which has room for exactly that many
            state = session.start(
                audio.expand(batch, -1, -1).contiguous(), [len(prompt)] * batch, calls
            )
            session.prompt(state, [prompt] * batch)
            token = torch.full((batch,), word)
            step = lambda s=session, st=state, t=token: s.logits(s.step(st, t)[:, -1])  # noqa: E731
            steps[name] = per_call_ms(step, calls)
        linear, ours, screened = (statistics.median(times[n]) for n in ways)
        rows.append(
            {
                "model": model,
                "rows": batch,
                "linear_ms": linear,
                "session_ms": ours,
                "screen_ms": screened,
                "speedup": linear / ours,
                "step_exact_ms": steps["exact"],
                "step_screen_ms": steps["screen"],
                "max_abs_diff": worst,
                "screen_max_abs_diff": screen_worst,
                "runs_ms": times,
            }
        )
        print(
            f"{model} rows {batch}: F.linear {linear:.2f} ms, exact {ours:.2f} ms, screen "
            f"{screened:.2f} ms; step {steps['exact']:.2f} / {steps['screen']:.2f} ms",
            flush=True,
        )
    return rows


def transcribe_both(model: str, repeats: int) -> dict:
    """The benchmark's short clips, greedy at batch 1, with the exact and the screened
    projection (median wall of ``repeats``, alternating), and whether the texts agree."""
    from bench_common import load_workloads

    transcriber, sessions = load_both(model)
    (short, _), _ = load_workloads(False)
    options = {"language": "en", "temperature": (0.0,), "batch_size": 1}
    walls, texts = {name: [] for name in sessions}, {}
    for session in sessions.values():
        transcriber.session = session
        list(transcriber.transcribe_batch(short.warmup[:2], **options))
    for r in range(repeats):
        for name in list(sessions) if r % 2 == 0 else list(reversed(sessions)):
            transcriber.session = sessions[name]
            start = time.perf_counter()
            texts[name] = [x.text for x in transcriber.transcribe_batch(short.audio, **options)]
            walls[name].append(time.perf_counter() - start)
    exact, screened = (statistics.median(walls[n]) for n in sessions)
    print(f"{model} short clips: exact {exact:.2f} s, screen {screened:.2f} s", flush=True)
    return {
        "model": model,
        "clips": len(short.clips),
        "audio_seconds": short.seconds,
        "exact_s": exact,
        "screen_s": screened,
        "speedup": exact / screened,
        "same_text": texts["exact"] == texts["screen"],
        "walls": walls,
    }


def render(report: dict) -> str:
    facts = report["facts"]
    table = markdown_table(
        [
            "model",
            "rows",
            "F.linear ms",
            "exact ms",
            "screen ms",
            "step + projection ms, exact / screen",
            "max abs diff: exact / screen",
        ],
        [
            [
                f"`{r['model']}`",
                str(r["rows"]),
                f"{r['linear_ms']:.2f}",
                f"{r['session_ms']:.2f}",
                f"{r['screen_ms']:.2f}",
                f"{r['step_exact_ms']:.2f} / {r['step_screen_ms']:.2f} "
                f"(**{r['step_exact_ms'] / r['step_screen_ms']:.2f}x**)",
                f"{r['max_abs_diff']:.1e} / {r['screen_max_abs_diff']:.1e}",
            ]
            for r in report["rows"]
        ],
    )
    clips = ""
    if report.get("transcribe"):
        clips = "\n\nThe short clips, greedy, batch 1, median of 2 alternating runs per way:\n\n"
        clips += markdown_table(
            ["model", "short clips", "exact wall s", "screen wall s", "speed", "same text"],
            [
                [
                    f"`{t['model']}`",
                    f"{t['clips']} ({t['audio_seconds']:.0f} s)",
                    f"{t['exact_s']:.2f}",
                    f"{t['screen_s']:.2f}",
                    f"**{t['speedup']:.2f}x**",
                    "yes" if t["same_text"] else "**no**",
                ]
                for t in report["transcribe"]
            ],
        )
    return (
        f"{START_MARK}\n\n### Vocabulary projection, {report['threads']} threads "
        f"({facts['date']})\n\nCommand:\n\n```\n{facts['command']}\n```\n\n"
        f"{machine_sentence(facts)} bfloat16 matrix instructions: "
        f"{'yes' if report.get('cpu_has_bf16_matmul') else 'no'}.\n\n"
        f"Median of {report['rounds']} rounds of {report['calls']} calls of the projection "
        "alone; a step is every decoder layer and then the projection, one round of as many "
        "calls at the same batch; max abs diff against `F.linear` (exact) and against the "
        "exact projection (screen: the tokens left in bfloat16)."
        f"{clips}\n\n{table}\n\n{END_MARK}"
    )


INTRO = """## Vocabulary projection: `F.linear` vs `InferenceSession.logits`

`benchmarks/bench_head.py` times the last matrix product of a decoding step, the hidden
states times the whole token embedding, written as `F.linear` (what `torch.nn.Linear` and
transformers use), as whisperforge's `InferenceSession.logits` (the same product computed
as `embed @ hidden.T`), and through its bfloat16 vocabulary screen, on the same weights in
one process.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["whisper-base"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--render", type=Path, help="re-render a saved report, measure nothing")
    parser.add_argument(
        "--transcribe", action="store_true", help="also transcribe the short clips both ways"
    )
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        torch.set_num_threads(args.threads)
        load = os.getloadavg()
        rows = [r for m in args.models for r in measure(m, args.rows, args.rounds, args.calls)]
        from whisperforge.models.inference import cpu_has_bf16_matmul

        report = {
            "facts": run_facts(("torch",), load),
            "threads": args.threads,
            "rounds": args.rounds,
            "calls": args.calls,
            "cpu_has_bf16_matmul": cpu_has_bf16_matmul(),
            "rows": rows,
            "transcribe": [transcribe_both(m, 2) for m in args.models] if args.transcribe else [],
        }
        if args.out:
            atomic_write(args.out, json.dumps(report, indent=2) + "\n")
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
