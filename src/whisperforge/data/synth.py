"""Build a synthetic speech corpus from a text pool with offline TTS voices.

Phases: ``plan_corpus`` (every utterance decided up front from the seed: split, voice, text,
rate, pitch, level, augmentation) -> ``synthesize_jobs`` (workers; each output file written to
a temp name and renamed, so a file exists only when complete) -> ``finish_corpus`` (manifests
and dataset card rebuilt from the plan and the files on disk).

The plan and the final files are the only state, so a build killed at any point resumes by
running the same command again: finished files are kept, temp files are removed, and nothing
is duplicated. The bytes of each file depend only on (seed, utterance index), never on worker
count or order.

Layout of ``out``: ``audio/<voice>/<split>-<index>.flac`` (16 kHz mono 16-bit FLAC),
``train.jsonl``, ``dev.jsonl``, ``test.jsonl``, ``card.json``, ``README.md``, ``build.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from whisperforge.data.augment import AugmentConfig, apply_augmentation, draw_augmentation
from whisperforge.data.manifest import Utterance, write_manifest
from whisperforge.data.pool import read_pool
from whisperforge.data.text import SPLITS, assign_split
from whisperforge.data.tts import TTSError, check_voice, get_engine, get_voice

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Output sample rate (Hz): Whisper's."""
CHARS_PER_SECOND = {"en": 18.5, "vi": 20.0}
"""Speaking rate (characters per second at rate 1.0, measured on our voices) used only to plan
how many sentences fill the requested hours."""
SILENCE_PAD_S = 0.4
"""Leading + trailing silence the engines add, for the same estimate (seconds)."""
BATCH_SIZE = 8
"""Utterances of one voice handed to a worker at once (festival starts once per batch)."""
BUILD_RECORD = "build.json"


