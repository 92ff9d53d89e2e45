"""``whisperforge distill``: student creation, pseudo-labelling and the WER filter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisperforge.recipes.train_cli import add_train_arguments, run_training


def cmd_init(args: argparse.Namespace) -> int:
    from whisperforge.models.loading import load_model
    from whisperforge.models.student import create_student, save_student

    teacher = load_model(args.teacher)
    student, layers = create_student(teacher.model, args.decoder_layers, args.encoder_layers)
    out = save_student(student, teacher.model, args.teacher, layers, args.out)
    n_params = sum(p.numel() for p in student.parameters()) / 1e6
    print(
        f"student of {args.teacher}: decoder layers {layers['decoder']}, "
        f"{len(layers['encoder'])} encoder layers, {n_params:.1f}M parameters -> {out}"
    )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from whisperforge.cli import _quiet_transformers
    from whisperforge.recipes.pseudo_label import LabelOptions, label

    options = LabelOptions(
        teacher=args.teacher,
        split=args.split,
        pack=args.pack,
        pack_seconds=args.pack_seconds,
        stream=args.stream,
        seed=args.seed,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        language=args.language,
        limit=args.limit or None,
        max_wer=args.max_wer,
    )
    _quiet_transformers()
    summary = label(args.data, args.out, options, progress=not args.quiet)
    if summary is None:  # not the main process
        return 0
    for failure in summary["failures"]:
        where = failure.get("audio") or f"line {failure.get('line')}"
        print(f"failed {failure['id'] or '-'} ({where}): {failure['reason']}", file=sys.stderr)
    wer = summary["teacher_wer"]
    shards = summary["shards"]
    print(
        f"labelled {summary['labelled']} windows ({summary['audio_hours']:.2f} h) from "
        f"{summary['utterances']} utterances with {summary['teacher']}; failed "
        f"{summary['failed']}; shards {shards['total']} ({shards['reused']} reused)"
    )
    print(f"teacher WER {'-' if wer is None else f'{wer:.2f} %'}")
    filtered = summary["filter"]
    print(
        f"at max WER {filtered['max_wer']:g} %: keep {filtered['kept']}, "
        f"drop {filtered['dropped']} -> {Path(args.out) / 'labels.jsonl'}"
    )
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from whisperforge.data.manifest import Skipped, iter_manifest, write_manifest
    from whisperforge.recipes.pseudo_label import filter_by_wer

    rows = []
    for line, utt in iter_manifest(args.labels):
        if isinstance(utt, Skipped):
            print(f"skipped line {line}: {utt.reason}", file=sys.stderr)
        else:
            rows.append(utt)
    kept, report = filter_by_wer(rows, args.max_wer)
    for row_id, wer in report.dropped_ids.items():
        print(f"dropped {row_id}: " + ("no reference" if wer is None else f"WER {wer:.1f} %"))
    print(report.summary())
    if args.out is not None:
        write_manifest(kept, args.out)
        print(f"kept rows written to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from whisperforge.recipes.distill import DistillConfig, train

    result = run_training(args, DistillConfig, train)
    if result.main_process:
        wer = "-" if result.dev_wer is None else f"{result.dev_wer:.2f} %"
        print(f"trained {result.steps} steps on {result.data['kept']} of "
              f"{result.data['rows']} rows; dev WER {wer} -> {result.student}")  # fmt: skip
    return 0


def add_parser(subparsers) -> None:
    distill = subparsers.add_parser("distill", help="distil a smaller student from a teacher")
    sub = distill.add_subparsers(dest="distill_command", required=True)
    p = sub.add_parser("init", help="create a student from a teacher's layers")
    p.add_argument("--teacher", default="whisper-base", help="teacher model reference")
    p.add_argument("--decoder-layers", type=int, required=True, help="decoder layers to keep")
    p.add_argument("--encoder-layers", type=int, default=None, help="default: all")
    p.add_argument("--out", type=Path, required=True, help="student folder to write")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("train", help="train a student on pseudo-labels and teacher logits")
    add_train_arguments(p, "recipes/configs/distill-base.yaml")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("label", help="pseudo-label audio with a teacher (sharded, resumable)")
    p.add_argument("--teacher", default="whisper-base", help="teacher model reference")
    p.add_argument(
        "--data", required=True,
        help="JSONL manifest, corpus folder, audiofolder, saved or hub HF dataset",
    )  # fmt: skip
    p.add_argument("--split", default="train", help="split of a corpus folder or dataset")
    p.add_argument("--out", type=Path, required=True, help="folder for labels.jsonl and shards")
    p.add_argument(
        "--pack", action="store_true",
        help="pack consecutive utterances of a speaker/language into windows of up to 30 s",
    )  # fmt: skip
    p.add_argument(
        "--pack-seconds", type=float, default=30.0,
        help="longest packed window, s (below 30 leaves room at the window end)",
    )  # fmt: skip
    p.add_argument(
        "--stream", action="store_true",
        help="play a speaker's utterances as one recording (seeded pauses) and cut it into "
        "30 s windows wherever 30 s ends, as long-form transcription does",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of --stream's pauses and cuts")
    p.add_argument("--batch-size", type=int, default=8, help="windows decoded together")
    p.add_argument("--shard-size", type=int, default=256, help="windows per shard")
    p.add_argument("--language", default=None, help="default: each row's language, else detect")
    p.add_argument("--limit", type=int, default=0, help="label only the first N utterances")
    p.add_argument(
        "--max-wer", type=float, default=10.0,
        help="WER (percent) the summary counts drops at; labels are never dropped here",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("filter", help="keep pseudo-labels whose teacher WER is below a threshold")
    p.add_argument("labels", type=Path, help="labels.jsonl written by distill label")
    p.add_argument("--max-wer", type=float, default=10.0, help="keep rows below this WER, %%")
    p.add_argument("--out", type=Path, default=None, help="write the kept rows here (JSONL)")
    p.set_defaults(func=cmd_filter)
