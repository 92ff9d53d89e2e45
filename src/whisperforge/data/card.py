"""The dataset card of a synthetic corpus: ``card.json`` (machine-readable) and ``README.md``.

Deterministic on purpose (no dates, no host names, no timings): the same seed and inputs give
the same card, byte for byte. Build time goes to the log instead.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from whisperforge.data.manifest import Utterance
from whisperforge.data.pool import POOL_CARD
from whisperforge.data.stats import manifest_stats
from whisperforge.data.text import SPLITS
from whisperforge.data.tts import get_engine, get_voice


def _augmentation_mix(jobs) -> dict[str, dict[str, int]]:
    mix: dict[str, Counter] = defaultdict(Counter)
    for job in jobs:
        mix[job.split]["utterances"] += 1
        if not job.augment:
            mix[job.split]["clean"] += 1
        for effect in job.augment:
            mix[job.split][effect] += 1
    return {split: dict(sorted(c.items())) for split, c in mix.items()}


def _text_sources(texts) -> dict:
    sources = {}
    for path in texts:
        card = Path(path) / POOL_CARD
        name = Path(path).name
        if card.is_file():
            sources[name] = json.loads(card.read_text("utf-8"))
        else:
            sources[name] = {"file": name}
    return sources


def make_card(by_split: dict[str, list[Utterance]], jobs, options, texts) -> dict:
    """Hours per split/voice/language, augmentation mix, seed, options, engine versions."""
    held_out = set(options.held_out())
    voices = {}
    for name in options.voices:
        voice = get_voice(name)
        hours = {}
        for split in SPLITS:
            seconds = sum(u.duration for u in by_split.get(split, []) if u.voice == name)
            hours[split] = round(seconds / 3600, 4)
        voices[name] = {
            "engine": voice.engine, "language": voice.language, "gender": voice.gender,
            "held_out": name in held_out, "hours": hours,
        }  # fmt: skip
    engines = sorted({get_voice(n).engine for n in options.voices})
    return {
        "name": "whisperforge synthetic speech corpus",
        "sample_rate": 16000,
        "format": "FLAC, mono, 16-bit",
        "seed": options.seed,
        "options": options.to_dict(),
        "engines": {e: get_engine(e).version() for e in engines},
        "splits": {s: manifest_stats(by_split.get(s, [])) for s in SPLITS},
        "voices": voices,
        "held_out_voices": sorted(held_out),
        "augmentation": _augmentation_mix(jobs),
        "texts": _text_sources(texts),
    }


def render_readme(card: dict) -> str:
    """A short human-readable card."""
    lines = [f"# {card['name']}", ""]
    lines.append(
        f"16 kHz mono FLAC, seed {card['seed']}, engines: "
        + ", ".join(f"{k} {v}" for k, v in card["engines"].items())
        + "."
    )
    lines += ["", "| split | hours | utterances |", "|---|---|---|"]
    for split, s in card["splits"].items():
        lines.append(f"| {split} | {s['hours']:.3f} | {s['utterances']} |")
    lines += [
        "",
        "| voice | language | held out | train h | dev h | test h |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in card["voices"].items():
        h = v["hours"]
        held = "yes" if v["held_out"] else "no"
        hours = " | ".join(f"{h[s]:.3f}" for s in SPLITS)
        lines.append(f"| {name} | {v['language']} | {held} | {hours} |")
    lines += ["", "Augmentation (utterances per effect):", ""]
    for split, mix in card["augmentation"].items():
        lines.append(f"- {split}: " + ", ".join(f"{k} {v}" for k, v in mix.items()))
    lines += [
        "",
        "Held-out voices appear only in dev and test, to measure generalisation to an",
        "unseen voice. Texts: see `card.json` (`texts`) for sources and licences.",
        "Made by `whisperforge data synth`.",
        "",
    ]
    return "\n".join(lines)


def write_card(card: dict, out: Path) -> None:
    """``card.json`` and ``README.md`` in ``out``."""
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (out / "README.md").write_text(render_readme(card), "utf-8")
