"""``whisperforge distill``: student creation (training and labelling join this group)."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_parser(subparsers) -> None:
    distill = subparsers.add_parser("distill", help="distil a smaller student from a teacher")
    sub = distill.add_subparsers(dest="distill_command", required=True)
    p = sub.add_parser("init", help="create a student from a teacher's layers")
    p.add_argument("--teacher", default="whisper-base", help="teacher model reference")
    p.add_argument("--decoder-layers", type=int, required=True, help="decoder layers to keep")
    p.add_argument("--encoder-layers", type=int, default=None, help="default: all")
    p.add_argument("--out", type=Path, required=True, help="student folder to write")
    p.set_defaults(func=cmd_init)
