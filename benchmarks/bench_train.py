"""Training-step speed in float32 and in bf16 autocast, in one process, on the same batches.

``training.mixed_precision: auto`` trains in bf16 on CUDA and on CPUs with bf16 matrix
instructions (AVX512-BF16, AMX). This measures what that buys on the machine at hand, with
the recipes' own loss functions on real whisper-base weights and real speech:

- ``tokenizer phase 1`` / ``phase 2``: ``train_tokenizer.compute_loss`` (a whisper-base
  WhisperVQ bottleneck, the frozen decoder fed its features; phase 1 also runs the teacher
  decoder for the KL), backward, clipping, AdamW;
- ``distill``: ``distill.compute_loss`` (a 2-decoder-layer student of whisper-base, KL to
  the teacher + CE, shared frozen encoder), backward, clipping, AdamW.

Encoder states are computed once beforehand, as the recipes' on-disk encoder cache provides
them. Each case trains two copies that start from the same weights, one per precision; after
one untimed step each, ``--rounds`` rounds time ``--steps`` steps of each (alternating which
goes first) and the median seconds per step is kept. The loss of the first step (same
weights, same batch) is reported for both, to show what bf16 changes numerically.

Audio: the short clips of ``bench_common.build_workloads`` (flite sentences + jfk), one
window each, ``--batch`` windows a step with their transcripts as targets.

    python benchmarks/bench_train.py --threads 2 \\
        --out benchmarks/results/train-base.json --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from bench_common import (
    atomic_write,
    fmt,
    load_workloads,
    markdown_table,
    replace_marked_section,
    run_facts,
)

START_MARK, END_MARK = "<!-- train:start -->", "<!-- train:end -->"
TEACHER = "whisper-base"


class StoredStates:
    """The recipes' ``SharedEncoder`` interface over states computed once (the encoder cache)."""

    def __init__(self, states: dict[str, torch.Tensor]):
        self.states = states

    def __call__(self, keys: list[str]) -> torch.Tensor:
        return torch.stack([self.states[k] for k in keys])


def prepare(args, clips) -> tuple[object, list, StoredStates]:
    """The teacher, the batches ``[(Batch, samples)]`` and the stored encoder states."""
    from whisperforge.audio import log_mel_spectrogram
    from whisperforge.models.loading import load_model
    from whisperforge.recipes.train_tokenizer import target_tokens
    from whisperforge.training.data import collate

    teacher = load_model(TEACHER)
    tok = teacher.tokenizer
    n_mels = teacher.model.config.num_mel_bins
    states, rows = {}, []
    for i, clip in enumerate(c for c in clips if c.text):
        key = f"clip-{i:02d}"
        mel = log_mel_spectrogram(clip.audio, n_mels)[None]
        with torch.inference_mode():
            states[key] = teacher.model.model.encoder(mel).last_hidden_state[0].clone()
        max_length = teacher.model.config.max_target_positions
        rows.append((key, target_tokens(tok, clip.text, "en", max_length), len(clip.audio)))
    batches = []
    for start in range(0, len(rows) - args.batch + 1, args.batch):
        part = rows[start : start + args.batch]
        batch = collate([(r[1], 0) for r in part], [r[0] for r in part], tok.eot)
        batches.append((batch, torch.tensor([r[2] for r in part])))
    if not batches:
        raise SystemExit(f"fewer than --batch {args.batch} clips with known text")
    return teacher, batches, StoredStates(states)


def tokenizer_case(teacher, encoder, phase: int):
    """(module to train, loss of one batch) for a tokenizer phase."""
    from whisperforge.models.vq import WhisperVQ, preset_config, preset_for_width
    from whisperforge.recipes import train_tokenizer

    torch.manual_seed(0)
    vq = WhisperVQ(preset_config(preset_for_width(teacher.model.config.d_model)))
    cfg = SimpleNamespace(kl_weight=1.0, temperature=1.0, feature_weight=0.0)

    def loss(module, batch, samples):
        run = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")),
                              config=cfg, encoder=encoder, bottleneck=module,
                              teacher=teacher)  # fmt: skip
        return train_tokenizer.compute_loss(run, batch, samples, phase)[0].loss

    return vq, loss


def distill_case(teacher, encoder):
    """(student to train, loss of one batch) for the distillation recipe."""
    from whisperforge.models.student import create_student
    from whisperforge.recipes import distill

    student, _ = create_student(teacher.model, 2)
    config = SimpleNamespace(freeze_encoder=True, freeze_decoder_positions=True,
                             freeze_embeddings=False, ce_weight=0.8, kl_weight=1.0,
                             temperature=2.0)  # fmt: skip
    distill.freeze(student, teacher.model, config)

    def loss(module, batch, samples):
        run = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")),
                              config=config, encoder=encoder, shared_encoder=True,
                              student=module, teacher=teacher)  # fmt: skip
        return distill.compute_loss(run, batch).loss

    return student, loss


class Trainer:
    """One copy of a module, its optimizer and a precision; ``step`` trains on one batch."""

    def __init__(self, module: torch.nn.Module, loss: Callable, bf16: bool):
        self.module, self.loss, self.bf16 = module.train(), loss, bf16
        params = [p for p in module.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
        self.losses: list[float] = []

    def step(self, batch, samples) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.module, batch, samples)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 2.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))


