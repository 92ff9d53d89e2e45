"""Evaluate a model on a manifest: corpus WER/CER, error rates, hallucination, throughput.

The protocol (``docs/evaluation.md``): corpus-level rates (total errors over total reference
words), Whisper's English normaliser for English and the basic normaliser otherwise, the
count of repeated word 5-grams in hypotheses (a hallucination indicator), the words that echo
the span before them where the reference does not (a small decoder's short loops), and
throughput as seconds of audio per wall-clock second of the whole loop (decoding audio files
included), with the thread count and batch size recorded next to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from whisperforge.fileio import append_lines, resume_jsonl
from whisperforge.metrics import char_errors, echoed_words, repeated_ngram_count, word_errors
from whisperforge.transcribe import Transcriber

logger = logging.getLogger(__name__)


@dataclass
class EvalItem:
    """One utterance to evaluate: an audio path (or array) and its reference text."""

    audio: object
    text: str
    language: str | None = None
    speaker: str | None = None
    duration: float | None = None
    id: str | None = None


def _group_rates(rows: list[dict]) -> dict:
    words = sum(r["ref_words"] for r in rows)
    chars = sum(r["ref_chars"] for r in rows)
    word_err = sum(r["word_errors"] for r in rows)
    char_err = sum(r["char_errors"] for r in rows)
    return {
        "utterances": len(rows),
        "audio_seconds": round(sum(r["duration"] for r in rows), 3),
        "wer": word_err / words if words else 0.0,
        "cer": char_err / chars if chars else 0.0,
    }


def summarize(rows: list[dict]) -> dict:
    """Corpus totals over per-utterance rows (errors summed, then divided)."""
    totals = defaultdict(int)
    for r in rows:
        for key in ("ref_words", "substitutions", "deletions", "insertions", "repeated_5grams"):
            totals[key] += r[key]
        if "echoed_words" not in r:  # a row journaled before the count existed
            r["echoed_words"] = echoed_words(r["reference"], r["hypothesis"], r["language"])
        totals["echoed_words"] += r["echoed_words"]
    words = totals["ref_words"]
    summary = _group_rates(rows)
    summary.update(
        substitution_rate=totals["substitutions"] / words if words else 0.0,
        deletion_rate=totals["deletions"] / words if words else 0.0,
        insertion_rate=totals["insertions"] / words if words else 0.0,
        repeated_5grams=totals["repeated_5grams"],
        echoed_words=totals["echoed_words"],
        ref_words=words,
    )
    return summary


def score_utterance(item: EvalItem, hypothesis: str, language: str, duration: float) -> dict:
    """The per-utterance row of the report: word and character error counts and rates."""
    words = word_errors(item.text, hypothesis, language=language)
    chars = char_errors(item.text, hypothesis, language=language)
    return {
        "id": item.id,
        "audio": str(item.audio) if isinstance(item.audio, (str, Path)) else "<array>",
        "speaker": item.speaker,
        "language": language,
        "duration": duration,
        "reference": item.text,
        "hypothesis": hypothesis,
        "ref_words": words.ref_words,
        "word_errors": words.errors,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "ref_chars": chars.ref_words,
        "char_errors": chars.errors,
        "wer": words.wer,
        "cer": chars.wer,
        "repeated_5grams": repeated_ngram_count(hypothesis, 5, language=language),
        "echoed_words": echoed_words(item.text, hypothesis, language=language),
    }


def evaluate(
    transcriber: Transcriber,
    items: Iterable[EvalItem],
    progress=None,
    journal: str | Path | None = None,
    **options,
) -> dict:
    """Transcribe ``items`` and score them; returns the report (see module docstring).

    ``progress`` is called once per finished utterance with its row (or error dict). With
    ``journal`` (a JSONL path) each finished utterance is appended to it as it finishes, and
    a run that finds a journal of the same model, options and items takes the utterances it
    holds instead of transcribing them again (``report["resumed"]`` counts them; their wall
    time counts in the throughput; files that failed are tried again): a killed evaluation
    resumes. The caller removes the journal once the report is written.
    """
    items = list(items)
    keys = item_keys(items)
    header = {
        "journal": "whisperforge evaluate",
        "model": transcriber.bundle.name,
        "options": json.loads(json.dumps(options, default=str)),
        "items": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
    }
    lines, handle = open_journal(journal, header)
    done = {line["key"]: line for line in lines if "row" in line}  # failed: tried again
    earlier = max((line["wall"] for line in lines), default=0.0)
    start = time.perf_counter()
    for key in keys:
        if key in done and progress:
            progress(done[key]["row"])
    todo = [(key, item) for key, item in zip(keys, items) if key not in done]
    try:
        results = transcriber.transcribe_batch([i.audio for _, i in todo], **options)
        for (key, item), result in zip(todo, results):
            if result.error is not None:
                entry = {"failed": {"id": item.id, "audio": str(item.audio), "error": result.error}}
            else:
                language = item.language or options.get("language") or result.info.language
                row = score_utterance(item, result.text, language, result.info.duration)
                entry = {"row": row}
            done[key] = {"key": key, "wall": earlier + time.perf_counter() - start, **entry}
            if handle is not None:
                append_lines(handle, [json.dumps(done[key], ensure_ascii=False, default=str)])
            if progress:
                progress(entry.get("row") or entry["failed"])
    finally:
        if handle is not None:
            handle.close()
    rows = [done[key]["row"] for key in keys if "row" in done[key]]
    failed = [done[key]["failed"] for key in keys if "failed" in done[key]]
    wall = earlier + time.perf_counter() - start
    report = summarize(rows)
    audio = report["audio_seconds"]
    report.update(
        model=transcriber.bundle.name,
        wall_seconds=round(wall, 3),
        throughput=audio / wall if wall > 0 else 0.0,
        failed=failed,
        by_speaker=rates_by(rows, "speaker"),
        by_language=rates_by(rows, "language"),
        options=options,
        audio_context=options.get("audio_context") or transcriber.bundle.audio_context,
        vad=transcriber.uses_vad(options.get("vad")),
        condition_on_previous_text=transcriber.prompts_previous_text(
            options.get("condition_on_previous_text")
        ),
        chunking=chunking_of(transcriber, options),
        encoder_dtype=transcriber.session.encoder_dtype_name,
        vocab_screen=transcriber.session.screen is not None,
        machine=machine_info(),
        per_utterance=rows,
        resumed=len(items) - len(todo),
    )
    return report


def chunking_of(transcriber, options: dict) -> dict:
    """The windows a run's long-form mode used: chunked, their length and shared context;
    segmented, the longest window (no shared context: ``stride_length`` None)."""
    chunk, stride = transcriber.chunking(options.get("chunk_length"), options.get("stride_length"))
    if options.get("long_form") == "segmented":
        stride = None
    return {"chunk_length": chunk, "stride_length": stride}


def item_keys(items: list[EvalItem]) -> list[str]:
    """A key per item for a journal: its place and its id (or audio)."""
    return [f"{n}:{item.id or item.audio}" for n, item in enumerate(items)]


def open_journal(journal: str | Path | None, header: dict) -> tuple[list[dict], object]:
    """The lines a killed run left in ``journal`` after its ``header`` (none when the
    header differs: another model, other options or utterances, or when a line other than
    a cut-off last one is damaged; the journal then starts again) and a handle appending
    to it; ``([], None)`` without a journal."""
    if journal is None:
        return [], None
    journal = Path(journal)
    try:
        lines = resume_jsonl(journal) if journal.exists() else []
    except ValueError as error:  # damaged beyond a cut-off last line: only a cache
        logger.warning("%s; starting the journal again", error)
        lines = []
    if not lines or lines[0] != header:
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.write_text(json.dumps(header) + "\n", encoding="utf-8")
        lines = [header]
    return lines[1:], open(journal, "a", encoding="utf-8")


def rates_by(rows: list[dict], key: str) -> dict:
    """WER/CER of the rows grouped by ``key`` (``speaker``, ``language``), None left out."""
    groups = defaultdict(list)
    for r in rows:
        if r[key] is not None:
            groups[r[key]].append(r)
    return {name: _group_rates(group) for name, group in sorted(groups.items())}


def machine_info() -> dict:
    """Where a speed figure was measured: CPU, threads, library versions."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load_report(path: str | Path) -> dict:
    """An evaluation report (``write_report``) with ``per_utterance`` rows; ValueError
    naming what is wrong with anything else (unreadable, not JSON, no rows)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the report ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON report ({error})") from None
    rows = report.get("per_utterance") if isinstance(report, dict) else None
    if not rows:
        raise ValueError(
            f"{path}: no per_utterance rows (write one with `whisperforge evaluate --report`)"
        )
    return report


def write_report(report: dict, path: str | Path) -> None:
    """Write the report as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def usable_items(
    source: str | Path, split: str = "test", limit: int = 0
) -> tuple[list[EvalItem], list[dict]]:
    """``items_from_source`` (the first ``limit`` items when given) for a command: each
    skipped row is reported on stderr, and a source with no usable row is a ManifestError."""
    import sys

    from whisperforge.data.manifest import ManifestError

    items, skipped = items_from_source(source, split=split)
    for row in skipped:
        print(f"skipped line {row['line']}: {row['reason']}", file=sys.stderr)
    items = items[:limit] if limit else items
    if not items:
        raise ManifestError(f"{source}: no usable utterances ({len(skipped)} skipped)")
    return items, skipped


def items_from_source(source: str | Path, split: str = "test") -> tuple[list[EvalItem], list[dict]]:
    """Utterances of a manifest (or corpus folder, audiofolder, HF dataset) and the rows
    skipped, each with its reason."""
    from whisperforge.audio import load_audio
    from whisperforge.data.hf import load_utterances

    report = load_utterances(source, split=split)
    items = []
    for u in report.kept:
        audio = u.audio if u.audio is not None else load_audio(u.array, u.sampling_rate)
        utt_id = u.extra.get("id") or (Path(u.audio).stem if u.audio else None)
        items.append(EvalItem(audio, u.text, u.language, u.voice, u.duration, utt_id))
    skipped = [{"line": s.line, "reason": s.reason} for s in report.skipped]
    return items, skipped
