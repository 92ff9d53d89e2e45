"""Transcription throughput: whisperforge against faster-whisper, same weights, threads and run.

Both systems transcribe the same 16 kHz arrays in one process, warm, with the same thread
count, greedy decoding (``beam_size=1``), ``language="en"`` and their default thresholds and
temperature fallback. Every timing is repeated and the median kept; repeats run the cases in
alternating order so a change in machine load falls on both systems. Speed claims are the
*ratios* printed at the end, never the absolute times (DESIGN.md, evaluation protocol).

Audio (``build_workloads``): sentences written below, spoken by flite's four English voices,
plus ``samples/jfk.wav``. Short clips: the first 16 sentences (2-14 s) and jfk, one window
each. Long-form: jfk and every sentence joined with 0.3-0.8 s of silence (about 5 minutes).
Without flite, jfk and slices of it stand in (and the output says so).

Weights: whisperforge runs the preset's float16 CTranslate2 checkpoint converted to a Hugging
Face folder and upcast to float32; faster-whisper loads the very same ``model.bin`` with
``compute_type="float32"`` (upcast at load) or ``"int8"`` (quantised at load).

    python benchmarks/bench_transcribe.py --model whisper-base --threads 2 \\
        --out benchmarks/results/transcribe-base.json --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JFK = REPO / "samples" / "jfk.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
VOICES = ("kal16", "slt", "rms", "awb")
N_SHORT = 16  # sentences in the short-clip set (jfk is added to them)
SILENCE_SECONDS = (0.3, 0.8)  # pause range between clips of the long-form file
SEED = 0
DECODE = {"language": "en", "beam_size": 1}  # both systems; everything else at its default
START_MARK, END_MARK = "<!-- transcribe:start -->", "<!-- transcribe:end -->"

SENTENCES = (
    "Please close the door when you leave.",
    "The weather was cold and windy all morning, so we stayed inside and read.",
    "She bought fresh bread, a bag of apples and some cheese at the market.",
    "Turn left at the church and walk straight on until you reach the old stone bridge "
    "over the river.",
    "Good morning, how did you sleep last night?",
    "The train to the coast was late again, and the passengers waited on the platform with "
    "their bags while the rain kept falling on the roof.",
    "He forgot his keys at the office.",
    "Our neighbours planted a small garden behind the house, with tomatoes, beans, lettuce "
    "and a row of bright yellow flowers along the fence.",
    "Could you send me the report before lunch?",
    "When the children came home from school, they were hungry and tired, so their father "
    "made soup and toast, and after dinner everyone went to bed early because the next day "
    "was going to be a long one, with an early start and a drive to see their cousins in "
    "the country.",
    "The library opens at nine and closes in the evening.",
    "I think we should wait a little longer before we decide.",
    "The meeting was moved to the large room on the second floor, because the small room "
    "did not have enough chairs for everyone who wanted to attend.",
    "Water the plants twice a week.",
    "After a long walk through the forest, the hikers finally reached the top of the hill, "
    "where they sat down on the grass and looked at the valley below while the sun slowly "
    "went down behind the mountains.",
    "My sister likes to paint pictures of boats and birds.",
    "The doctor told him to rest for a few days and drink plenty of water.",
    "We took the bus into town and had coffee near the square.",
    "It started to snow just after midnight, and by the morning the streets were white and quiet.",
    "The teacher asked the students to write a short story about their favourite place.",
    "A small dog was barking at the postman from behind the garden gate.",
    "They painted the kitchen walls a pale shade of green last summer.",
    "If you need any help with the new computer, just ask someone at the front desk.",
    "The old clock in the hall stopped working many years ago, but nobody wanted to take it away.",
    "She sings in a choir every Thursday evening at the village hall.",
    "The bakery on the corner sells the best cakes in the whole town.",
    "He opened the window to let some fresh air into the room.",
    "We watched the boats sail out of the harbour as the fog began to lift.",
    "The museum has a large collection of paintings, maps and old letters.",
    "Please remember to switch off the lights before you go to sleep.",
    "The farmer drove his tractor slowly along the narrow lane between the fields.",
    "Our flight was cancelled, so we spent the night in a hotel near the airport.",
    "The soup needs a little more salt and a pinch of pepper.",
    "Every spring the swallows return to build their nests under the roof of the barn.",
    "He read the letter twice before he put it back in the envelope.",
    "The shop will be closed on Monday while the floors are being cleaned.",
    "She found an old photograph of her grandparents in a box in the attic.",
    "The river flooded the lower fields after three days of heavy rain.",
    "Let us meet outside the cinema a few minutes before the film begins.",
    "The bridge was closed for repairs, so the traffic had to go the long way around "
    "through the narrow streets of the old town.",
    "My grandmother kept a diary for most of her life, and she wrote in it every evening "
    "before she went to bed.",
    "The fishermen mended their nets on the beach while the gulls circled above the boats "
    "waiting for scraps.",
    "On the first warm day of the year, the park was full of people eating lunch on the "
    "grass and enjoying the sunshine.",
    "The kettle whistled in the kitchen, and a moment later the smell of fresh tea filled "
    "the house.",
    "Nobody noticed that the cat had climbed onto the roof until it began to cry for help "
    "as the sky grew dark.",
    "The students listened carefully as the guide explained how the castle had been built "
    "many centuries ago.",
    "We packed sandwiches, fruit and a flask of hot chocolate before we set off on the long "
    "walk along the cliffs.",
    "The lights went out during the storm, so we lit candles and played cards at the "
    "kitchen table until late.",
    "A young man in a blue coat stood at the bus stop reading a newspaper and checking his "
    "watch every few minutes.",
    "The orchestra played softly while the guests found their seats and the curtain slowly "
    "began to rise.",
    "When the harvest was finished, the whole village gathered in the barn for music, "
    "dancing and a big supper.",
    "At the end of the day, the workers packed up their tools and went home to their families.",
)


# -- audio ------------------------------------------------------------------------------


@dataclass
class Clip:
    """16 kHz mono float32 audio and what is said in it (None: unknown)."""

    audio: np.ndarray
    text: str | None


@dataclass
class Workload:
    name: str
    clips: list[Clip]
    warmup: list[np.ndarray]  # untimed first call of each case

    @property
    def audio(self) -> list[np.ndarray]:
        return [c.audio for c in self.clips]

    @property
    def seconds(self) -> float:
        from whisperforge.audio import SAMPLE_RATE

        return sum(len(c.audio) for c in self.clips) / SAMPLE_RATE


def synthesize(folder: Path) -> list[Clip]:
    """Every sentence spoken by flite, voices in rotation."""
    from whisperforge.audio import load_audio

    clips = []
    for i, text in enumerate(SENTENCES):
        path = folder / f"{i:02d}.wav"
        voice = VOICES[i % len(VOICES)]
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        clips.append(Clip(load_audio(path), text))
    return clips


def jfk_slices(jfk: Clip) -> list[Clip]:
    """Stand-ins for synthesised sentences when flite is missing (texts unknown)."""
    from whisperforge.audio import SAMPLE_RATE

    spans = [(0.0, 3.0), (0.0, 6.0), (2.0, 9.0), (4.0, 11.0), (1.0, 5.0), (5.0, 8.0)]
    slices = [Clip(jfk.audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)], None) for a, b in spans]
    return (slices * 3)[:N_SHORT]


def join_with_silence(clips: list[Clip], rng: np.random.Generator) -> Clip:
    """One long recording: the clips in order with random pauses between them."""
    from whisperforge.audio import SAMPLE_RATE

    pieces = []
    for clip in clips:
        pause = rng.uniform(*SILENCE_SECONDS)
        pieces += [clip.audio, np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
    text = " ".join(c.text for c in clips) if all(c.text for c in clips) else None
    return Clip(np.concatenate(pieces[:-1]), text)


def build_workloads(folder: Path) -> tuple[list[Workload], str]:
    """The short-clip and long-form workloads, and a line saying where the audio came from."""
    from whisperforge.audio import SAMPLE_RATE, load_audio

    jfk = Clip(load_audio(JFK), JFK_TEXT)
    if shutil.which("flite"):
        spoken = synthesize(folder)
        long_clips = [jfk, *spoken]
        note = (
            f"{len(SENTENCES)} English sentences spoken by flite (voices {', '.join(VOICES)})"
            f" + samples/jfk.wav"
        )
    else:
        spoken = jfk_slices(jfk)
        long_clips = [jfk] * 24  # the text is known only for whole jfk clips
        note = "flite NOT FOUND: jfk.wav and slices of it stand in (WER on whole jfk only)"
    short = [*spoken[:N_SHORT], jfk]
    long_form = join_with_silence(long_clips, np.random.default_rng(SEED))
    warm_long = long_form.audio[: 60 * SAMPLE_RATE]
    workloads = [
        Workload("short", short, [c.audio for c in short[:8]]),
        Workload("long", [long_form], [warm_long]),
    ]
    return workloads, note


# -- systems ----------------------------------------------------------------------------


class EncoderClock:
    """Wraps an encoder call to add up its wall time and the windows it encoded."""

    def __init__(self) -> None:
        self.seconds, self.windows = 0.0, 0

    def reset(self) -> None:
        self.seconds, self.windows = 0.0, 0

    def wrap(self, encode: Callable) -> Callable:
        def timed(features, *args, **kwargs):
            start = time.perf_counter()
            out = encode(features, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.windows += 1 if features.ndim == 2 else features.shape[0]
            return out

        return timed


@dataclass
class Case:
    """One system on one workload: ``run`` maps audio arrays to transcripts."""

    name: str
    system: str
    workload: str
    batch_size: int
    mode: str
    run: Callable[[list[np.ndarray]], list[str]]
    clock: EncoderClock
    walls: list[float] = field(default_factory=list)
    encoder: list[float] = field(default_factory=list)
    windows: int = 0
    hypotheses: list[str] = field(default_factory=list)


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


def whisperforge_cases(model: str, batch_size: int) -> list[Case]:
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(model)
    clock = EncoderClock()
    transcriber.session.encode = clock.wrap(transcriber.session.encode)

    def runner(batch: int, long_form: str):
        def run(audio):
            options = dict(DECODE, batch_size=batch, long_form=long_form)
            results = list(transcriber.transcribe_batch(audio, **options))
            failed = [r.error for r in results if r.error]
            if failed:
                raise RuntimeError(f"whisperforge failed: {failed}")
            return [r.text for r in results]

        return run

    def case(name, workload, batch, mode):
        return Case(name, "whisperforge", workload, batch, mode, runner(batch, mode), clock)

    return [
        case("wf b1", "short", 1, "chunked"),
        case(f"wf b{batch_size}", "short", batch_size, "chunked"),
        case(f"wf chunked b{batch_size}", "long", batch_size, "chunked"),
        case("wf sequential b1", "long", 1, "sequential"),
    ]


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


def time_case(case: Case, audio: list[np.ndarray]) -> None:
    case.clock.reset()
    start = time.perf_counter()
    case.hypotheses = case.run(audio)
    case.walls.append(time.perf_counter() - start)
    case.encoder.append(case.clock.seconds)
    case.windows = case.clock.windows


def measure(cases: list[Case], workloads: dict[str, Workload], repeats: int) -> None:
    """Warm every case once, then time ``repeats`` rounds in alternating case order."""
    for case in cases:
        print(f"warm-up  {case.workload:5s} {case.name}", flush=True)
        case.run(workloads[case.workload].warmup)
    for round_ in range(repeats):
        for case in cases if round_ % 2 == 0 else cases[::-1]:
            time_case(case, workloads[case.workload].audio)
            line = f"round {round_ + 1}  {case.workload:5s} {case.name}: {case.walls[-1]:.2f} s"
            print(line, flush=True)


def summarize(case: Case, workload: Workload) -> dict:
    from whisperforge.metrics import corpus_error_rates

    wall = statistics.median(case.walls)
    encoder = statistics.median(case.encoder)
    pairs = [(c.text, h) for c, h in zip(workload.clips, case.hypotheses, strict=True) if c.text]
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    wer = corpus_error_rates(refs, hyps)["wer"] if pairs else None
    return {
        "name": case.name,
        "system": case.system,
        "workload": case.workload,
        "mode": case.mode,
        "batch_size": case.batch_size,
        "audio_seconds": round(workload.seconds, 3),
        "wall_seconds": round(wall, 3),
        "wall_seconds_all": [round(w, 3) for w in case.walls],
        "throughput": workload.seconds / wall,
        "encoder_seconds": round(encoder, 3),
        "windows_encoded": case.windows,
        "encoder_ms_per_window": 1000 * encoder / case.windows if case.windows else None,
        "wer": wer,
        "hypotheses": case.hypotheses,
    }


def ratio_pairs(batch_size: int) -> list[tuple[str, str]]:
    b = batch_size
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


def ratios(rows: dict[str, dict], batch_size: int) -> list[dict]:
    out = []
    for ours, peer in ratio_pairs(batch_size):
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
    """faster-whisper's encoder time per window over ours (> 1: our encoder is faster)."""
    if a["encoder_ms_per_window"] and b["encoder_ms_per_window"]:
        return b["encoder_ms_per_window"] / a["encoder_ms_per_window"]
    return None


