"""Distilled students: teacher vs student vs teacher with the student drafting, in one run.

Three whisperforge systems transcribe the same 16 kHz arrays in one process, warm, with the
same thread count: the teacher, the student, and the teacher with the student as its
speculative ``assistant`` (the student drafts, the teacher verifies; the text is the
teacher's own greedy output). Each runs short clips (one window each) at batch 1 and batch N,
and a ~5 minute long-form file chunked at batch N and sequential at batch 1. The short clips
run again with the student at its other audio context (full 30 s windows, or dynamic: the
batch's longest + 1 s) and with the teacher at the dynamic context, and the long-form file
with both models cut at pauses (``long_form="segmented"``: no overlap, no timestamps; in the
table's chunked row, as ``teacher-segmented`` and ``student-segmented``).

Decoding is greedy (``beam_size=1``, temperature 0 only: no fallback, so every window of the
assisted system is decoded speculatively) with ``language="en"``; ``--fallback`` restores
openai-whisper's temperature fallback. Every timing is repeated and the median kept; repeats
alternate the case order. Speed claims are the *ratios* to the teacher in the same run.

Where the time goes, per case: ``encoder`` (the encoder forward, assistant encodes included),
``decoder`` (the decoding model's forward passes and vocabulary projection), ``draft`` (the
assistant's, assisted system only) and ``rest`` (features, logit rules, search, stitching).
For the assisted system the teacher's forward passes, the tokens they produced and the share
of drafted tokens the teacher accepted are reported, and whether its text equals the
teacher's. Speculative decoding verifies one window at a time, so in the assisted system the
batch size batches the encoder only.

Audio: ``bench_common.build_workloads`` (the same as ``bench_transcribe.py``).

    python benchmarks/bench_distil.py --student STUDENT --threads 2 \\
        --out benchmarks/results/distil-NAME.json --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import (
    Case,
    Workload,
    atomic_write,
    fmt,
    markdown_table,
    measure,
    replace_marked_section,
    report_from,
    run_facts,
    summarize,
    transcribe_run,
    transcriber_cases,
)

VERSIONS = ("whisperforge", "torch", "transformers", "numpy")
# vad off for both: a student's default VAD would time Silero too, on one side only
GREEDY = {"language": "en", "beam_size": 1, "temperature": (0.0,), "vad": False}
DECODER_METHODS = ("start", "prompt", "step", "extend", "logits")  # InferenceSession
FORWARDS = ("prompt", "step", "extend")  # one decoder forward pass each
START_MARK, END_MARK = "<!-- distil:start -->", "<!-- distil:end -->"


def marks(encoder_dtype: str, name: str | None = None) -> tuple[str, str]:
    """BENCHMARKS.md markers of a run's section: one section per encoder precision, or the
    one ``--section`` names."""
    if name is None and encoder_dtype == "float32":
        return START_MARK, END_MARK
    name = name or encoder_dtype
    return f"<!-- distil-{name}:start -->", f"<!-- distil-{name}:end -->"


# -- probes -------------------------------------------------------------------------------


class SessionProbe:
    """Wraps an ``InferenceSession``'s decoder methods to add up their wall time and count
    the forward passes (batched: one pass may decode several windows)."""

    def __init__(self, session) -> None:
        self.seconds, self.forwards = 0.0, 0
        for name in DECODER_METHODS:
            setattr(session, name, self._wrap(name, getattr(session, name)))

    def _wrap(self, name: str, method: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.forwards += name in FORWARDS
            return out

        return timed

    def reset(self) -> None:
        self.seconds, self.forwards = 0.0, 0


class SystemProbe:
    """Decoder time of the decoding model, draft time and speculative counts of one system."""

    def __init__(self, transcriber) -> None:
        self.transcriber = transcriber
        self.decoder = SessionProbe(transcriber.session)
        self.draft = SessionProbe(transcriber.assistant) if transcriber.assistant else None

    def reset(self) -> None:
        from whisperforge.speculative import SpeculativeStats

        self.decoder.reset()
        if self.draft is not None:
            self.draft.reset()
        self.transcriber.speculative_stats = SpeculativeStats()

    def read(self) -> dict:
        out = {"decoder_seconds": self.decoder.seconds, "decoder_forwards": self.decoder.forwards}
        if self.draft is not None:
            stats = self.transcriber.speculative_stats
            out |= {
                "draft_seconds": self.draft.seconds,
                "draft_forwards": self.draft.forwards,
                "teacher_passes": stats.teacher_passes,
                "tokens": stats.tokens,
                "drafted": stats.drafted,
                "accepted": stats.accepted,
            }
        return out


# -- systems ------------------------------------------------------------------------------


def teacher_of(student: str) -> str | None:
    """The teacher a student folder (or shipped student) records, None if it records none."""
    from whisperforge.models.student import STUDENT_FILE, is_student_folder
    from whisperforge.models.zoo import zoo_path

    folder = zoo_path(student) or Path(student).expanduser()
    if folder.is_dir() and is_student_folder(folder):
        return json.loads((folder / STUDENT_FILE).read_text())["teacher"]
    return None


def build_cases(
    teacher_ref: str, student_ref: str, batch_size: int, decode: dict, encoder_dtype=None
):
    """The three systems' cases; the teacher and student are loaded once and shared; every
    system runs its encoder in ``encoder_dtype`` (None: the models' own, float32)."""
    from whisperforge.models import load_model
    from whisperforge.transcribe import Transcriber

    teacher, student = load_model(teacher_ref), load_model(student_ref)
    transcribers = {
        "teacher": Transcriber(teacher, encoder_dtype=encoder_dtype),
        "student": Transcriber(student, encoder_dtype=encoder_dtype),
        "assisted": Transcriber(teacher, assistant=student, encoder_dtype=encoder_dtype),
    }
    # short clips (one window each) also with the student's other audio context, and with
    # the teacher at the dynamic one (which it was not trained for)
    other = "full" if student.audio_context == "dynamic" else "dynamic"
    contexts = [(f"student-{other}-context", student, other),
                ("teacher-dynamic-context", teacher, "dynamic")]  # fmt: skip
    cases = []
    for system, transcriber in transcribers.items():
        probe = SystemProbe(transcriber)
        group = transcriber_cases(transcriber, system, system, batch_size, decode, probe)
        assistant = transcriber.assistant
        if assistant is not None and not transcriber.assistant_shares_encoder:
            assistant.encode = group[0].clock.wrap(assistant.encode)  # counted as encoder time
        cases += group
    for system, bundle, context in contexts:
        transcriber = Transcriber(bundle, encoder_dtype=encoder_dtype)
        options = dict(decode, audio_context=context)
        group = transcriber_cases(transcriber, system, system, batch_size, options,
                                  SystemProbe(transcriber))  # fmt: skip
        cases += [c for c in group if c.workload == "short"]
    # long-form with the student's own chunked windows (student.json) and with the teacher's
    own = transcribers["student"].chunking(None, None)
    teacher_own = transcribers["teacher"].chunking(None, None)
    if own != teacher_own:
        system = f"student-{teacher_own[0]:g}s-chunks"
        transcriber = Transcriber(student, encoder_dtype=encoder_dtype)
        options = dict(decode, chunk_length=teacher_own[0], stride_length=teacher_own[1])
        group = transcriber_cases(transcriber, system, system, batch_size, options,
                                  SystemProbe(transcriber))  # fmt: skip
        cases += [c for c in group if c.workload == "long" and c.mode == "chunked"]
    # long-form cut at pauses (``long_form="segmented"``) for both, in the chunked row
    for system, bundle in (("teacher-segmented", teacher), ("student-segmented", student)):
        transcriber = Transcriber(bundle, encoder_dtype=encoder_dtype)
        group = transcriber_cases(transcriber, system, system, batch_size, decode,
                                  SystemProbe(transcriber))  # fmt: skip
        (case,) = [c for c in group if c.workload == "long" and c.mode == "chunked"]
        options = dict(decode, batch_size=batch_size, long_form="segmented")
        case.run, case.mode = transcribe_run(transcriber, system, options), "segmented"
        cases.append(case)
    models = {"teacher": teacher, "student": student}
    return cases, models, transcribers["assisted"].assistant_shares_encoder


def describe(bundle) -> dict:
    from whisperforge.transcribe import resolve_chunking

    config = bundle.model.config
    return {
        "reference": bundle.name,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "parameters_millions": round(sum(p.numel() for p in bundle.model.parameters()) / 1e6, 1),
        "audio_context": bundle.audio_context,
        **dict(zip(("chunk_length", "stride_length"), resolve_chunking(bundle, None, None))),
    }


# -- summarising --------------------------------------------------------------------------


def case_row(case: Case, workload: Workload, teacher_texts: list[str] | None) -> dict:
    """``bench_common.summarize`` plus where the time went and the speculative counts."""
    row = summarize(case, workload)
    probes = case.probes
    for key in ("decoder_seconds", "draft_seconds"):
        if key in probes[0]:
            row[key] = round(statistics.median(p[key] for p in probes), 3)
    for key in ("decoder_forwards", "draft_forwards", "teacher_passes", "tokens", "drafted"):
        if key in probes[-1]:
            row[key] = probes[-1][key]
    if "drafted" in row:
        last = probes[-1]
        row["acceptance_rate"] = last["accepted"] / last["drafted"] if last["drafted"] else None
        row["tokens_per_teacher_pass"] = (
            last["tokens"] / last["teacher_passes"] if last["teacher_passes"] else None
        )
    row["rest_seconds"] = round(
        row["wall_seconds"] - row["encoder_seconds"] - row["decoder_seconds"]
        - row.get("draft_seconds", 0.0), 3,
    )  # fmt: skip
    if teacher_texts is not None:
        row["same_text_as_teacher"] = case.hypotheses == teacher_texts
        row["files_same_as_teacher"] = sum(
            a == b for a, b in zip(case.hypotheses, teacher_texts, strict=True)
        )
    return row


def summarize_all(cases: list[Case], workloads: dict[str, Workload]) -> list[dict]:
    teacher = {c.name.split(" ", 1)[1]: c.hypotheses for c in cases if c.system == "teacher"}
    rows = []
    for case in cases:
        kind = case.name.split(" ", 1)[1]  # "b1", "b8", "chunked b8", "sequential b1"
        reference = teacher.get(kind) if case.system != "teacher" else None
        rows.append(case_row(case, workloads[case.workload], reference))
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per case kind: student and assisted throughput over the teacher's (> 1: faster)."""
    by = {(r["system"], r["name"].split(" ", 1)[1]): r for r in rows}
    out = []
    for (system, kind), teacher in by.items():
        if system != "teacher":
            continue
        entry = {"workload": teacher["workload"], "case": kind}
        for other in sorted({s for s, _ in by} - {"teacher"}):
            if (other, kind) in by:
                entry[f"{other}_vs_teacher"] = by[other, kind]["throughput"] / teacher["throughput"]
        out.append(entry)
    return out


# -- reporting ----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return fmt(None if value is None else 100 * value, ".1f") + ("" if value is None else " %")


def ratios_table(pairs: list[dict]) -> str:
    keys = {k.removesuffix("_vs_teacher") for p in pairs for k in p if k.endswith("_vs_teacher")}
    others = sorted(keys - {"student", "assisted"})
    header = ["workload", "case", "student / teacher", "teacher + assistant / teacher",
              *(f"{o} / teacher" for o in others)]  # fmt: skip

    def cell(p: dict, key: str) -> str:
        value = p.get(f"{key}_vs_teacher")
        return "—" if value is None else f"**{fmt(value, '.2f')}x**"

    rows = [[p["workload"], p["case"], *(cell(p, k) for k in ("student", "assisted", *others))]
            for p in pairs]  # fmt: skip
    return markdown_table(header, rows)


CASE_COLUMNS = [
    "workload", "case", "audio s", "wall s (median)", "runs (s)", "throughput (audio s / s)",
    "encoder s", "decoder s", "draft s", "rest s", "decoder passes", "WER", "text = teacher's",
]  # fmt: skip


def _case_cells(r: dict) -> list[str]:
    same = r.get("files_same_as_teacher")
    return [
        r["workload"], r["name"], f"{r['audio_seconds']:.1f}", f"{r['wall_seconds']:.2f}",
        " / ".join(f"{w:.1f}" for w in r["wall_seconds_all"]), f"{r['throughput']:.2f}",
        f"{r['encoder_seconds']:.2f}", f"{r['decoder_seconds']:.2f}",
        fmt(r.get("draft_seconds"), ".2f"), f"{r['rest_seconds']:.2f}",
        str(r["decoder_forwards"]), fmt(r["wer"], ".2%"),
        "—" if same is None else f"{same}/{len(r['hypotheses'])}",
    ]  # fmt: skip


def cases_table(rows: list[dict]) -> str:
    return markdown_table(CASE_COLUMNS, [_case_cells(r) for r in rows])


def speculative_table(rows: list[dict]) -> str:
    header = ["case", "teacher passes", "tokens", "tokens / teacher pass", "drafts accepted",
              "assistant passes"]  # fmt: skip
    cells = [
        [r["name"], str(r["teacher_passes"]), str(r["tokens"]),
         fmt(r["tokens_per_teacher_pass"], ".2f"), _pct(r["acceptance_rate"]),
         str(r["draft_forwards"])]
        for r in rows if "teacher_passes" in r
    ]  # fmt: skip
    return markdown_table(header, cells, left=1)


def machine_line(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    load = ", ".join(f"{x:.2f}" for x in report["load_average_start"])
    return (
        f"{report.get('cpu_model') or m['cpu']} ({m['cpu_count']} CPUs), {report['threads']} "
        f"threads for every system, torch {v['torch']}, transformers {v['transformers']}, "
        f"Python {m['python']}; load average at start {load}"
    )


def models_line(report: dict) -> str:
    t, s = report["teacher"], report["student"]
    shared = "shares the teacher's encoder" if report["assistant_shares_encoder"] else (
        "has its own encoder (run too when it drafts)"
    )  # fmt: skip
    return (
        f"Teacher `{t['reference']}` ({t['parameters_millions']}M parameters, "
        f"{t['decoder_layers']} decoder layers); student `{s['reference']}` "
        f"({s['parameters_millions']}M, {s['decoder_layers']} decoder layers, "
        f"{s['encoder_layers']} encoder layers, {s.get('audio_context', 'full')} audio "
        f"context{_chunks(s)}), which {shared}"
    )


def _chunks(model: dict) -> str:
    """``, 20 s chunks (stride 3 s)`` where a model's chunked long-form windows are not
    Whisper's 30 s / 5 s."""
    chunk, stride = model.get("chunk_length", 30.0), model.get("stride_length", 5.0)
    return "" if (chunk, stride) == (30.0, 5.0) else f", {chunk:g} s chunks (stride {stride:g} s)"


def section(report: dict) -> str:
    decoding = "greedy with temperature fallback" if report["fallback"] else "greedy, no fallback"
    dtype = report.get("encoder_dtype", "float32")
    start, end = marks(dtype, report.get("section"))
    precision = "" if dtype == "float32" else f", {dtype} encoder"
    projection = (
        "; each step's vocabulary projection screened in bfloat16 (docs/transcribe.md, "
        "*Vocabulary screen*)"
        if report.get("vocab_screen")
        else ""
    )
    return "\n\n".join(
        [
            start,
            f"### {report['name']}: {report['student']['reference']} vs "
            f"{report['teacher']['reference']}, {report['threads']} threads{precision} "
            f"({report['date']})",
            f"Command:\n\n```\n{report['command']}\n```",
            f"Machine: {machine_line(report)}.",
            f"Models: {models_line(report)}. Decoding: {decoding}, English. Encoder "
            f"precision: {dtype} for every system; decoding in float32{projection}.",
            f"Audio: {report['audio']}. Short clips: {report['short_clips']} files, "
            f"{report['short_seconds']:.1f} s in all, one window each. Long-form: one file of "
            f"{report['long_seconds']:.1f} s.",
            "Throughput ratios to the teacher in the same run (> 1: faster than the teacher):",
            ratios_table(report["ratios"]),
            f"Per case (median of {report['repeats']} timed runs after one warm-up):",
            cases_table(report["results"]),
            "Speculative decoding (teacher + assistant), counts from the last timed run:",
            speculative_table(report["results"]),
            end,
        ]
    )


MARKDOWN_INTRO = """## Distilled students: teacher vs student

`benchmarks/bench_distil.py` runs a teacher, its distilled student, and the teacher with the
student as its speculative assistant (the student drafts, the teacher verifies; the output is
the teacher's own greedy text) on the same audio with the same engine (whisperforge) and
threads in one run: short clips at batch 1 and batch 8, long-form chunked at batch 8 and
sequential at batch 1, greedy, English. Throughput is audio seconds per wall second; WER is
corpus-level after Whisper's English normaliser. Time is split into the encoder forward, the
decoding model's forward passes (`decoder`), the assistant's (`draft`) and the rest
(features, logit rules, stitching). "decoder passes" counts batched forward passes of the
decoding model (a batch of windows is one pass). Speculative decoding verifies one window at a
time, so for the assisted system the batch size batches the encoder only; its table gives the
teacher's passes, the tokens they produced and the share of drafted tokens accepted. A student
trained for a dynamic audio context (windows padded to the batch's longest + 1 s, not 30 s)
transcribes that way by default. The short clips also run with the student's other context
and with the teacher at the dynamic one, which it was not trained for (see its WER).

"""


def write_markdown(path: Path, report: dict) -> None:
    start, end = marks(report.get("encoder_dtype", "float32"), report.get("section"))
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start not in text and END_MARK in text:  # a first run at another precision: after
        head, tail = text.split(END_MARK, 1)  # the float32 section, without a second intro
        atomic_write(path, f"{head}{END_MARK}\n\n{section(report)}{tail}")
        return
    replace_marked_section(path, start, end, section(report), MARKDOWN_INTRO)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.rsplit("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A development run against an untrained student (numbers mean nothing):\n"
        "  whisperforge distill init --teacher whisper-base --decoder-layers 2 --out /tmp/s\n"
        "  python benchmarks/bench_distil.py --student /tmp/s --quick --repeats 1",
    )
    parser.add_argument(
        "--student",
        help="the student (required unless --render): a short name, a student folder from "
        "`whisperforge distill init` or training, or any model folder (then give --teacher)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher", default=None, help="teacher reference (default: the one the student records)"
    )
    parser.add_argument(
        "--name", default=None, help="label of the run (default: the student's folder name)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every system (2)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the batched cases (8)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per case, median kept (2)"
    )
    parser.add_argument(
        "--fallback", action="store_true",
        help="openai-whisper's temperature fallback (default: greedy at temperature 0 only)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder-dtype", choices=("float32", "bfloat16"), default="float32",
        help="every system's encoder precision (float32); a bfloat16 run gets its own section",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's distil section")
    parser.add_argument(
        "--section", default=None,
        help="BENCHMARKS.md section of its own (distil-SECTION) instead of the precision's",
    )  # fmt: skip
    parser.add_argument(
        "--render", type=Path, help="no run: print and write --markdown from this saved report"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke test of the script: 4 short clips, 60 s long-form (numbers mean nothing)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.student is None and args.render is None:
        parser.error("--student is required (unless --render re-renders a saved report)")
    return args


def run_benchmark(args: argparse.Namespace, workloads: list[Workload], note: str) -> dict:
    import torch

    from whisperforge.models.inference import cpu_has_bf16_matmul

    teacher_ref = args.teacher or teacher_of(args.student)
    if teacher_ref is None:
        raise SystemExit(f"{args.student} records no teacher: pass --teacher")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    decode = {"language": "en", "beam_size": 1, "vad": False} if args.fallback else GREEDY
    cases, models, shares_encoder = build_cases(
        teacher_ref, args.student, args.batch_size, decode, args.encoder_dtype
    )
    by_name = {w.name: w for w in workloads}
    measure(cases, by_name, args.repeats)
    rows = summarize_all(cases, by_name)
    return {
        "name": args.name or Path(args.student).name,
        "teacher": describe(models["teacher"]),
        "student": describe(models["student"]),
        "assistant_shares_encoder": shares_encoder,
        "threads": args.threads,
        "encoder_dtype": args.encoder_dtype,
        "vocab_screen": cpu_has_bf16_matmul(),  # every session here is float32 on the CPU
        "section": args.section,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "fallback": args.fallback,
        "decode_options": {k: list(v) if isinstance(v, tuple) else v for k, v in decode.items()},
        "audio": note,
        "short_clips": len(by_name["short"].clips),
        "short_seconds": by_name["short"].seconds,
        "long_seconds": by_name["long"].seconds,
        **run_facts(VERSIONS, load_start),
        "ratios": ratios(rows),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = report_from(args, lambda workloads, note: run_benchmark(args, workloads, note))
    print(f"\n{machine_line(report)}\n{models_line(report)}\n")
    print(ratios_table(report["ratios"]) + "\n")
    print(cases_table(report["results"]) + "\n")
    print(speculative_table(report["results"]))
    if args.markdown:
        write_markdown(args.markdown, report)


if __name__ == "__main__":
    main()
