"""``whisperforge tokenizer``: train and evaluate speech tokenizers (the recipes).

``train`` is a thin layer over ``recipes.train_tokenizer``; ``evaluate`` over
``recipes.evaluate_tokens``. Using a tokenizer (encode, transcribe, grow, merge) is
``whisperforge tokens``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisperforge.models.zoo import DEFAULT_TOKENIZER
from whisperforge.recipes.train_cli import add_train_arguments, run_training
from whisperforge.tokens_cli import add_encoder_dtype


def cmd_train(args: argparse.Namespace) -> int:
    from whisperforge.recipes.train_tokenizer import TokenizerTrainConfig, train

    result = run_training(args, TokenizerTrainConfig, train)
    if result.main_process:
        wer = "-" if result.dev_wer is None else f"{result.dev_wer:.2f} %"
        print(f"trained {result.steps} steps on {result.data['kept']} rows; dev WER (from "
              f"tokens) {wer} -> {result.tokenizer}")  # fmt: skip
    return 0


def _load_tokenizer(args: argparse.Namespace):
    import torch

    from whisperforge.cli import _quiet_transformers
    from whisperforge.models.loading import ModelNotFoundError
    from whisperforge.models.zoo import zoo_path
    from whisperforge.tokens import SpeechTokenizer

    if args.model == DEFAULT_TOKENIZER and zoo_path(DEFAULT_TOKENIZER) is None:
        raise ModelNotFoundError(
            f"no shipped speech tokenizer is installed ('{DEFAULT_TOKENIZER}' has not been "
            "trained into this package yet); pass --model with a tokenizer folder, e.g. the "
            "OUTPUT_DIR/tokenizer of `whisperforge tokenizer train`"
        )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    _quiet_transformers()
    return SpeechTokenizer.load(args.model, device=args.device, encoder_dtype=args.encoder_dtype)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from whisperforge.decoding import DecodingOptions
    from whisperforge.progress import progress_bar
    from whisperforge.recipes.evaluate import load_report, usable_items, write_report
    from whisperforge.recipes.evaluate_tokens import evaluate_tokens, teacher_texts
    from whisperforge.tokens_cli import resolve_vad

    vad = resolve_vad(args)
    items, skipped = usable_items(args.manifest, split=args.split, limit=args.limit)
    tokenizer = _load_tokenizer(args)
    options = DecodingOptions(beam_size=args.beam_size if args.beam_size > 1 else None,
                              without_timestamps=not args.timestamps)  # fmt: skip
    teacher = None
    if args.teacher_from:
        try:
            previous = load_report(args.teacher_from)
            teacher = teacher_texts(previous, items, tokenizer, options, args.language, vad,
                                    args.fallback)  # fmt: skip
        except ValueError as error:
            raise ValueError(f"--teacher-from {args.teacher_from}: {error}") from None
    seconds = sum(i.duration or 0.0 for i in items)
    bar = progress_bar(round(seconds, 1), unit="s", enabled=not args.quiet)
    # with --report, finished utterances are kept next to it until the report is written,
    # so a killed evaluation resumes where it stopped
    journal = args.report.with_name(args.report.name + ".partial.jsonl") if args.report else None
    report = evaluate_tokens(
        tokenizer, items, language=args.language, options=options, batch_size=args.batch_size,
        name=str(args.model), progress=bar.update, teacher=teacher, vad=vad, journal=journal,
        fallback=args.fallback,
    )  # fmt: skip
    bar.close()
    if report["resumed"]:
        print(f"resumed: {report['resumed']} of {len(items)} utterances from {journal}",
              file=sys.stderr)  # fmt: skip
    report |= {"manifest": str(args.manifest), "skipped": skipped}
    if args.teacher_from:
        report["teacher_from"] = str(args.teacher_from)
    print_report(report)
    if args.report:
        write_report(report, args.report)
        journal.unlink(missing_ok=True)
        print(f"report written to {args.report}")
    return 1 if report["failed"] else 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.2f} %"


def print_report(r: dict) -> None:
    """The summary of an ``evaluate_tokens`` report, as a few lines."""
    teacher, bits, book = r["teacher"], r["bitrate"], r["codebook"]
    ratio = "-" if r["wer_ratio"] is None else f"{r['wer_ratio']:.2f}x"
    print(f"tokenizer   {r['model']} (in {r['teacher_model']})")
    print(f"utterances  {r['utterances']} ({r['audio_seconds']:.1f} s of audio), "
          f"failed {len(r['failed'])}")  # fmt: skip
    if r.get("duration_after_vad") is not None:
        print(f"vad         {r['duration_after_vad']:.1f} s of speech kept")
    print(f"{'':12}{'from tokens':>12}{'teacher':>12}")
    print(f"{'WER':12}{_percent(r['wer']):>12}{_percent(teacher['wer']):>12}   ratio {ratio}")
    print(f"{'CER':12}{_percent(r['cer']):>12}{_percent(teacher['cer']):>12}")
    print(f"tokens      {r['tokens']} ({r['tokens_per_second']:.2f} per s); bitrate nominal "
          f"{bits['nominal_bps']:.0f} bit/s, entropy {bits['entropy_bps']:.0f} bit/s")  # fmt: skip
    print(f"codebook    {book['used']} of {book['n_codes']} codes used "
          f"({100 * book['utilisation']:.1f} %), perplexity {book['perplexity']:.1f}, "
          f"dead {book['dead_codes']}")  # fmt: skip
    t, encoder = r["timing"], r.get("encoder_dtype", "float32")
    teacher_speed = t["teacher_throughput"]
    teacher_speed = "from " + r["teacher_from"] if teacher_speed is None else f"{teacher_speed:.2f}"
    print(f"throughput  {r['throughput']:.2f} audio s / wall s overall; tokenize "
          f"{t['tokenize_throughput']:.2f}, tokens->text {t['tokens_to_text_throughput']:.2f}, "
          f"teacher {teacher_speed} ({r['machine']['torch_threads']} threads, "
          f"batch {r['options']['batch_size']}, {encoder} encoder)")  # fmt: skip


def add_parser(subparsers) -> None:
    from whisperforge.cli import add_vad_arguments

    tokenizer = subparsers.add_parser(
        "tokenizer", help="train and evaluate speech tokenizers (WhisperVQ bottlenecks)"
    )
    sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True)

    p = sub.add_parser("train", help="train a bottleneck in a frozen Whisper (two phases)")
    add_train_arguments(p, "recipes/configs/tokenizer-base.yaml")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="WER from tokens next to the continuous model's WER")
    p.add_argument(
        "--manifest", required=True,
        help="JSONL manifest, corpus folder, audiofolder, saved or hub HF dataset",
    )  # fmt: skip
    p.add_argument("--split", default="test", help="split of a corpus folder or dataset")
    p.add_argument(
        "--model", default=DEFAULT_TOKENIZER, help="speech tokenizer folder or shipped name"
    )
    p.add_argument("--language", default=None, help="default: each row's, else detected")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument(
        "--timestamps", action="store_true",
        help="decode recordings of one window with timestamps on both paths, as transcribe "
        "does (default: without, as the tokenizer was trained; longer ones always use them)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="30 s windows per forward pass")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--teacher-from", type=Path, default=None, metavar="REPORT",
        help="take the continuous model's transcripts from an earlier report on the same "
        "utterances (same teacher and decoding) instead of decoding them again",
    )  # fmt: skip
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances")
    p.add_argument(
        "--fallback", action=argparse.BooleanOptionalAction, default=True,
        help="decode a too repetitive or too unlikely window again at rising temperatures, "
        "on both paths, as transcribe does (default); --no-fallback: greedy only",
    )  # fmt: skip
    add_encoder_dtype(p)
    add_vad_arguments(
        p, "both paths read only the speech voice activity detection (Silero VAD) finds, "
        "as `tokens encode --vad` tokenizes it (default: the tokenizer's, as `tokens "
        "encode`; --no-vad: every sample)", model_default=True,
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