def time_case(name: str, module, loss, batches, args) -> dict:
    trainers = {"float32": Trainer(copy.deepcopy(module), loss, False),
                "bf16": Trainer(copy.deepcopy(module), loss, True)}  # fmt: skip
    first = {}
    for label, trainer in trainers.items():  # same weights, same batch: untimed warm-up
        trainer.step(*batches[0])
        first[label] = trainer.losses[0]
    times: dict[str, list[float]] = {label: [] for label in trainers}
    cursor = 1
    for r in range(args.rounds):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        picks = [batches[(cursor + k) % len(batches)] for k in range(args.steps)]
        cursor += args.steps
        for label in order:
            start = time.perf_counter()
            for batch, samples in picks:
                trainers[label].step(batch, samples)
            times[label].append((time.perf_counter() - start) / args.steps)
    f32, bf16 = statistics.median(times["float32"]), statistics.median(times["bf16"])
    result = {
        "case": name,
        "trainable_parameters": sum(p.numel() for p in trainers["float32"].params),
        "seconds_per_step": {"float32": f32, "bf16": bf16},
        "runs": times,
        "speedup_bf16": f32 / bf16,
        "first_step_loss": first,
        "first_step_loss_relative_difference": abs(first["bf16"] - first["float32"])
        / abs(first["float32"]),
    }
    print(f"{name}: float32 {f32:.2f} s/step, bf16 {bf16:.2f} s/step "
          f"({f32 / bf16:.2f}x); first-step loss {first['float32']:.4f} / {first['bf16']:.4f}",
          flush=True)  # fmt: skip
    return result


def run_benchmark(args) -> dict:
    from whisperforge.models.inference import cpu_has_bf16_matmul

    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    workloads, note = load_workloads(args.quick)
    short = next(w for w in workloads if w.name == "short")
    teacher, batches, encoder = prepare(args, short.clips)
    cases = [("tokenizer phase 1", *tokenizer_case(teacher, encoder, 1)),
             ("tokenizer phase 2", *tokenizer_case(teacher, encoder, 2)),
             ("distill", *distill_case(teacher, encoder))]  # fmt: skip
    results = [time_case(name, module, loss, batches, args) for name, module, loss in cases]
    return {
        **run_facts(("torch", "transformers", "vector-quantize-pytorch"), load_start),
        "threads": args.threads,
        "cpu_has_bf16_matmul": cpu_has_bf16_matmul(),
        "teacher": TEACHER,
        "audio": note,
        "batch": args.batch,
        "batches": len(batches),
        "steps": args.steps,
        "rounds": args.rounds,
        "results": results,
    }


def to_markdown(report: dict) -> str:
    bf16 = "yes" if report["cpu_has_bf16_matmul"] else "no"
    rows = [
        [r["case"], fmt(r["seconds_per_step"]["float32"], ".2f"),
         fmt(r["seconds_per_step"]["bf16"], ".2f"), f"**{r['speedup_bf16']:.2f}x**",
         f"{r['first_step_loss']['float32']:.4f} / {r['first_step_loss']['bf16']:.4f}"]
        for r in report["results"]
    ]  # fmt: skip
    table = markdown_table(
        ["case", "float32 s/step", "bf16 s/step", "bf16 speed-up", "first-step loss f32 / bf16"],
        rows, left=1,
    )  # fmt: skip
    return "\n".join([
        START_MARK, "",
        f"### {report['teacher']}, {report['threads']} threads ({report['date']})", "",
        "Command:", "", "```", report["command"], "```", "",
        f"Machine: {report['cpu_model']} ({report['machine'].get('cpu_count', '?')} CPUs), "
        f"bf16 matrix instructions: {bf16}, torch {report['versions']['torch']}; load "
        f"average at start {', '.join(f'{x:.2f}' for x in report['load_average_start'])}.", "",
        f"Batches: {report['batch']} windows a step ({report['audio']}), encoder states "
        f"precomputed; median of {report['rounds']} rounds of {report['steps']} steps.", "",
        table, "",
        END_MARK,
    ])  # fmt: skip


INTRO = """## Training precision: float32 vs bf16 autocast

`benchmarks/bench_train.py` times training steps of the tokenizer recipe (both phases) and of
the distillation recipe in float32 and in bf16 autocast (what `training.mixed_precision:
auto` picks on CUDA and on CPUs with bf16 matrix instructions), in one process on the same
batches, with the recipes' own loss functions on whisper-base and real speech. The first
step's loss is shown for both precisions (same weights, same batch).

"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3; median kept)")
    p.add_argument("--quick", action="store_true", help="1 round of 1 step: checks the script")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--markdown", type=Path, help="update the train section of this file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 1
    if min(args.threads, args.batch, args.steps, args.rounds) < 1:
        p.error("--threads, --batch, --steps and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    section = to_markdown(report)
    print("\n" + section)
    if args.markdown:
        replace_marked_section(args.markdown, START_MARK, END_MARK, section, INTRO)


if __name__ == "__main__":
    main()