@dataclass(frozen=True)
class SynthOptions:
    """What to build. ``hours`` is the total over splits (estimated while planning; the card
    reports the measured figure). ``held_out_voices=None`` holds out the last listed voice of
    each language that has two or more voices; ``()`` holds out none. Held-out voices appear
    in dev and test only. ``rate_range`` is a speaking-rate factor, ``pitch_range`` semitones,
    ``level_db`` the peak level in dBFS."""

    hours: float
    voices: tuple[str, ...]
    seed: int = 0
    held_out_voices: tuple[str, ...] | None = None
    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    rate_range: tuple[float, float] = (0.8, 1.0)
    pitch_range: tuple[float, float] = (-2.0, 2.0)
    level_db: tuple[float, float] = (-12.0, -1.0)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    augment_splits: tuple[str, ...] = ("train",)

    def __post_init__(self) -> None:
        if self.hours <= 0:
            raise ValueError(f"hours must be positive, got {self.hours}")
        if not self.voices:
            raise ValueError("no voices given; see `whisperforge data voices`")
        fractions = (self.dev_fraction, self.test_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise ValueError(f"dev/test fractions must be >= 0 and sum below 1, got {fractions}")
        unknown = set(self.held_out_voices or ()) - set(self.voices)
        if unknown:
            raise ValueError(f"held-out voices {sorted(unknown)} are not among the voices")
        for name in self.voices:
            get_voice(name)  # raises with the list of known voices

    def held_out(self) -> tuple[str, ...]:
        """The held-out voices, resolving the default (last voice of each language)."""
        if self.held_out_voices is not None:
            return tuple(self.held_out_voices)
        by_language = defaultdict(list)
        for name in self.voices:
            by_language[get_voice(name).language].append(name)
        return tuple(names[-1] for names in by_language.values() if len(names) >= 2)

    def split_seconds(self, split: str) -> float:
        fraction = {"dev": self.dev_fraction, "test": self.test_fraction}
        fraction["train"] = 1.0 - self.dev_fraction - self.test_fraction
        return self.hours * 3600.0 * fraction[split]

    def to_dict(self) -> dict:
        return asdict(self) | {"held_out_voices": list(self.held_out())}


@dataclass(frozen=True)
class Job:
    """One planned utterance; everything that decides its bytes is here or derived from
    ``(seed, index)``."""

    index: int
    split: str
    voice: str
    language: str
    text: str
    rate: float
    pitch: float
    level_db: float
    augment: dict

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def path(self) -> str:
        """Relative output path: ``audio/<voice slug>/<id>.flac``."""
        return f"audio/{get_voice(self.voice).slug}/{self.id}.flac"


def load_texts(paths: list[str | Path], language: str, split: str) -> list[str]:
    """Sentences of a language and split from pool folders (``data text``) or text files.
    Lines of a plain file are assigned to splits by hash, like a pool, so splits stay disjoint."""
    sentences: dict[str, None] = {}
    for path in paths:
        lines = read_pool(path, language, split)
        if Path(path).is_file():
            lines = [s for s in lines if assign_split(s) == split]
        sentences.update(dict.fromkeys(lines))
    return list(sentences)


def _sentence_cycle(sentences: list[str], seed: int, split: str, language: str):
    key = [seed, SPLITS.index(split), zlib.crc32(language.encode())]
    order = np.random.default_rng(key).permutation(len(sentences))
    while True:
        for i in order:
            yield sentences[i]


def _draw_job(index: int, split: str, voice_name: str, text: str, o: SynthOptions) -> Job:
    rng = np.random.default_rng([o.seed, index])
    voice = get_voice(voice_name)
    rate = round(float(rng.uniform(*o.rate_range)), 3)
    pitch = round(float(rng.uniform(*o.pitch_range)), 2) if voice.pitch_shift else 0.0
    level = round(float(rng.uniform(*o.level_db)), 2)
    params = {}
    if o.augment is not None and split in o.augment_splits:
        params = draw_augmentation(rng, o.augment)
    return Job(index, split, voice_name, voice.language, text, rate, pitch, level, params)


def plan_corpus(texts: dict[tuple[str, str], list[str]], options: SynthOptions) -> list[Job]:
    """Every utterance of the corpus, in order. ``texts[(language, split)]`` are sentences.

    Voices take turns within a split, so each gets the same share; sentences of a split are
    used in a seeded order, each once before any repeats.
    """
    jobs: list[Job] = []
    held_out = set(options.held_out())
    for split in SPLITS:
        voices = [v for v in options.voices if split != "train" or v not in held_out]
        target = options.split_seconds(split)
        if not voices or target <= 0:
            continue
        cycles = {}
        for language in sorted({get_voice(v).language for v in voices}):
            if not texts.get((language, split)):
                raise ValueError(f"no {language} sentences for the {split} split")
            cycles[language] = _sentence_cycle(
                texts[(language, split)], options.seed, split, language
            )
        seconds, turn = 0.0, 0
        while seconds < target:
            name = voices[turn % len(voices)]
            turn += 1
            language = get_voice(name).language
            job = _draw_job(len(jobs), split, name, next(cycles[language]), options)
            jobs.append(job)
            cps = CHARS_PER_SECOND.get(language, 13.0)
            seconds += len(job.text) / cps / job.rate + SILENCE_PAD_S
    return jobs


def render(job: Job, audio: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
    """Engine output -> 16 kHz, augmented (if planned), scaled to the job's peak level."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if job.augment:
        audio = apply_augmentation(
            audio, SAMPLE_RATE, job.augment, np.random.default_rng([seed, job.index, 1])
        )
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        raise TTSError(f"{job.voice} produced silence for {job.id}: {job.text!r}")
    audio = audio * (10 ** (job.level_db / 20) / peak)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def write_flac_atomic(path: Path, audio: np.ndarray) -> None:
    """16 kHz 16-bit FLAC via a temp file + rename: the final name exists only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sf.write(str(tmp), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


def synthesize_jobs(jobs: list[Job], out_dir: str, seed: int) -> list[int]:
    """Synthesise a batch of one voice's jobs into ``out_dir``; returns their indices.
    Runs in worker processes; the engine object (and a loaded piper model) is per process."""
    voice = get_voice(jobs[0].voice)
    engine = get_engine(voice.engine)
    outputs = engine.synthesize_many([(j.text, j.rate, j.pitch) for j in jobs], voice)
    for job, (audio, rate) in zip(jobs, outputs, strict=True):
        write_flac_atomic(Path(out_dir) / job.path, render(job, audio, rate, seed))
    return [job.index for job in jobs]


@dataclass
class BuildResult:
    """What ``build_corpus`` did: planned and finished utterances, and whether it is complete."""

    out_dir: Path
    planned: int
    done_before: int
    synthesized: int
    complete: bool
    seconds: float
    card: dict | None = None


def _plan_fingerprint(jobs: list[Job], options: SynthOptions) -> str:
    blob = json.dumps([options.to_dict(), [asdict(j) for j in jobs]], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_build_record(out: Path, fingerprint: str, options: SynthOptions, overwrite: bool):
    record = out / BUILD_RECORD
    if record.is_file():
        previous = json.loads(record.read_text("utf-8")).get("plan_sha256")
        if previous != fingerprint:
            if not overwrite:
                raise ValueError(
                    f"{out} holds a corpus built with other options or texts; use a new --out, "
                    "or --overwrite to delete its audio and start again"
                )
            logger.warning("overwriting the corpus in %s", out)
            shutil.rmtree(out / "audio", ignore_errors=True)
            for name in [f"{s}.jsonl" for s in SPLITS] + ["card.json", "README.md"]:
                (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    body = {"plan_sha256": fingerprint, "options": options.to_dict()}
    tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, record)


def _remove_partial_files(out: Path) -> int:
    """Delete temp files a killed build left behind; returns how many."""
    stale = list((out / "audio").glob("*/.*.tmp-*")) if (out / "audio").is_dir() else []
    for path in stale:
        path.unlink()
    return len(stale)


def _batches(jobs: list[Job]) -> list[list[Job]]:
    by_voice = defaultdict(list)
    for job in jobs:
        by_voice[job.voice].append(job)
    batches = [
        group[i : i + BATCH_SIZE]
        for group in by_voice.values()
        for i in range(0, len(group), BATCH_SIZE)
    ]
    return sorted(batches, key=lambda b: b[0].index)


def _run_batches(batches, out: Path, seed: int, workers: int, bar) -> int:
    done = 0
    if workers <= 1:
        for batch in batches:
            done += len(synthesize_jobs(batch, str(out), seed))
            bar.update(len(batch))
        return done
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(synthesize_jobs, b, str(out), seed) for b in batches]
        try:
            for future in as_completed(futures):
                n = len(future.result())
                done += n
                bar.update(n)
        except BaseException:  # a failed batch or Ctrl-C: do not wait for the queued batches
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return done


def build_corpus(
    texts: list[str | Path],
    out_dir: str | Path,
    options: SynthOptions,
    workers: int = 1,
    max_jobs: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> BuildResult:
    """Plan, synthesise what is missing, and (when all is there) write manifests and card.

    ``max_jobs`` stops after that many new utterances (the build resumes on the next call);
    ``progress`` shows a tqdm bar on stderr.
    """
    from whisperforge.progress import progress_bar

    start = time.perf_counter()
    out = Path(out_dir)
    for name in options.voices:
        check_voice(name)
    languages = {get_voice(v).language for v in options.voices}
    pool = {(lang, s): load_texts(texts, lang, s) for lang in languages for s in SPLITS}
    jobs = plan_corpus(pool, options)
    _check_build_record(out, _plan_fingerprint(jobs, options), options, overwrite)
    if removed := _remove_partial_files(out):
        logger.info("removed %d partial files from an interrupted build", removed)
    pending = [j for j in jobs if not (out / j.path).is_file()]
    done_before = len(jobs) - len(pending)
    if max_jobs is not None:
        pending = pending[:max_jobs]
    with progress_bar(len(jobs), initial=done_before, enabled=progress, unit="utt") as bar:
        synthesized = _run_batches(_batches(pending), out, options.seed, workers, bar)
    complete = done_before + synthesized == len(jobs)
    card = finish_corpus(out, jobs, options, texts) if complete else None
    seconds = time.perf_counter() - start
    logger.info(
        "%s: %d of %d utterances synthesised now (%d already there) in %.1f s",
        out,
        synthesized,
        len(jobs),
        done_before,
        seconds,
    )
    return BuildResult(out, len(jobs), done_before, synthesized, complete, seconds, card)


def _utterance(job: Job, out: Path, held_out: set[str]) -> Utterance:
    info = sf.info(str(out / job.path))
    extra = {
        "id": job.id, "voice": job.voice, "split": job.split, "held_out": job.voice in held_out,
        "rate": job.rate, "pitch": job.pitch, "augment": job.augment,
    }  # fmt: skip
    return Utterance(
        audio=str(out / job.path),
        text=job.text,
        language=job.language,
        duration=round(info.frames / info.samplerate, 4),
        speaker=job.voice,
        extra=extra,
    )


def finish_corpus(out: Path, jobs: list[Job], options: SynthOptions, texts) -> dict:
    """Write ``<split>.jsonl`` manifests, ``card.json`` and ``README.md`` from the plan and the
    files on disk; returns the card."""
    from whisperforge.data.card import make_card, write_card

    held_out = set(options.held_out())
    by_split = defaultdict(list)
    for job in jobs:
        by_split[job.split].append(_utterance(job, out, held_out))
    for split in SPLITS:
        write_manifest(by_split.get(split, []), out / f"{split}.jsonl")
    card = make_card(by_split, jobs, options, texts)
    write_card(card, out)
    return card
