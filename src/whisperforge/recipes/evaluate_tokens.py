"""Evaluate a speech tokenizer: the WER of text decoded from its tokens next to the WER of
the continuous Whisper model it sits in, with the same decoding.

Each recording is cut into consecutive 30 s windows (the tokenizer's own convention); the
Whisper encoder runs once per window and its states feed the bottleneck, whose ids are the
recording's tokens. A recording of at most 30 s is one window, and both paths decode that
window: the encoder states go to the decoder directly (the teacher) and through the ids and
back (the tokens), greedily without timestamps (or with the options given). A longer one is
read as a user reads it: its ids by ``SpeechTokenizer.transcribe_tokens`` (overlapping
windows merged where they agree), and the teacher by Whisper's own chunked long-form
(``Transcriber``, 30 s windows sharing 5 s with each neighbour, with the same beam and
fallback), not by decoding 30 s windows cut anywhere, which loses words at every cut. Both
paths use the same language: the one asked for, else the row's, else the one the teacher
detects on the first window. Texts are scored like ``whisperforge evaluate``
(``recipes.evaluate``). With ``vad`` (``whisperforge.vad.VadOptions``) each recording is
first cut down to the speech Silero VAD finds, as ``SpeechTokenizer.tokenize(..., vad=...)``
does, and both paths read that.

The teacher's side does not depend on the tokenizer: ``teacher_texts(report, ...)`` takes it
from an earlier report on the same utterances (same teacher, same encoder precision, same
decoding) so that comparing checkpoints decodes only the tokens (CLI ``--teacher-from
REPORT``).

Besides the error rates the report gives the ratio of the two WERs, the nominal bitrate
(``tokens_per_second * log2(codes)``), the entropy bitrate (``tokens_per_second`` times the
empirical unigram entropy of the ids, in bits), codebook utilisation / perplexity / dead codes
over the whole set, the precision the encoder ran in (``encoder_dtype``: both paths read
the same states), whether decoding screened its vocabulary projection in bfloat16
(``vocab_screen``), the time each stage took and the machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisperforge.audio import N_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from whisperforge.decoding import DecodingOptions, detect_language
from whisperforge.fileio import append_lines
from whisperforge.models.vq import codebook_usage
from whisperforge.recipes.evaluate import (
    EvalItem,
    item_keys,
    machine_info,
    open_journal,
    rates_by,
    score_utterance,
    summarize,
)
from whisperforge.tokens import SpeechTokenizer
from whisperforge.vad import VadOptions, speech_only


@dataclass
class _Window:
    item: int  # index into the items
    audio: object  # float32 samples, up to 30 s
    seconds: float  # of the item's audio this window accounts for (VAD's cuts included)
    long: bool = False  # one of several windows: the item is decoded whole once read


@dataclass
class _Timing:
    encode: float = 0.0  # encoder + quantizer
    tokens: float = 0.0  # ids -> features -> text
    teacher: float = 0.0  # encoder states -> text
    language: float = 0.0

    def add(self, name: str, start: float) -> None:
        setattr(self, name, getattr(self, name) + time.perf_counter() - start)


@dataclass
class _Outputs:
    ids: list[list[int]]
    tokens: list[list[str]]
    teacher: list[list[str]]
    samples: list[int]
    kept: list[int]  # samples left after VAD (all of them without it)
    failed: dict[int, str] = field(default_factory=dict)
    # the audio (after VAD) of items longer than one window, until they are decoded
    long_audio: dict[int, np.ndarray] = field(default_factory=dict)


def _windows(items: list[EvalItem], outputs: _Outputs, vad: VadOptions | None,
             skip: set[int] = frozenset()) -> Iterator[_Window]:  # fmt: skip
    """Consecutive 30 s windows of each item (of its speech only, with ``vad``), decoded one
    item at a time; an item that cannot be decoded is recorded in ``outputs.failed``, one in
    which VAD finds no speech has no windows (its hypotheses are empty), the items in
    ``skip`` (done by an earlier run) are not read. Each window's ``seconds`` share the
    item's whole duration, so that progress reaches the total."""
    unseen = 0.0  # seconds of items without windows, passed on to the next window
    for index, item in enumerate(items):
        if index in skip:
            continue
        try:
            audio = load_audio(item.audio)
        except AudioError as error:
            outputs.failed[index] = str(error)
            continue
        outputs.samples[index] = len(audio)
        kept = speech_only(audio, vad)
        outputs.kept[index] = len(kept)
        seconds = len(audio) / SAMPLE_RATE
        if vad is not None and len(kept) == 0:
            unseen += seconds
            continue
        starts = range(0, max(len(kept), 1), N_SAMPLES)
        if len(starts) > 1:
            outputs.long_audio[index] = kept
        for start in starts:
            yield _Window(index, kept[start : start + N_SAMPLES], seconds / len(starts) + unseen,
                          long=len(starts) > 1)  # fmt: skip
            unseen = 0.0
    if unseen:
        yield _Window(-1, None, unseen)  # nothing to decode; progress only


