"""Transcription throughput: whisperforge against faster-whisper, same weights, threads and run.

Both systems transcribe the same 16 kHz arrays in one process, warm, with the same thread
count, greedy decoding (``beam_size=1``), ``language="en"`` and their default thresholds and
temperature fallback. Every timing is repeated and the median kept; repeats run the cases in
alternating order so a change in machine load falls on both systems. Speed claims are the
*ratios* printed at the end, never the absolute times (DESIGN.md, evaluation protocol).

Audio: ``bench_common.build_workloads`` (flite sentences and ``samples/jfk.wav``: short
clips of one window each and a ~5 minute long-form file).

Weights: whisperforge runs the preset's float16 CTranslate2 checkpoint converted to a Hugging
Face folder and upcast to float32; faster-whisper loads the very same ``model.bin`` with
``compute_type="float32"`` (upcast at load) or ``"int8"`` (quantised at load).

    python benchmarks/bench_transcribe.py --model whisper-base --threads 2 \\
        --out benchmarks/results/transcribe-base.json --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from bench_common import (
    Case,
    EncoderClock,
    Workload,
    fmt,
    measure,
    replace_marked_section,
    report_from,
    run_facts,
    summarize,
    transcriber_cases,
)

VERSIONS = ("whisperforge", "torch", "ctranslate2", "faster-whisper", "onnxruntime", "numpy")
DECODE = {"language": "en", "beam_size": 1}  # both systems; everything else at its default
START_MARK, END_MARK = "<!-- transcribe:start -->", "<!-- transcribe:end -->"

# -- systems ----------------------------------------------------------------------------


def ct2_folder(model: str) -> Path:
    """A CTranslate2 folder holding the preset's ``model.bin`` in one piece (built once)."""
    from whisperforge.models.convert import cache_dir
    from whisperforge.models.presets import PRESETS, preset_files

    if model not in PRESETS:
        raise SystemExit(f"unknown model {model!r}; available: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[model]
    parts, meta = preset_files(preset)
    folder = cache_dir() / "ct2" / f"{model}-{preset.sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (meta / name).exists() and not (folder / name).exists():
            _atomic_copy([meta / name], folder / name)
    target = folder / "model.bin"
    if not target.exists() or target.stat().st_size != preset.size_bytes:
        _atomic_copy(parts, target)
    return folder


def _atomic_copy(sources: list[Path], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for source in sources:
            with open(source, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    os.replace(tmp, dest)


def whisperforge_cases(model: str, batch_size: int, encoder_dtypes=()) -> list[Case]:
    """whisperforge's cases (``wf ...``), and for each of ``encoder_dtypes`` the same model
    with its encoder in that precision (``wf-bfloat16 ...``), sharing the loaded weights."""
    from whisperforge.models import load_model
    from whisperforge.transcribe import Transcriber

    bundle = load_model(model)
    cases = transcriber_cases(Transcriber(bundle), "wf", "whisperforge", batch_size, DECODE)
    for dtype in encoder_dtypes:
        transcriber = Transcriber(bundle, encoder_dtype=dtype)
        cases += transcriber_cases(transcriber, f"wf-{dtype}", "whisperforge", batch_size, DECODE)
    return cases


def faster_whisper_cases(folder: Path, compute_type: str, threads: int, batch_size: int):
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type=compute_type, cpu_threads=threads)
    clock = EncoderClock()
    model.encode = clock.wrap(model.encode)
    pipeline = BatchedInferencePipeline(model)

    def sequential(audio):
        texts = []
        for a in audio:
            segments, _ = model.transcribe(a, **DECODE, vad_filter=False, word_timestamps=False)
            texts.append("".join(s.text for s in segments).strip())  # consume: it is lazy
        return texts

    def batched(vad: bool):
        def run(audio):
            texts = []
            for a in audio:
                clips = None if vad else _fixed_clips(len(a))
                segments, _ = pipeline.transcribe(
                    a, **DECODE, batch_size=batch_size, vad_filter=vad, clip_timestamps=clips
                )
                texts.append("".join(s.text for s in segments).strip())
            return texts

        return run

    tag = f"fw {compute_type}"
    system = f"faster-whisper {compute_type}"
    cases = [
        Case(tag, system, "short", 1, "sequential", sequential, clock),
        Case(f"{tag} sequential", system, "long", 1, "sequential", sequential, clock),
    ]
    variants = [("batched+VAD", True)] + (
        [("batched 30s", False)] if compute_type == "float32" else []
    )
    for label, vad in variants:
        name = f"{tag} {label} b{batch_size}"
        cases.append(Case(name, system, "long", batch_size, "batched", batched(vad), clock))
    return cases


def _fixed_clips(n_samples: int) -> list[dict]:
    """Consecutive 30 s clips: faster-whisper's batched mode without its VAD."""
    from whisperforge.audio import SAMPLE_RATE

    seconds = n_samples / SAMPLE_RATE
    starts = np.arange(0.0, seconds, 30.0)
    return [{"start": float(s), "end": float(min(s + 30.0, seconds))} for s in starts]


# -- measuring --------------------------------------------------------------------------


def ratio_pairs(batch_size: int, encoder_dtypes=()) -> list[tuple[str, str]]:
    b = batch_size
    ours = ["wf b1", f"wf b{b}", f"wf chunked b{b}", "wf sequential b1"]
    extra = [(case.replace("wf", f"wf-{d}", 1), case) for d in encoder_dtypes for case in ours]
    extra += [(a.replace("wf", f"wf-{d}", 1), peer) for d in encoder_dtypes
              for a, peer in _peer_pairs(b) if "float32" in peer]  # fmt: skip
    return _peer_pairs(b) + extra


def _peer_pairs(b: int) -> list[tuple[str, str]]:
    return [
        ("wf b1", "fw float32"),
        (f"wf b{b}", "fw float32"),
        (f"wf chunked b{b}", f"fw float32 batched+VAD b{b}"),
        ("wf sequential b1", "fw float32 sequential"),
        ("wf b1", "fw int8"),
        (f"wf b{b}", "fw int8"),
        (f"wf chunked b{b}", f"fw int8 batched+VAD b{b}"),
        ("wf sequential b1", "fw int8 sequential"),
    ]


def ratios(rows: dict[str, dict], batch_size: int, encoder_dtypes=()) -> list[dict]:
    out = []
    for ours, peer in ratio_pairs(batch_size, encoder_dtypes):
        if ours in rows and peer in rows:
            a, b = rows[ours], rows[peer]
            out.append(
                {
                    "workload": a["workload"],
                    "whisperforge": ours,
                    "faster_whisper": peer,
                    "throughput_ratio": a["throughput"] / b["throughput"],
                    "encoder_ratio": _encoder_ratio(a, b),
                }
            )
    return out


def _encoder_ratio(a: dict, b: dict) -> float | None:
    """The peer's encoder time per window over ours (> 1: our encoder is faster)."""
    if a["encoder_ms_per_window"] and b["encoder_ms_per_window"]:
        return b["encoder_ms_per_window"] / a["encoder_ms_per_window"]
    return None


# -- reporting --------------------------------------------------------------------------


def systems_table(rows: list[dict]) -> str:
    lines = [
        "| workload | case | audio s | wall s (median) | runs (s) | throughput (audio s / s) "
        "| encoder s | rest s | windows | encoder ms/window | WER |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['name']} | {r['audio_seconds']:.1f} | {r['wall_seconds']:.2f} "
            f"| {' / '.join(f'{w:.1f}' for w in r['wall_seconds_all'])} "
            f"| {r['throughput']:.2f} | {r['encoder_seconds']:.2f} "
            f"| {r['wall_seconds'] - r['encoder_seconds']:.2f} | {r['windows_encoded']} "
            f"| {fmt(r['encoder_ms_per_window'], '.0f')} | {fmt(r['wer'], '.2%')} |"
        )
    return "\n".join(lines)


def ratios_table(pairs: list[dict]) -> str:
    lines = [
        "| workload | whisperforge | vs | throughput ratio | encoder speed ratio |",
        "|---|---|---|--:|--:|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['workload']} | {p['whisperforge']} | {p['faster_whisper']} "
            f"| **{p['throughput_ratio']:.2f}x** | {fmt(p['encoder_ratio'], '.2f')}x |"
        )
    return "\n".join(lines)


def machine_line(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    load = ", ".join(f"{x:.2f}" for x in report["load_average_start"])
    cpu = report.get("cpu_model") or m["cpu"]
    return (
        f"{cpu} ({m['cpu_count']} CPUs), {report['threads']} threads for both systems, "
        f"torch {v['torch']}, ctranslate2 {v['ctranslate2']}, faster-whisper "
        f"{v['faster-whisper']}, Python {m['python']}; load average at start {load}"
    )


def bar_line(report: dict) -> str:
    """The issue's bar: at least faster-whisper float32's throughput, short and long-form."""
    verdicts = []
    for p in report["ratios"]:
        if "float32" in p["faster_whisper"] and p["whisperforge"].startswith("wf "):
            mark = "meets" if p["throughput_ratio"] >= 1.0 else "BELOW"
            verdicts.append(
                f"{p['workload']} `{p['whisperforge']}` vs `{p['faster_whisper']}` "
                f"{p['throughput_ratio']:.2f}x ({mark})"
            )
    return "Bar (at least equal to faster-whisper float32): " + "; ".join(verdicts) + "."


def section(report: dict) -> str:
    return "\n\n".join(
        [
            START_MARK,
            f"### {report['model']}, {report['threads']} threads ({report['date']})",
            f"Command:\n\n```\n{report['command']}\n```",
            f"Machine: {machine_line(report)}.",
            f"Audio: {report['audio']}. Short clips: {report['short_clips']} files, "
            f"{report['short_seconds']:.1f} s in all, one window each. Long-form: one file of "
            f"{report['long_seconds']:.1f} s.",
            "Ratios (whisperforge throughput / the peer's throughput; > 1: whisperforge is "
            "faster). Encoder speed ratio: the peer's encoder ms per window over ours. "
            "`wf-bfloat16` is whisperforge with `--encoder-dtype bfloat16`, compared with "
            "float32 whisperforge in the same run too.",
            ratios_table(report["ratios"]),
            f"Per case (median of {report['repeats']} timed runs after one warm-up):",
            systems_table(report["results"]),
            END_MARK,
        ]
    )


MARKDOWN_INTRO = """# Benchmarks

Speed claims in this project are ratios against a peer measured **in the same run**: same
machine, same process, same audio arrays, same weights, same thread count, each system warm.
Absolute times from different runs are not compared. Every table below is regenerated by the
command printed with it; the raw numbers (all repeats, transcripts, versions, machine) are in
`benchmarks/results/`.

## Transcription throughput: whisperforge vs faster-whisper

`benchmarks/bench_transcribe.py` transcribes short clips (one 30 s window each) and a
~5-minute long-form file with whisperforge and with faster-whisper (CTranslate2), greedy
decoding, English fixed, default thresholds and temperature fallback on both sides.
Throughput is audio seconds per wall second (higher is faster); WER is corpus-level after
Whisper's English normaliser, reported so that speed is never read without accuracy.

What each case does:

- `wf b1` / `wf bN`: `Transcriber.transcribe_batch(files, batch_size=...)`; windows of
  different files share an encoder and decoder batch.
- `wf chunked bN`: long-form `chunked` (30 s windows overlapping by 2 x 5 s, decoded in
  batches, merged); `wf sequential b1`: openai-whisper's seek loop, conditioned on the
  previous text (one file has nothing to batch with).
- `wf-bfloat16 ...` (with `--encoder-dtype bfloat16`): the same cases with the encoder in
  bfloat16 (`Transcriber(model, encoder_dtype="bfloat16")`; decoding stays float32), compared
  with float32 whisperforge in the same run as well as with faster-whisper.
- `fw float32` / `fw int8`: `WhisperModel.transcribe` one file at a time (its API has no
  cross-file batching), no VAD, no word timestamps, `condition_on_previous_text=True`.
- `fw ... batched+VAD bN`: `BatchedInferencePipeline.transcribe(batch_size=N)` as shipped:
  Silero VAD (bundled ONNX, offline, counted in the time) cuts the audio into speech chunks of
  at most 30 s, silence is dropped, and chunks are decoded without timestamps (its default).
- `fw float32 batched 30s bN`: the same pipeline on consecutive 30 s clips
  (`clip_timestamps`, no VAD), cut wherever 30 s ends. Shown for what the VAD costs and buys:
  words cut at clip ends are lost (see its WER), so it is not used as a speed reference.

Same weights: whisperforge runs the preset's float16 checkpoint upcast to float32;
faster-whisper loads the same `model.bin` as float32 (upcast at load) or int8 (quantised at
load). The encoder columns time each system's encoder call inside the same runs (the network
forward only, not the log-mel); "rest" is everything else: features, decoding, stitching.

"""


def write_markdown(path: Path, report: dict) -> None:
    intro = "" if path.exists() else MARKDOWN_INTRO
    replace_marked_section(path, START_MARK, END_MARK, section(report), intro)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base", help="a preset name")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both systems")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the batched cases")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's transcribe section")
    parser.add_argument(
        "--render", type=Path, help="no run: print and write --markdown from this saved report"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 4 short clips, 60 s long-form"
    )
    parser.add_argument(
        "--encoder-dtype", nargs="*", default=[], choices=("bfloat16", "float16"),
        help="also run whisperforge with its encoder in these precisions (wf-bfloat16 ...)",
    )  # fmt: skip
    return parser.parse_args(argv)


def run_benchmark(args: argparse.Namespace, workloads: list[Workload], note: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    folder = ct2_folder(args.model)
    cases = whisperforge_cases(args.model, args.batch_size, args.encoder_dtype)
    for compute_type in ("float32", "int8"):
        cases += faster_whisper_cases(folder, compute_type, args.threads, args.batch_size)
    by_name = {w.name: w for w in workloads}
    measure(cases, by_name, args.repeats)
    rows = [summarize(c, by_name[c.workload]) for c in cases]
    return {
        "model": args.model,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "decode_options": DECODE,
        "audio": note,
        "short_clips": len(by_name["short"].clips),
        "short_seconds": by_name["short"].seconds,
        "long_seconds": by_name["long"].seconds,
        "ct2_folder": str(folder),
        **run_facts(VERSIONS, load_start),
        "encoder_dtypes": args.encoder_dtype,
        "ratios": ratios({r["name"]: r for r in rows}, args.batch_size, args.encoder_dtype),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = report_from(args, lambda workloads, note: run_benchmark(args, workloads, note))
    print(f"\n{machine_line(report)}\n")
    print(ratios_table(report["ratios"]) + "\n")
    print(bar_line(report) + "\n")
    print(systems_table(report["results"]))
    if args.markdown:
        write_markdown(args.markdown, report)


if __name__ == "__main__":
    main()
