"""Pieces the benchmarks share: the audio they transcribe, timing cases, machine facts.

Audio (``build_workloads``): sentences written below, spoken by flite's four English voices,
plus ``samples/jfk.wav``. Short clips: the first 16 sentences (2-14 s) and jfk, one window
each. Long-form: jfk and every sentence joined with 0.3-0.8 s of silence (about 5 minutes).
Without flite, jfk and slices of it stand in (and the note returned says so).

Timing (``measure``): every case is warmed once, then timed ``repeats`` times in alternating
case order so that a change in machine load falls on every system; the median is kept.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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


# -- timing ---------------------------------------------------------------------------


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


class Probe(Protocol):
    """Extra counters a case reads around each timed run (speculative decoding stats...)."""

    def reset(self) -> None: ...

    def read(self) -> dict: ...


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
    probe: Probe | None = None
    probes: list[dict] = field(default_factory=list)  # probe.read() after each timed run


def transcribe_run(transcriber, system: str, options: dict) -> Callable:
    """A case's ``run``: ``transcriber.transcribe_batch`` with ``options``, the texts out; a
    file that fails stops the benchmark."""

    def run(audio):
        results = list(transcriber.transcribe_batch(audio, **options))
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"{system} failed: {failed}")
        return [r.text for r in results]

    return run


def transcriber_cases(
    transcriber, tag: str, system: str, batch_size: int, decode: dict, probe: Probe | None = None
) -> list[Case]:
    """The four whisperforge cases of a ``Transcriber``: short clips at batch 1 and
    ``batch_size``, long-form chunked at ``batch_size`` and sequential at batch 1. Its
    encoder is wrapped in the cases' clock."""
    clock = EncoderClock()
    transcriber.session.encode = clock.wrap(transcriber.session.encode)

    def case(name, workload, batch, mode):
        run = transcribe_run(transcriber, system, dict(decode, batch_size=batch, long_form=mode))
        return Case(name, system, workload, batch, mode, run, clock, probe=probe)

    return [
        case(f"{tag} b1", "short", 1, "chunked"),
        case(f"{tag} b{batch_size}", "short", batch_size, "chunked"),
        case(f"{tag} chunked b{batch_size}", "long", batch_size, "chunked"),
        case(f"{tag} sequential b1", "long", 1, "sequential"),
    ]


# -- measuring --------------------------------------------------------------------------


def time_case(case: Case, audio: list[np.ndarray]) -> None:
    case.clock.reset()
    if case.probe is not None:
        case.probe.reset()
    start = time.perf_counter()
    case.hypotheses = case.run(audio)
    case.walls.append(time.perf_counter() - start)
    case.encoder.append(case.clock.seconds)
    case.windows = case.clock.windows
    if case.probe is not None:
        case.probes.append(case.probe.read())


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


# -- reporting --------------------------------------------------------------------------


def versions(names: tuple[str, ...]) -> dict:
    """Installed version of each distribution in ``names`` (None: not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cpu_model() -> str | None:
    """The CPU's marketing name (``platform.processor()`` is often just the architecture)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_pressure() -> str | None:
    """Linux PSI line: how much of the time tasks waited for a CPU (other load on the box)."""
    path = Path("/proc/pressure/cpu")
    return path.read_text().splitlines()[0] if path.exists() else None


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown_table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns align left, the others (numbers) right."""
    rule = ["---"] * left + ["--:"] * (len(header) - left)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def load_workloads(quick: bool) -> tuple[list[Workload], str]:
    """``build_workloads`` (in a temporary folder), trimmed by ``quick_workloads`` if asked."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wf-bench-") as tmp:
        workloads, note = build_workloads(Path(tmp))
    if quick:
        return quick_workloads(workloads), note + " (--quick: trimmed, numbers not meaningful)"
    return workloads, note


def run_facts(version_names: tuple[str, ...], load_start: tuple[float, ...]) -> dict:
    """Where and how a run was made: date, the exact command, machine, versions, load."""
    import shlex
    import sys

    from whisperforge.recipes.evaluate import machine_info

    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "machine": machine_info(),
        "cpu_model": cpu_model(),
        "versions": versions(version_names),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_pressure": cpu_pressure(),
    }


def machine_sentence(facts: dict) -> str:
    """The machine line of a benchmark section from its ``run_facts``: CPU and count, torch
    version, load average at the start."""
    import torch

    machine = facts.get("cpu_model") or facts["machine"].get("processor", "")
    load = ", ".join(f"{x:.2f}" for x in facts["load_average_start"])
    return (f"Machine: {machine} ({os.cpu_count()} CPUs), torch {torch.__version__}; load average "
            f"at start {load}.")  # fmt: skip


def report_from(args, measure: Callable[[list[Workload], str], dict]) -> dict:
    """The saved report ``args.render``, or a new one: ``measure(workloads, note)`` on
    ``load_workloads(args.quick)``, written to ``args.out`` when given."""
    import json

    if args.render:
        return json.loads(Path(args.render).read_text(encoding="utf-8"))
    workloads, note = load_workloads(args.quick)
    print(note, flush=True)
    report = measure(workloads, note)
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def publish(block: str, markdown: Path | None, start: str, end: str, intro: str) -> None:
    """Print a rendered section and, with ``markdown``, put it between its markers there."""
    print(block)
    if markdown:
        replace_marked_section(markdown, start, end, block, intro)


def replace_marked_section(path: Path, start: str, end: str, block: str, intro: str) -> None:
    """Put ``block`` (which begins with ``start`` and ends with ``end``) in place of the text
    between the markers of ``path``; without markers, append ``intro`` and ``block``."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + intro + block + "\n"
    atomic_write(path, text)


def quick_workloads(workloads: list[Workload]) -> list[Workload]:
    """Trimmed workloads for a smoke test of the script itself."""
    from whisperforge.audio import SAMPLE_RATE

    short, long_form = workloads
    head = Clip(long_form.clips[0].audio[: 60 * SAMPLE_RATE], None)
    return [
        Workload("short", short.clips[:4], short.warmup[:2]),
        Workload("long", [head], [head.audio[: 20 * SAMPLE_RATE]]),
    ]