def _batched(windows: Iterator[_Window], size: int) -> Iterator[list[_Window]]:
    batch: list[_Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _languages(tok: SpeechTokenizer, states, wanted: list[str | None]) -> list[str | None]:
    """Each window's language: the one wanted, else detected from the encoder states."""
    if not tok.whisper.multilingual or all(w is not None for w in wanted):
        return wanted
    probs = detect_language(tok.session, tok.whisper.tokenizer, states)
    return [w or max(p, key=p.get) for w, p in zip(wanted, probs)]


def _run_batch(tok, batch, items, language, options, outputs: _Outputs, timing: _Timing,
               teacher: bool = True, fallback: bool = True):  # fmt: skip
    """Ids of one batch of windows, and both paths' texts of the windows that are a whole
    recording (only the tokens' path without ``teacher``); a longer recording's windows give
    ids only (``_LongForm`` decodes it once all are read)."""
    start = time.perf_counter()
    pieces = [w.audio for w in batch]
    states, mask = tok.encode_windows(pieces)
    ids = tok.window_ids(states, mask, [len(p) for p in pieces])
    timing.add("encode", start)
    start = time.perf_counter()
    wanted = [language or items[w.item].language for w in batch]
    languages = _languages(tok, states, wanted)
    timing.add("language", start)
    for w, row in zip(batch, ids):
        outputs.ids[w.item].extend(row)
    whole = [k for k, w in enumerate(batch) if not w.long]
    if not whole:
        return languages
    start = time.perf_counter()
    feats = tok.features([ids[k] for k in whole])
    picked = [languages[k] for k in whole]
    token_texts = tok.decode_features(feats, options, picked, fallback)
    timing.add("tokens", start)
    start = time.perf_counter()
    references = [""] * len(whole)
    if teacher:
        references = tok.decode_features(states[whole], options, picked, fallback)
    timing.add("teacher", start)
    for k, text, reference in zip(whole, token_texts, references):
        outputs.tokens[batch[k].item].append(text)
        outputs.teacher[batch[k].item].append(reference)
    return languages


class _LongForm:
    """Decodes recordings longer than one window: their ids with
    ``SpeechTokenizer.transcribe_tokens``, their audio with Whisper's chunked long-form."""

    def __init__(self, tok: SpeechTokenizer, options: DecodingOptions, batch_size: int,
                 teacher: bool, fallback: bool):  # fmt: skip
        from whisperforge.transcribe import TranscribeOptions, Transcriber

        self.tok, self.options, self.teacher, self.fallback = tok, options, teacher, fallback
        beam = options.beam_size or 1
        self.transcribe = dict(
            beam_size=beam, best_of=options.best_of or 5, patience=options.patience or 1.0,
            length_penalty=options.length_penalty, long_form="chunked", vad=False,
            temperature=TranscribeOptions().temperature if fallback else (options.temperature,),
            batch_size=batch_size,
        )  # fmt: skip
        self._transcriber = None
        self._make = lambda: Transcriber(tok.whisper, session=tok.session)  # one set of weights

    def __call__(self, i: int, language: str | None, outputs: _Outputs, timing: _Timing) -> None:
        audio = outputs.long_audio.pop(i, None)
        if audio is None:
            return
        start = time.perf_counter()
        outputs.tokens[i] = self.tok.transcribe_tokens(
            [outputs.ids[i]], language=language, options=self.options, fallback=self.fallback
        )  # fmt: skip
        timing.add("tokens", start)
        if not self.teacher:
            return
        start = time.perf_counter()
        if self._transcriber is None:
            self._transcriber = self._make()
        result = next(iter(self._transcriber.transcribe_batch(
            [audio], language=language, **self.transcribe)))  # fmt: skip
        outputs.teacher[i] = [result.text]
        timing.add("teacher", start)


# how recordings longer than one window are read (module docstring); reports record it
LONG_FORM = "chunked"


def _options_record(options: DecodingOptions, language: str | None, batch_size: int,
                    vad: VadOptions | None, fallback: bool) -> dict:  # fmt: skip
    return {**asdict(options), "language": language, "batch_size": batch_size,
            "vad": None if vad is None else asdict(vad), "fallback": fallback,
            "long_form": LONG_FORM}  # fmt: skip


def teacher_texts(
    report: dict, items: list[EvalItem], tokenizer: SpeechTokenizer, options: DecodingOptions,
    language: str | None, vad: VadOptions | None = None, fallback: bool = True,
) -> list[str]:  # fmt: skip
    """Each item's teacher transcript from an earlier ``evaluate_tokens`` report; ValueError
    unless that report decoded the same utterances with the same teacher, encoder precision,
    options and VAD settings."""
    if report.get("teacher_model") != tokenizer.teacher:
        raise ValueError(f"the report's teacher is {report.get('teacher_model')!r}, this "
                         f"tokenizer's is {tokenizer.teacher!r}")  # fmt: skip
    # reports written before the encoder precision was recorded ran it in float32
    if report.get("encoder_dtype", "float32") != tokenizer.encoder_dtype:
        raise ValueError(f"the report's encoder ran in {report.get('encoder_dtype', 'float32')}, "
                         f"this one runs in {tokenizer.encoder_dtype}")  # fmt: skip
    # reports written before the language, VAD, fallback or long-form reading was recorded:
    # None, None, no fallback and 30 s windows cut anywhere (what they ran)
    old = {"language": None, "vad": None, "fallback": False, "long_form": "windows",
           **report.get("options", {})}  # fmt: skip
    old.pop("batch_size", None)
    new = _options_record(options, language, 0, vad, fallback)
    new.pop("batch_size")
    if old != new:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ValueError(f"the report decoded with other options ({', '.join(changed)})")
    rows = {row["id"]: row for row in report.get("per_utterance", [])}
    texts = []
    for item in items:
        row = rows.get(item.id)
        if row is None or row["reference"] != item.text:
            raise ValueError(f"utterance {item.id!r} is not in the report, or its reference "
                             "text differs: evaluate the teacher again")  # fmt: skip
        texts.append(row["teacher_hypothesis"])
    return texts


def _bitrates(tok: SpeechTokenizer, ids: list[list[int]], audio_seconds: float) -> dict:
    cfg = tok.config
    usage = codebook_usage(torch.tensor([i for row in ids for i in row] or [cfg.mask_id]),
                           cfg.n_ids, cfg.mask_id)  # fmt: skip
    entropy = math.log2(usage.perplexity) if usage.perplexity > 0 else 0.0
    rate = cfg.tokens_per_second
    measured = usage.n_tokens / audio_seconds if audio_seconds > 0 else 0.0
    return {
        "tokens": usage.n_tokens,
        "tokens_per_second": measured,
        "bitrate": {
            "nominal_bps": rate * math.log2(cfg.n_searchable),
            "entropy_bps": rate * entropy,
            "entropy_bits_per_token": entropy,
            "tokens_per_second": rate,
        },
        "codebook": {"n_codes": cfg.n_searchable, "n_ids": cfg.n_ids, **asdict(usage)},
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def evaluate_tokens(
    tokenizer: SpeechTokenizer,
    items: Iterable[EvalItem],
    *,
    language: str | None = None,
    options: DecodingOptions | None = None,
    batch_size: int = 8,
    name: str = "speech tokenizer",
    progress: Callable[[float], None] | None = None,
    teacher: list[str] | None = None,
    vad: VadOptions | None = None,
    journal: str | Path | None = None,
    fallback: bool = True,
) -> dict:
    """Transcribe ``items`` from speech tokens and with the continuous teacher; score both.

    ``options`` default: greedy, without timestamps; ``name`` is the tokenizer's reference
    for the report; ``progress`` gets the seconds of audio of each finished batch of
    windows, a recording longer than one window once it is decoded (with ``vad``, the cut
    silences included); ``teacher``: each item's teacher transcript
    (``teacher_texts``) instead of decoding it again; ``vad``: both paths read only the
    speech VAD finds (None: every sample, whatever the tokenizer's default; the CLI passes
    ``VadOptions()`` for a tokenizer whose config asks for VAD); ``fallback``: both paths
    decode with ``SpeechTokenizer.decode_features``' temperature fallback. With ``journal`` (a JSONL
    path) each finished utterance's outputs are appended to it, and a run that finds a
    journal of the same tokenizer, options and items takes the utterances it holds instead
    of reading them again (``report["resumed"]``; their time counts in the throughput; files
    that failed are tried again): a killed evaluation resumes. The caller removes the
    journal once the report is written. Returns the report (module docstring).
    """
    items = list(items)
    options = options or DecodingOptions(without_timestamps=True)
    n = len(items)
    outputs = _Outputs([[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)],
                       [0] * n, [0] * n)  # fmt: skip
    timing, languages = _Timing(), [None] * n
    record = _options_record(options, language, batch_size, vad, fallback)
    keys = item_keys(items)
    header = {
        "journal": "whisperforge tokenizer evaluate",
        "model": name, "teacher_model": tokenizer.teacher,
        "encoder_dtype": tokenizer.encoder_dtype, "teacher_given": teacher is not None,
        "options": json.loads(json.dumps(record, default=str)),
        "items": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
    }  # fmt: skip
    lines, handle = open_journal(journal, header)
    done = _restore(lines, keys, outputs, languages)
    earlier = lines[-1] if lines else {"wall": 0.0, "timing": {}}
    if progress is not None and done:
        progress(sum(outputs.samples[i] for i in done) / SAMPLE_RATE)
    begin = time.perf_counter()
    written = 0  # items before this index are in the journal, done before or failed
    long_form = _LongForm(tokenizer, options, batch_size, teacher is None, fallback)
    held: dict[int, float] = {}  # progress seconds of long items read but not yet decoded
    try:
        for batch in _batched(_windows(items, outputs, vad, done), batch_size):
            work = [w for w in batch if w.item >= 0]
            if work:
                found = _run_batch(tokenizer, work, items, language, options, outputs, timing,
                                   teacher=teacher is None, fallback=fallback)  # fmt: skip
                for w, lang in zip(work, found):
                    languages[w.item] = languages[w.item] or lang
            # an item is finished once a later one has started (or every item has)
            last = max(w.item for w in work) if work else n
            # a long item's seconds count once it is decoded
            for w in batch:
                if w.long:
                    held[w.item] = held.get(w.item, 0.0) + w.seconds
            for i in [i for i in outputs.long_audio if i < last]:
                long_form(i, languages[i], outputs, timing)
                if progress is not None:
                    progress(held.pop(i))
            if handle is not None:
                wall = earlier["wall"] + time.perf_counter() - begin
                finished = [i for i in range(written, last) if i not in done]
                append_lines(handle, [
                    json.dumps(_journal_line(keys[i], i, outputs, languages, timing,
                                             earlier["timing"], wall)) for i in finished
                    if i not in outputs.failed
                ])  # fmt: skip
            written = max(written, last)
            if progress is not None:
                progress(sum(w.seconds for w in batch if not w.long))
        for i in list(outputs.long_audio):
            long_form(i, languages[i], outputs, timing)
            if progress is not None:
                progress(held.pop(i))
    finally:
        if handle is not None:
            handle.close()
    wall = earlier["wall"] + time.perf_counter() - begin
    for key, value in earlier["timing"].items():
        setattr(timing, key, getattr(timing, key) + value)
    if teacher is not None:
        outputs.teacher = [[text] for text in teacher]
    report = _report(tokenizer, items, outputs, languages, timing, wall, record)
    report["resumed"] = len(done)
    if vad is not None:
        kept = sum(outputs.kept[i] for i in range(n) if i not in outputs.failed)
        report["duration_after_vad"] = round(kept / SAMPLE_RATE, 3)
    if teacher is not None:
        report["timing"]["teacher_throughput"] = None  # not decoded in this run
    return {"model": name, **report}


def _journal_line(key, i, outputs: _Outputs, languages, timing: _Timing, earlier: dict,
                  wall: float) -> dict:  # fmt: skip
    """What a resumed run needs of finished item ``i``, with the time spent so far."""
    spent = {k: v + earlier.get(k, 0.0) for k, v in asdict(timing).items()}
    return {"key": key, "ids": outputs.ids[i], "tokens": outputs.tokens[i],
            "teacher": outputs.teacher[i], "samples": outputs.samples[i],
            "kept": outputs.kept[i], "language": languages[i], "timing": spent,
            "wall": wall}  # fmt: skip


def _restore(lines: list[dict], keys: list[str], outputs: _Outputs, languages) -> set[int]:
    """Put the journal's finished items into ``outputs``; returns their indices."""
    index = {key: i for i, key in enumerate(keys)}
    done = set()
    for line in lines:
        i = index[line["key"]]
        outputs.ids[i], outputs.tokens[i] = line["ids"], line["tokens"]
        outputs.teacher[i] = line["teacher"]
        outputs.samples[i], outputs.kept[i] = line["samples"], line["kept"]
        languages[i] = line["language"]
        done.add(i)
    return done


def _rows(items, outputs: _Outputs, languages) -> tuple[list[dict], list[dict]]:
    rows, teacher_rows = [], []
    for i, item in enumerate(items):
        if i in outputs.failed:
            continue
        lang = languages[i] or "en"
        seconds = outputs.samples[i] / SAMPLE_RATE
        row = score_utterance(item, " ".join(t for t in outputs.tokens[i] if t), lang, seconds)
        ref = score_utterance(item, " ".join(t for t in outputs.teacher[i] if t), lang, seconds)
        row |= {"n_tokens": len(outputs.ids[i]), "teacher_hypothesis": ref["hypothesis"],
                "teacher_wer": ref["wer"], "teacher_cer": ref["cer"]}  # fmt: skip
        rows.append(row)
        teacher_rows.append(ref)
    return rows, teacher_rows


def _report(tok, items, outputs, languages, timing: _Timing, wall, options: dict) -> dict:
    rows, teacher_rows = _rows(items, outputs, languages)
    report = summarize(rows)
    teacher = summarize(teacher_rows)
    audio = report["audio_seconds"]
    kept = [outputs.ids[i] for i in range(len(items)) if i not in outputs.failed]

    def speed(seconds: float) -> float:
        return audio / seconds if seconds > 0 else 0.0

    report.update(
        teacher_model=tok.teacher, encoder_dtype=tok.encoder_dtype,
        vocab_screen=tok.session.screen is not None,
        teacher={k: teacher[k] for k in ("wer", "cer", "substitution_rate", "deletion_rate",
                                         "insertion_rate", "repeated_5grams",
                                         "echoed_words")},
        wer_ratio=_ratio(report["wer"], teacher["wer"]),
        cer_ratio=_ratio(report["cer"], teacher["cer"]),
        **_bitrates(tok, kept, audio),
        wall_seconds=round(wall, 3), throughput=speed(wall),
        timing={**{f"{k}_seconds": round(v, 3) for k, v in asdict(timing).items()},
                "tokenize_throughput": speed(timing.encode),
                "tokens_to_text_throughput": speed(timing.encode + timing.tokens),
                "teacher_throughput": speed(timing.encode + timing.teacher)},
        failed=[{"id": items[i].id, "audio": str(items[i].audio), "error": e}
                for i, e in sorted(outputs.failed.items())],
        by_speaker=rates_by(rows, "speaker"), by_language=rates_by(rows, "language"),
        options=options, machine=machine_info(),
        per_utterance=rows,
    )  # fmt: skip
    return report
