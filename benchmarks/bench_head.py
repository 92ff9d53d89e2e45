"""The vocabulary projection of a decoding step: ``F.linear`` against ``InferenceSession.logits``.

Every decoding step multiplies a few final hidden states by the whole ``(vocab, d_model)``
token embedding (51,865 x 512 for whisper-base: 106 MB in float32). Both ways below compute
the same numbers on the same weights in the same process:

- ``F.linear``: ``hidden @ embed.T``, what ``torch.nn.Linear`` and transformers do;
- ``session``: ``InferenceSession.logits``, ``(embed @ hidden.T).T`` (one row doubled).

For context the table also times one decoder step (``InferenceSession.step``: every decoder
layer with its key/value caches, cross-attention over 1500 encoder frames) at the same batch,
so the projection's share of a step can be read off. After a warm-up, ``--rounds`` rounds time
``--calls`` calls of each way (alternating which goes first); the median ms per call is kept.

    python benchmarks/bench_head.py --threads 2 --out benchmarks/results/head-base.json \\
        --markdown BENCHMARKS.md
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


def measure(model: str, batches: list[int], rounds: int, calls: int) -> list[dict]:
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    session, tok = transcriber.session, transcriber.tokenizer
    language = "en" if tok.multilingual else None
    prompt = [*tok.sot_sequence(language), tok.no_timestamps]
    word = tok.encode(" the")[0]
    embed = session.embed
    gen = torch.Generator().manual_seed(0)
    audio = session.encode(torch.randn(1, session.encoder.config.num_mel_bins, 3000, generator=gen))
    rows = []
    for batch in batches:
        hidden = torch.randn(batch, session.d_model, generator=gen, dtype=embed.dtype)
        ways = {
            "F.linear": lambda h=hidden: F.linear(h, embed),
            "session": lambda h=hidden: session.logits(h),
        }
        worst = (ways["F.linear"]() - ways["session"]()).abs().max().item()
        state = session.start(
            audio.expand(batch, -1, -1).contiguous(), [len(prompt)] * batch, calls
        )
        session.prompt(state, [prompt] * batch)
        token = torch.full((batch,), word)
        for fn in ways.values():
            fn()
        times = {name: [] for name in ways}
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                times[name].append(per_call_ms(ways[name], calls))
        # `calls` decoder steps fill the cache, which has room for exactly that many
        step_ms = per_call_ms(lambda: session.step(state, token), calls)  # noqa: B023
        linear, ours = (statistics.median(times[n]) for n in ways)
        rows.append(
            {
                "model": model,
                "rows": batch,
                "linear_ms": linear,
                "session_ms": ours,
                "speedup": linear / ours,
                "step_ms": step_ms,
                "max_abs_diff": worst,
                "runs_ms": times,
            }
        )
        print(f"{model} rows {batch}: F.linear {linear:.2f} ms, session {ours:.2f} ms", flush=True)
    return rows


def render(report: dict) -> str:
    facts = report["facts"]
    table = markdown_table(
        [
            "model",
            "rows",
            "F.linear ms",
            "session.logits ms",
            "speed-up",
            "decoder step ms",
            "max abs diff",
        ],
        [
            [
                f"`{r['model']}`",
                str(r["rows"]),
                f"{r['linear_ms']:.2f}",
                f"{r['session_ms']:.2f}",
                f"**{r['speedup']:.2f}x**",
                f"{r['step_ms']:.2f}",
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in report["rows"]
        ],
    )
    return (
        f"{START_MARK}\n\n### Vocabulary projection, {report['threads']} threads "
        f"({facts['date']})\n\nCommand:\n\n```\n{facts['command']}\n```\n\n"
        f"{machine_sentence(facts)}\n\n"
        f"Median of {report['rounds']} rounds of {report['calls']} calls; the decoder step "
        "(every layer, no projection) is one round of as many calls at the same batch, "
        "for scale.\n\n"
        f"{table}\n\n{END_MARK}"
    )


INTRO = """## Vocabulary projection: `F.linear` vs `InferenceSession.logits`

`benchmarks/bench_head.py` times the last matrix product of a decoding step, the hidden
states times the whole token embedding, written as `F.linear` (what `torch.nn.Linear` and
transformers use) and as whisperforge's `InferenceSession.logits` (the same product computed
as `embed @ hidden.T`), on the same weights in one process.

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
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        torch.set_num_threads(args.threads)
        load = os.getloadavg()
        rows = [r for m in args.models for r in measure(m, args.rows, args.rounds, args.calls)]
        report = {
            "facts": run_facts(("torch",), load),
            "threads": args.threads,
            "rounds": args.rounds,
            "calls": args.calls,
            "rows": rows,
        }
        if args.out:
            atomic_write(args.out, json.dumps(report, indent=2) + "\n")
    publish(render(report), args.markdown, START_MARK, END_MARK, INTRO)


if __name__ == "__main__":
    main()