# -- reporting --------------------------------------------------------------------------


def versions() -> dict:
    names = ("whisperforge", "torch", "ctranslate2", "faster-whisper", "onnxruntime", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


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
            f"| {_fmt(r['encoder_ms_per_window'], '.0f')} | {_fmt(r['wer'], '.2%')} |"
        )
    return "\n".join(lines)


def ratios_table(pairs: list[dict]) -> str:
    lines = [
        "| workload | whisperforge | vs faster-whisper | throughput ratio | encoder speed ratio |",
        "|---|---|---|--:|--:|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['workload']} | {p['whisperforge']} | {p['faster_whisper']} "
            f"| **{p['throughput_ratio']:.2f}x** | {_fmt(p['encoder_ratio'], '.2f')}x |"
        )
    return "\n".join(lines)


def cpu_model() -> str | None:
    """The CPU's marketing name (``platform.processor()`` is often just the architecture)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


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
        if "float32" in p["faster_whisper"]:
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
            "Ratios (whisperforge throughput / faster-whisper throughput; > 1: whisperforge is "
            "faster). Encoder speed ratio: faster-whisper's encoder ms per window over ours.",
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
    text = path.read_text(encoding="utf-8") if path.exists() else MARKDOWN_INTRO
    new = section(report)
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        text = head + new + rest.split(END_MARK, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    _atomic_write(path, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    return parser.parse_args(argv)


def quick(workloads: list[Workload]) -> list[Workload]:
    """Trimmed workloads for a smoke test of the script itself."""
    from whisperforge.audio import SAMPLE_RATE

    short, long_form = workloads
    head = Clip(long_form.clips[0].audio[: 60 * SAMPLE_RATE], None)
    return [
        Workload("short", short.clips[:4], short.warmup[:2]),
        Workload("long", [head], [head.audio[: 20 * SAMPLE_RATE]]),
    ]


def _cpu_pressure() -> str | None:
    """Linux PSI line: how much of the time tasks waited for a CPU (other load on the box)."""
    path = Path("/proc/pressure/cpu")
    return path.read_text().splitlines()[0] if path.exists() else None


def run_benchmark(args: argparse.Namespace, workloads: list[Workload], note: str) -> dict:
    import torch

    from whisperforge.recipes.evaluate import machine_info

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    folder = ct2_folder(args.model)
    cases = whisperforge_cases(args.model, args.batch_size)
    for compute_type in ("float32", "int8"):
        cases += faster_whisper_cases(folder, compute_type, args.threads, args.batch_size)
    by_name = {w.name: w for w in workloads}
    measure(cases, by_name, args.repeats)
    rows = [summarize(c, by_name[c.workload]) for c in cases]
    return {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "decode_options": DECODE,
        "audio": note,
        "short_clips": len(by_name["short"].clips),
        "short_seconds": by_name["short"].seconds,
        "long_seconds": by_name["long"].seconds,
        "ct2_folder": str(folder),
        "machine": machine_info(),
        "cpu_model": cpu_model(),
        "versions": versions(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_pressure": _cpu_pressure(),
        "ratios": ratios({r["name"]: r for r in rows}, args.batch_size),
        "results": rows,
    }


def measure_and_save(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        workloads, note = build_workloads(Path(tmp))
    if args.quick:
        workloads, note = quick(workloads), note + " (--quick: trimmed, numbers not meaningful)"
    print(note, flush=True)
    report = run_benchmark(args, workloads, note)
    if args.out:
        _atomic_write(args.out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        report = measure_and_save(args)
    print(f"\n{machine_line(report)}\n")
    print(ratios_table(report["ratios"]) + "\n")
    print(bar_line(report) + "\n")
    print(systems_table(report["results"]))
    if args.markdown:
        write_markdown(args.markdown, report)


if __name__ == "__main__":
    main()
