"""``whisperforge tokens``: speech tokenizers (encode, transcribe, init, grow, merge,
average, refine, save).

Each command is a thin layer over ``whisperforge.tokens`` and ``whisperforge.models.vq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from whisperforge.models.zoo import DEFAULT_TOKENIZER

FORMATS = ("ids", "json", "llm")


def _format_line(path: str, ids: list[int], seconds: float, fmt: str,
                 speech_seconds: float | None = None) -> str:  # fmt: skip
    from whisperforge.tokens import to_llm_text

    if fmt == "json":
        row = {"audio": path, "duration": round(seconds, 3), "tokens": ids}
        if speech_seconds is not None:
            row["duration_after_vad"] = round(speech_seconds, 3)
        return json.dumps(row)
    if fmt == "llm":
        return to_llm_text(ids)
    return " ".join(map(str, ids))


def _load(args):
    import torch

    from whisperforge.cli import _quiet_transformers
    from whisperforge.tokens import SpeechTokenizer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    _quiet_transformers()
    return SpeechTokenizer.load(
        args.model, device=args.device, encoder_dtype=getattr(args, "encoder_dtype", None)
    )


def cmd_encode(args: argparse.Namespace) -> int:
    from whisperforge.audio import SAMPLE_RATE, AudioError, audio_files, input_source, load_audio
    from whisperforge.progress import progress_bar
    from whisperforge.vad import speech_only

    if args.manifest is not None:
        if args.files:
            raise ValueError("give audio files or --manifest, not both")
        return _encode_manifest(args)
    if not args.files:
        raise ValueError("give audio files to encode, or --manifest with --output")
    vad = resolve_vad(args)
    tokenizer = _load(args)
    decoded, failures = [], 0
    files = audio_files(args.files)
    for path in files:
        try:
            audio = load_audio(input_source(path))
            decoded.append((path, len(audio), speech_only(audio, vad)))
        except AudioError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
    seconds = sum(len(kept) for *_, kept in decoded) / SAMPLE_RATE
    bar = progress_bar(round(seconds, 1), unit="s", enabled=not args.quiet)
    ids = tokenizer.tokenize_batch([kept for *_, kept in decoded], batch_size=args.batch_size,
                                   progress=bar.update, vad=False)  # VAD ran above  # fmt: skip
    bar.close()
    lines = [
        _format_line(path, row, n / SAMPLE_RATE, args.format, _kept_seconds(kept, vad))
        for (path, n, kept), row in zip(decoded, ids)
    ]
    _write(lines, args.output)
    if failures:
        print(f"{failures} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def resolve_vad(args: argparse.Namespace):
    """The ``VadOptions`` of ``--vad``/``--no-vad``, or None; neither flag: the tokenizer's
    default (``"vad"`` in its config), skipped with a warning where silero-vad is missing."""
    from whisperforge.cli import vad_options
    from whisperforge.tokens import default_vad
    from whisperforge.vad import default_on

    if args.vad is None:
        args.vad = default_on(default_vad(args.model), str(args.model), "tokeniz")
    return vad_options(args)


def _kept_seconds(kept, vad) -> float | None:
    """Seconds of audio VAD kept (``duration_after_vad``), None without VAD."""
    from whisperforge.audio import SAMPLE_RATE

    return None if vad is None else len(kept) / SAMPLE_RATE


def _manifest_row(index: int, item, ids: list[int], fmt: str,
                  speech_seconds: float | None) -> str:  # fmt: skip
    from whisperforge.tokens import to_llm_text

    audio = item.audio if isinstance(item.audio, (str, Path)) else None
    row = {"index": index, "id": item.id, "audio": None if audio is None else str(audio),
           "text": item.text, "language": item.language, "speaker": item.speaker,
           "duration": item.duration, "tokens": ids}  # fmt: skip
    if speech_seconds is not None:
        row["duration_after_vad"] = round(speech_seconds, 3)
    if fmt == "llm":
        row["llm"] = to_llm_text(ids)
    return json.dumps(row, ensure_ascii=False)


def _encode_manifest(args: argparse.Namespace) -> int:
    """Tokenize every row of a manifest into a JSON-lines file next to its text, resumably:
    rows already in ``--output`` are skipped, a row cut short by a kill is dropped and done
    again, and audio that cannot be decoded is reported and retried on the next run. With
    ``--vad`` each row records ``duration_after_vad``; a file written with it is resumed only
    with it, one written without only without."""
    from whisperforge.audio import SAMPLE_RATE, AudioError, load_audio
    from whisperforge.fileio import append_lines, resume_jsonl
    from whisperforge.progress import progress_bar
    from whisperforge.recipes.evaluate import usable_items
    from whisperforge.vad import speech_only

    if args.output is None:
        raise ValueError("--manifest needs --output (a JSON-lines file; running the same "
                         "command again resumes it)")  # fmt: skip
    vad = resolve_vad(args)
    items, _ = usable_items(args.manifest, split=args.split)
    done = resume_jsonl(args.output)
    for row in done:
        index = row.get("index")
        if not isinstance(index, int) or index >= len(items) or row.get("id") != items[index].id:
            raise ValueError(
                f"{args.output} holds row {index} ({row.get('id')!r}), which is not that row "
                f"of {args.manifest}: the manifest changed; write to a new --output"
            )
        if ("duration_after_vad" in row) != (vad is not None):
            written = "with" if "duration_after_vad" in row else "without"
            raise ValueError(f"{args.output} was written {written} VAD; run it the same "
                             "way (--vad or --no-vad), or write to a new --output")  # fmt: skip
    finished = {row["index"] for row in done}
    todo = [i for i in range(len(items)) if i not in finished]
    if finished:
        print(f"resuming {args.output}: {len(finished)} of {len(items)} rows already encoded",
              file=sys.stderr)  # fmt: skip
    tokenizer = _load(args)
    seconds = sum(items[i].duration or 0.0 for i in todo)
    bar = progress_bar(round(seconds, 1), unit="s", enabled=not args.quiet)
    failures = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), args.batch_size):
            batch = []
            for index in todo[start : start + args.batch_size]:
                try:
                    audio = load_audio(items[index].audio)
                    batch.append((index, len(audio), speech_only(audio, vad)))
                except AudioError as error:
                    failures += 1
                    print(f"error: row {index} ({items[index].id}): {error}", file=sys.stderr)
            ids = tokenizer.tokenize_batch([k for *_, k in batch], batch_size=args.batch_size,
                                           vad=False)  # VAD ran above  # fmt: skip
            lines = [
                _manifest_row(i, items[i], row, args.format, _kept_seconds(kept, vad))
                for (i, _, kept), row in zip(batch, ids)
            ]
            append_lines(handle, lines)
            bar.update(sum(n for _, n, _ in batch) / SAMPLE_RATE)
    bar.close()
    total = len(finished) + len(todo) - failures
    print(f"{args.output}: {total} of {len(items)} rows encoded"
          + (f", {failures} failed (run again to retry them)" if failures else ""),
          file=sys.stderr)  # fmt: skip
    return 1 if failures else 0


def _write(lines: list[str], output: Path | None) -> None:
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)


def parse_token_lines(text: str, source: str = "<stdin>") -> list[list[int]]:
    """One id sequence per non-empty line: ``tokens encode`` output in any format (space-
    separated ids, JSON lines with a ``tokens`` list, or LLM sound-token text)."""
    from whisperforge.tokens import SOUND_START, from_llm_text

    sequences = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        try:
            if not line:
                continue
            if line.startswith("{"):
                sequences.append([int(i) for i in json.loads(line)["tokens"]])
            elif line.startswith(SOUND_START):
                sequences.append(from_llm_text(line))
            else:
                sequences.append([int(i) for i in line.split()])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{source}, line {number}: not a token sequence ({error}); expected ids, a "
                "JSON line with 'tokens', or <|sound_start|>...<|sound_end|>"
            ) from error
    return sequences


def cmd_transcribe(args: argparse.Namespace) -> int:
    from whisperforge.progress import progress_bar

    sequences = []
    for name in args.inputs:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
        sequences.extend(parse_token_lines(text, name))
    tokenizer = _load(args)
    windows = sum(len(tokenizer.token_windows(len(s))) for s in sequences if s)
    bar = progress_bar(windows, unit="window", enabled=not args.quiet)
    texts = tokenizer.transcribe_tokens(sequences, language=args.language,
                                        batch_size=args.batch_size, progress=bar.update,
                                        fallback=args.fallback)  # fmt: skip
    bar.close()
    _write(texts, args.output)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch
    from transformers import WhisperConfig

    from whisperforge.models.loading import resolve_model
    from whisperforge.models.vq import VQ_PRESETS, preset_for_width
    from whisperforge.tokens import save_bottleneck

    width = WhisperConfig.from_pretrained(resolve_model(args.teacher)).d_model
    preset = args.preset or preset_for_width(width)
    torch.manual_seed(args.seed)
    overrides = {"codebook_size": args.codebook_size, "codebook_dim": args.codebook_dim}
    bottleneck = VQ_PRESETS[preset](**overrides)
    if bottleneck.config.d_model != width:
        raise ValueError(f"preset {preset!r} has width {bottleneck.config.d_model}, "
                         f"but {args.teacher} has {width}")  # fmt: skip
    out = save_bottleneck(bottleneck, args.out, args.teacher, preset)
    n_params = sum(p.numel() for p in bottleneck.parameters()) / 1e6
    print(f"untrained {preset} bottleneck for {args.teacher}: {n_params:.1f}M parameters, "
          f"{bottleneck.config.n_ids} ids -> {out}")  # fmt: skip
    return 0


def cmd_grow(args: argparse.Namespace) -> int:
    import torch

    from whisperforge.models.vq import grow_codebook
    from whisperforge.tokens import load_bottleneck, save_bottleneck

    small, meta = load_bottleneck(args.source)
    generator = torch.Generator().manual_seed(args.seed)
    big = grow_codebook(small, args.codebook_size, noise=args.noise, generator=generator)
    out = save_bottleneck(big, args.out, meta["teacher"], meta.get("preset"))
    print(f"{small.config.codebook_size} -> {args.codebook_size} codes (tiled, noise "
          f"{args.noise}) -> {out}")  # fmt: skip
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from whisperforge.models.vq import merge_codebooks
    from whisperforge.tokens import load_bottleneck, save_bottleneck

    large, meta = load_bottleneck(args.large)
    small, _ = load_bottleneck(args.small)
    merged = merge_codebooks(large, small)
    out = save_bottleneck(merged, args.out, meta["teacher"], meta.get("preset"), str(args.small))
    c = merged.config
    print(f"merged: ids 0..{c.mask_id - 1} from {args.large}, mask {c.mask_id}, "
          f"{c.mask_id + 1}..{c.n_ids - 1} from {args.small} -> {out}")  # fmt: skip
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from whisperforge.models.vq import (
        DRIFTED_BELOW,
        average_bottlenecks,
        code_agreement,
        reseeded_codes,
    )
    from whisperforge.tokens import load_bottleneck

    loaded = [load_bottleneck(source) for source in args.sources]
    teachers = {meta["teacher"] for _, meta in loaded}
    if len(teachers) > 1:
        raise ValueError(f"the tokenizers sit in different Whisper models: {sorted(teachers)}")
    models = [model for model, _ in loaded]
    averaged = average_bottlenecks(models, args.weights, args.drifted)
    out = _save_as(averaged, loaded[0][1], args)
    weights = args.weights or [1.0] * len(models)
    total = sum(weights)
    last = args.sources[-1]
    for source, model, weight in zip(args.sources[:-1], models[:-1], weights[:-1]):
        agreement = code_agreement(models[-1], model)
        moved = int((agreement < DRIFTED_BELOW).sum())
        print(f"{source}: weight {weight / total:.3f}, codes against {last}: median cosine "
              f"{agreement.median():.3f}, {moved} below {DRIFTED_BELOW}")  # fmt: skip
    print(f"{last}: weight {weights[-1] / total:.3f} (the codes above compare with it)")
    if args.drifted == "last":
        print(f"{int(reseeded_codes(models).sum())} codes re-seeded in between: taken from {last}")
    print(f"averaged {len(models)} tokenizers -> {out}")
    return 0


def _code_space_of(encoder, bottleneck, files: list[str], failed: list) -> tuple:
    """Code-space vectors of a batch of files (``models.vq.code_space``) and the seconds of
    audio they hold; a file that cannot be read goes to ``failed`` and the rest go on."""
    import torch

    from whisperforge.audio import N_SAMPLES_PER_TOKEN, SAMPLE_RATE, AudioError
    from whisperforge.models.vq import code_space, frame_mask

    try:
        lengths, states = encoder.samples(files), encoder(files)
    except (AudioError, OSError):
        if len(files) == 1:
            failed.append(files[0])
            return None, 0.0
        parts = [_code_space_of(encoder, bottleneck, [f], failed) for f in files]
        kept = [v for v, _ in parts if v is not None]
        return (torch.cat(kept) if kept else None), sum(sec for _, sec in parts)
    lengths = [min(n, states.shape[1] * N_SAMPLES_PER_TOKEN) for n in lengths]
    mask = frame_mask(torch.tensor(lengths, device=states.device), states.shape[1])
    return code_space(bottleneck, states, mask).cpu(), sum(lengths) / SAMPLE_RATE


def cmd_refine(args: argparse.Namespace) -> int:
    import random

    import torch

    from whisperforge.cli import _quiet_transformers
    from whisperforge.models import load_model
    from whisperforge.models.vq import refine_codebook
    from whisperforge.progress import progress_bar
    from whisperforge.tokens import load_bottleneck
    from whisperforge.training.encoder_cache import (
        EncoderCache,
        SharedEncoder,
        cache_fingerprint,
        manifest_audio,
    )

    if args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, not {args.iterations}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    _quiet_transformers()
    bottleneck, meta = load_bottleneck(args.source)
    files, skipped = manifest_audio(args.manifest)
    for reason, count in sorted(skipped.items()):
        print(f"skipped {count} row(s): {reason}", file=sys.stderr)
    if args.limit and args.limit < len(files):
        picked = sorted(random.Random(args.seed).sample(range(len(files)), args.limit))
        files = [files[i] for i in picked]
    if not files:
        raise ValueError("the manifests hold no rows of one 30 s window or less to refine on")
    whisper = load_model(meta["teacher"], device=args.device)
    cache = EncoderCache(args.cache_dir, cache_fingerprint(whisper)) if args.cache_dir else None
    encoder = SharedEncoder(whisper.model.model.encoder, whisper.n_mels, whisper.device, cache)
    bottleneck = bottleneck.to(whisper.device).eval()
    vectors, failed, seconds = [], [], 0.0
    bar = progress_bar(len(files), unit="file", enabled=not args.quiet)
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        found, batch_seconds = _code_space_of(encoder, bottleneck, batch, failed)
        if found is not None:
            vectors.append(found)
        seconds += batch_seconds
        bar.update(len(batch))
    bar.close()
    for path in failed:
        print(f"error: {path}: cannot be read; left out", file=sys.stderr)
    if not vectors:
        raise ValueError(f"none of the {len(files)} audio files could be read")
    result = refine_codebook(bottleneck.cpu(), torch.cat(vectors), args.iterations)
    out = _save_as(bottleneck, meta, args)
    cosine = ""
    if bottleneck.config.use_cosine_sim:
        before, after = (1 - e / 2 for e in (result.error_before, result.error_after))
        cosine = f" (mean cosine {before:.4f} -> {after:.4f})"
    read = len(files) - len(failed)
    amount = f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"
    print(f"{read} file{'s' * (read != 1)} ({amount}), {result.vectors} vectors: "
          f"mean squared distance to the nearest code {result.error_before:.4f} -> "
          f"{result.error_after:.4f}{cosine} after {result.iterations} iteration(s); "
          f"{result.codes_moved} of {bottleneck.config.n_searchable} codes moved, "
          f"{100 * result.ids_changed:.1f} % of the ids change -> {out}")  # fmt: skip
    if failed:
        print(f"{len(failed)} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _save_as(bottleneck, meta: dict, args: argparse.Namespace, teacher: str | None = None):
    """Write ``bottleneck`` to ``args.out`` in ``args.dtype`` with the metadata of the
    tokenizer ``meta`` describes (teacher, preset, merged parts; VAD unless ``args.vad``)."""
    import torch

    from whisperforge.tokens import save_bottleneck

    parts = meta.get("codebook", {}).get("parts", [])
    merged_from = next((p.get("source") for p in parts if p["name"] == "merged"), None)
    vad = bool(meta.get("vad", False)) if args.vad is None else args.vad
    return save_bottleneck(bottleneck, args.out, teacher or meta["teacher"], meta.get("preset"),
                           merged_from, getattr(torch, args.dtype), vad=vad)  # fmt: skip


def cmd_save(args: argparse.Namespace) -> int:
    from whisperforge.tokens import load_bottleneck, tokenizer_weights

    bottleneck, meta = load_bottleneck(args.source)
    out = _save_as(bottleneck, meta, args, args.teacher)
    before = tokenizer_weights(args.source).stat().st_size
    after = (out / "speech_tokenizer.safetensors").stat().st_size
    print(f"{args.source} -> {out} ({args.dtype}, {before / 1e6:.1f} -> {after / 1e6:.1f} MB)")
    return 0


def add_encoder_dtype(p: argparse.ArgumentParser) -> None:
    """``--encoder-dtype`` of the commands that run the Whisper encoder on audio."""
    from whisperforge.models.presets import ENCODER_DTYPES

    p.add_argument(
        "--encoder-dtype", choices=ENCODER_DTYPES, default=None,
        help="precision of the Whisper encoder (default: the model's, float32); bfloat16 is "
        "faster on CPUs with bf16 instructions, a few codes may differ (docs/tokens.md)",
    )  # fmt: skip


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_TOKENIZER,
        help=f"speech tokenizer folder or shipped name (default {DEFAULT_TOKENIZER})",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--output", type=Path, default=None, help="write here instead of stdout")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _copy_options(p: argparse.ArgumentParser, dtype: str, vad_from: str) -> None:
    """``--out``, ``--dtype`` and ``--vad`` of the commands that write a tokenizer folder."""
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=dtype)
    p.add_argument(
        "--vad", action=argparse.BooleanOptionalAction, default=None,
        help="the result tokenizes only the speech Silero VAD finds unless told otherwise "
        f"(\"vad\": true in its config); default: as {vad_from}",
    )  # fmt: skip


def add_parser(subparsers) -> None:
    from whisperforge.cli import add_vad_arguments

    tokens = subparsers.add_parser(
        "tokens", help="speech tokens: audio -> discrete ids (25/s) -> text, for LLMs"
    )
    sub = tokens.add_subparsers(dest="tokens_command", required=True)

    p = sub.add_parser(
        "encode", help="audio files (or a manifest's rows) -> speech token ids, one line each"
    )
    p.add_argument(
        "files",
        nargs="*",
        help="audio files (any format load_audio reads) or folders of them; - reads one from "
        "standard input",
    )
    p.add_argument(
        "--manifest", default=None,
        help="encode every row of this JSONL manifest, corpus folder, audiofolder or HF "
        "dataset instead: JSON lines with the row's text and its tokens to --output, resumable",
    )  # fmt: skip
    p.add_argument("--split", default="train", help="split of a corpus folder or dataset")
    p.add_argument(
        "--format", choices=FORMATS, default="ids",
        help="ids: space-separated; json: JSON lines; llm: <|sound_0123|> text",
    )  # fmt: skip
    add_encoder_dtype(p)
    add_vad_arguments(
        p, "tokenize only the speech voice activity detection (Silero VAD) finds, its "
        "stretches joined: no ids for 2 s or more of silence before, after or between them "
        "(default: the tokenizer's; whisper-vq-base uses it, as it misreads speech that "
        "starts seconds into a window; docs/tokens.md); --no-vad tokenizes every sample",
        model_default=True,
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "transcribe", help="speech token ids -> text via the Whisper decoder",
        description="Decode speech token ids to text. A sequence of up to 750 ids (30 s) is "
        "one window; a longer one is decoded in overlapping 20 s windows merged where they "
        "agree (docs/tokens.md, Long recordings).",
    )  # fmt: skip
    p.add_argument(
        "inputs", nargs="+", help="files of `tokens encode` lines (any format); - = stdin"
    )
    p.add_argument("--language", default=None, help="language code; default: detect")
    p.add_argument(
        "--fallback", action=argparse.BooleanOptionalAction, default=True,
        help="decode a too repetitive or too unlikely window again at rising temperatures, "
        "as transcribe does (default); --no-fallback: greedy only",
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("init", help="a new, untrained bottleneck for a Whisper model")
    p.add_argument("--teacher", default="whisper-base", help="Whisper model reference")
    p.add_argument(
        "--preset", default=None, help="tiny/base/small/medium/large-v3; default: by width"
    )
    p.add_argument("--codebook-size", type=int, default=2048)
    p.add_argument("--codebook-dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("grow", help="a larger codebook tiled (with noise) from a trained one")
    p.add_argument("source", help="trained speech tokenizer (folder or name)")
    p.add_argument("--codebook-size", type=int, required=True)
    p.add_argument("--noise", type=float, default=0.01, help="std of the noise, code space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_grow)

    p = sub.add_parser("merge", help="codes + mask of LARGE, then the codes of SMALL")
    p.add_argument("large", help="the grown, trained tokenizer")
    p.add_argument("small", help="the tokenizer it was grown from")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "average", help="the weighted average of tokenizers trained from one start",
        description="Average the weights of speech tokenizers that share a start (checkpoints "
        "of one run, or a tokenizer and a continuation of it): every weight, and the codebook "
        "code by code. Tokenizers trained apart have unrelated codes; the command prints how "
        "far each one's codes are from the last's (docs/tokens.md, *Averaging*).",
    )  # fmt: skip
    p.add_argument("sources", nargs="+", help="speech tokenizers (folders, names or training "
                   "checkpoints RUN/checkpoints/step-N), 2 or more, oldest first")  # fmt: skip
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per tokenizer (default: equal)")  # fmt: skip
    p.add_argument("--drifted", choices=("last", "mean"), default="last",
                   help="codes re-seeded in between (cosine to the last source's below 0.5): "
                   "take the last source's (default) or average them too")  # fmt: skip
    _copy_options(p, "float32", "the first source")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "refine", help="move each code to the mean of the training vectors it stands for",
        description="One or more k-means (Lloyd) steps on a trained tokenizer's codebook: the "
        "audio of the manifests goes through the Whisper encoder and the bottleneck up to the "
        "codebook, and each code moves to the mean of the vectors nearest to it. Training "
        "leaves the codes moving averages of the last few batches; this puts them at the "
        "means of the training data they quantize (docs/tokens.md, *Refining the codebook*). "
        "Every other weight stays; ids change where speech now lies nearer another code.",
    )  # fmt: skip
    p.add_argument("source", help="speech tokenizer (folder, name or RUN/checkpoints/step-N)")
    p.add_argument("--manifest", nargs="+", required=True,
                   help="JSONL manifests of training audio (rows of at most 30 s)")  # fmt: skip
    p.add_argument("--iterations", type=int, default=1, help="Lloyd steps (default 1)")
    p.add_argument("--limit", type=int, default=0,
                   help="use N audio files drawn at random (--seed) instead of all")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="encoder-state cache (the training configs' encoder_cache): "
                   "read, and filled with what is not there yet")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="30 s windows per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _copy_options(p, "float32", "the source")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("save", help="a copy of a tokenizer, e.g. in float16 (half the size)")
    p.add_argument("source", help="speech tokenizer (folder, name or RUN/checkpoints/step-N)")
    _copy_options(p, "float16", "the source")
    p.add_argument("--teacher", default=None, help="Whisper reference to store instead")
    p.set_defaults(func=cmd_save)
