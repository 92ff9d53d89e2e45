"""``whisperforge data ...``: corpus commands, each a thin layer over one library function.

whisperforge data text   --out texts/                     -> pool.build_pool + write_pool
whisperforge data synth  --texts texts/ --hours 1 --out corpus/  -> synth.build_corpus
whisperforge data stats  corpus/test.jsonl                -> stats.manifest_stats
whisperforge data validate corpus/train.jsonl             -> hf.load_utterances
whisperforge data voices                                  -> tts.available_voices
whisperforge data pack corpus/train.jsonl --out packed/   -> packing.write_packs
whisperforge data pad corpus/train.jsonl --out padded/    -> padding.write_padded
whisperforge data combine a.jsonl b/ --out c.jsonl       -> combine.combine
"""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def _csv(values: list[str] | None) -> list[str]:
    """``--voices a,b c`` -> ``[a, b, c]``."""
    return [v for value in values or [] for v in value.split(",") if v]


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` and its subcommands on the main CLI's subparsers."""
    parser = subparsers.add_parser("data", help="speech corpora: text pools, synthesis, manifests")
    sub = parser.add_subparsers(dest="data_command", required=True)
    _add_text(sub)
    _add_synth(sub)
    _add_stats(sub)
    _add_validate(sub)
    _add_voices(sub)
    _add_pack(sub)
    _add_pad(sub)
    _add_combine(sub)
    return parser


def _add_text(sub) -> None:
    p = sub.add_parser("text", help="build a pool of clean sentences split into train/dev/test")
    p.add_argument("--out", required=True, help="output folder: <out>/<language>/<split>.txt")
    p.add_argument("--language", nargs="+", default=["en", "vi"], help="languages (en vi)")
    p.add_argument("--sources", nargs="+", help="text sources (default: all for the language); "
                   "fortunes wordnet conversation kjv vi-basic file:PATH")  # fmt: skip
    p.add_argument("--max-per-source", nargs="+", default=[], metavar="NAME=N",
                   help="cap a source, e.g. kjv=3000")  # fmt: skip
    p.add_argument("--min-words", type=int, default=4)
    p.add_argument("--max-words", type=int, default=35)
    p.add_argument("--max-chars", type=int, default=250)
    p.add_argument("--min-word-count", type=int,
                   help="drop sentences with a word rarer than this in the pool")  # fmt: skip
    p.add_argument("--dev-fraction", type=float, help="share of sentences in dev (en 0.03)")
    p.add_argument("--test-fraction", type=float, help="share of sentences in test (en 0.03)")
    p.set_defaults(func=run_text)


def run_text(args) -> int:
    from whisperforge.data.pool import build_pool, write_pool
    from whisperforge.data.text import TextLimits

    limits = TextLimits(args.min_words, args.max_words, args.max_chars)
    caps = {k: int(v) for k, _, v in (c.partition("=") for c in args.max_per_source)}
    pools = []
    for language in args.language:
        sources = [s for s in args.sources or [] if _source_language(s, language)]
        pool = build_pool(
            language, sources or None, limits, args.dev_fraction, args.test_fraction, caps,
            args.min_word_count,
        )  # fmt: skip
        pools.append(pool)
        counts = ", ".join(f"{k} {len(v)}" for k, v in pool.splits.items())
        print(f"{language}: {len(pool)} sentences ({counts})")
    print(f"wrote {write_pool(pools, args.out, limits)}")
    return 0


def _source_language(name: str, language: str) -> bool:
    from whisperforge.data.sources import SOURCES

    return (
        name.startswith("file:") or SOURCES.get(name) is None or SOURCES[name].language == language
    )


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="synthesise a speech corpus from a text pool")
    p.add_argument("--texts", nargs="+", required=True, help="pool folders or text files")
    p.add_argument("--hours", type=float, required=True, help="total hours over all splits")
    p.add_argument(
        "--voices", nargs="+", help="voices, e.g. flite:slt,piper:joe (default: tts.DEFAULT_VOICES)"
    )
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--held-out-voices", nargs="+",
                   help="voices kept out of train ('none' for none; default: last voice of "
                   "each language)")  # fmt: skip
    p.add_argument("--dev-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument(
        "--rate-range", type=_pair, default=(0.8, 1.0), help="speaking rate, e.g. 0.8,1.0"
    )
    p.add_argument("--pitch-range", type=_pair, default=(-2.0, 2.0), help="semitones, e.g. -2,2")
    p.add_argument("--no-augment", action="store_true", help="no noise/speed/telephone/reverb")
    p.add_argument("--augment-splits", nargs="+", default=["train"], help="splits to augment")
    p.add_argument("--max-jobs", type=int, help="stop after N utterances (resume later)")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus built differently")
    p.set_defaults(func=run_synth)


def run_synth(args) -> int:
    from whisperforge.data.augment import AugmentConfig
    from whisperforge.data.synth import SynthOptions, build_corpus
    from whisperforge.data.tts import DEFAULT_VOICES

    held_out = _csv(args.held_out_voices)
    options = SynthOptions(
        hours=args.hours,
        voices=tuple(_csv(args.voices) or DEFAULT_VOICES),
        seed=args.seed,
        held_out_voices=None if not held_out else tuple(v for v in held_out if v != "none"),
        dev_fraction=args.dev_fraction,
        test_fraction=args.test_fraction,
        rate_range=args.rate_range,
        pitch_range=args.pitch_range,
        augment=None if args.no_augment else AugmentConfig(),
        augment_splits=tuple(args.augment_splits),
    )
    result = build_corpus(
        args.texts, args.out, options, args.workers, args.max_jobs, True, args.overwrite
    )
    status = "complete" if result.complete else "incomplete (run the same command to resume)"
    print(
        f"{args.out}: {result.done_before + result.synthesized}/{result.planned} utterances, "
        f"{status}; {result.synthesized} synthesised in {result.seconds:.1f} s"
    )
    if result.card:
        hours = ", ".join(f"{k} {v['hours']:.3f} h" for k, v in result.card["splits"].items())
        print(f"hours: {hours}; held out: {', '.join(result.card['held_out_voices']) or 'none'}")
    return 0


def _add_source_args(p) -> None:
    p.add_argument(
        "source", help="manifest .jsonl, corpus folder, audiofolder, saved or hub dataset"
    )
    p.add_argument("--split", default="train", help="split of a folder or dataset")
    p.add_argument("--language", help="language when the source does not say")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset")
    p.add_argument("--no-check-audio", action="store_true", help="do not open the audio files")
    p.add_argument("--max-duration", type=float, help="skip utterances longer (seconds)")


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="hours, utterances, voices, languages, duration histogram")
    _add_source_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_stats)


def _load(args):
    from whisperforge.data.hf import load_utterances

    return load_utterances(
        args.source, args.split, not args.no_check_audio, args.max_duration,
        args.streaming, args.language,
    )  # fmt: skip


def run_stats(args) -> int:
    from whisperforge.data.stats import format_stats, manifest_stats

    report = _load(args)
    stats = manifest_stats(report.kept)
    stats["validation"] = report.summary()
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(format_stats(stats, title=str(args.source)))
        print(report.summary())
    return 0


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check rows; list what would be skipped and why")
    _add_source_args(p)
    p.add_argument("--out", help="write the valid rows to this manifest")
    p.add_argument("--report", help="write skipped rows as JSONL (line, reason, row)")
    p.set_defaults(func=run_validate)


def run_validate(args) -> int:
    from whisperforge.data.manifest import write_manifest

    report = _load(args)
    print(report.summary())
    for skipped in report.skipped[:50]:
        print(f"  line {skipped.line}: {skipped.reason}")
    if len(report.skipped) > 50:
        print(f"  ... {len(report.skipped) - 50} more (use --report)")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            for s in report.skipped:
                row = {"line": s.line, "reason": s.reason, "row": s.row}
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    if args.out:
        write_manifest(report.kept, args.out)
    return 1 if report.skipped else 0


def _add_voices(sub) -> None:
    p = sub.add_parser("voices", help="list known TTS voices and whether they are installed")
    p.set_defaults(func=run_voices)


def run_voices(args) -> int:
    from whisperforge.data.tts import DEFAULT_VOICES, VOICES, available_voices, get_engine

    installed = {v.name for v in available_voices()}
    for name, voice in VOICES.items():
        state = "installed" if name in installed else f"missing: {get_engine(voice.engine).install}"
        default = " (default)" if name in DEFAULT_VOICES else ""
        print(f"{name:<20} {voice.language}  {voice.gender:<6} {state}{default}")
    return 0


def _add_writer(sub, name: str, help: str):
    """A subcommand that reads a source and writes audio + ``DIR/<name>.jsonl``."""
    p = sub.add_parser(name, help=help)
    _add_source_args(p)
    p.add_argument("--out", required=True, help="folder for <name>.jsonl and audio/<name>/")
    p.add_argument("--name", help="manifest name (default: the split)")
    return p


def _add_pack(sub) -> None:
    p = _add_writer(sub, "pack", "join consecutive utterances of a speaker into <= 30 s "
                                 "windows (audio + joined text)")  # fmt: skip
    p.add_argument(
        "--seconds",
        type=float,
        default=25.0,
        help="longest window, seconds (default 25; at most 30 unless --recordings)",
    )
    p.add_argument("--gap", type=float, default=0.3, help="silence between utterances, seconds")
    p.add_argument(
        "--recordings", action="store_true",
        help="allow packs longer than 30 s: long recordings for long-form tests",
    )  # fmt: skip
    p.set_defaults(func=run_pack)


def _write_rows(args, desc: str, write):
    """Load the source, run ``write(rows, progress)`` under a progress bar, print what it
    did and what it left out; returns its report, or None (nothing written) when the source
    has no usable rows."""
    import sys

    from whisperforge.progress import progress_bar

    report = _load(args)
    if report.skipped:
        print(report.summary())
    if not report.kept:
        print(f"error: no usable utterances in {args.source}; nothing written", file=sys.stderr)
        return None
    with progress_bar(len(report.kept), unit="utt", desc=desc) as bar:
        result = write(report.kept, bar.update)
    print(result.summary())
    for row in result.left_out[:20]:
        print(f"  left out {row['id'] or row['audio']}: {row['reason']}")
    return result


def run_pack(args) -> int:
    from whisperforge.data.packing import write_packs

    def write(rows, progress):
        name = args.name or args.split
        return write_packs(rows, args.out, name, args.seconds, args.gap, progress, args.recordings)

    result = _write_rows(args, "pack", write)
    return 0 if result is not None and result.packs else 1


def _add_pad(sub) -> None:
    p = _add_writer(sub, "pad", "copy utterances with seeded silence before and after each, "
                                "as speech sits in a recording")  # fmt: skip
    around = "seconds of silence {} each clip, MIN,MAX (default {})"
    p.add_argument("--lead", type=_pair, default=(0.5, 10), help=around.format("before", "0.5,10"))
    p.add_argument("--trail", type=_pair, default=(0.0, 2.0), help=around.format("after", "0,2"))
    longest = "longest padded clip, s (padding shrinks to fit; 0: no limit; default 30)"
    p.add_argument("--max-seconds", type=float, default=30.0, help=longest)
    p.add_argument("--seed", type=int, default=0)
    zeros = "pad with digital silence instead of each clip's noise floor"
    p.add_argument("--zeros", action="store_true", help=zeros)
    p.set_defaults(func=run_pad)


def run_pad(args) -> int:
    from whisperforge.data.padding import write_padded

    def write(rows, progress):
        name, limit = args.name or args.split, args.max_seconds or None
        return write_padded(rows, args.out, name, args.lead, args.trail, limit, args.seed,
                            not args.zeros, progress)  # fmt: skip

    result = _write_rows(args, "pad", write)
    return 0 if result is not None and result.written + result.reused else 1


def _add_combine(sub) -> None:
    p = sub.add_parser(
        "combine", help="join manifests into one; drop sentences other corpora hold",
        description="Join the rows of SOURCES in order into one manifest (audio paths relative "
        "to it). --exclude-texts drops rows whose sentence (case and whitespace folded) is in "
        "the given manifests or corpus folders (every split): a held-out set none of whose "
        "sentences was trained, tuned or tested on before. --unique-texts keeps the first "
        "rendering of each sentence.",
    )  # fmt: skip
    p.add_argument("sources", nargs="+", help="manifests, corpus folders or datasets, in order")
    p.add_argument("--out", required=True, help="the manifest to write (.jsonl)")
    p.add_argument("--split", default="test", help="split of a folder or dataset (test)")
    p.add_argument(
        "--exclude-texts", nargs="+", default=[], metavar="MANIFEST_OR_FOLDER",
        help="drop rows whose sentence is in these manifests (a folder: all its .jsonl files)",
    )  # fmt: skip
    p.add_argument("--unique-texts", action="store_true", help="keep one row per sentence")
    p.add_argument("--no-check-audio", action="store_true", help="do not open the audio files")
    p.set_defaults(func=run_combine)


def run_combine(args) -> int:
    import sys

    from whisperforge.data.combine import combine, texts_in
    from whisperforge.data.hf import load_utterances
    from whisperforge.data.manifest import write_manifest

    exclude = texts_in(args.exclude_texts)
    sources = []
    for source in args.sources:
        report = load_utterances(source, args.split, not args.no_check_audio)
        if report.skipped:
            print(f"{source}: {report.summary()}")
        sources.append((source, report.kept))
    rows, report = combine(sources, exclude, args.unique_texts)
    print(report.summary())
    if not rows:
        print("error: no rows left; nothing written", file=sys.stderr)
        return 1
    print(f"wrote {write_manifest(rows, args.out)}")
    return 0
