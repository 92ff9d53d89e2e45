"""A text pool: clean, de-duplicated sentences per language, split into train/dev/test.

On disk a pool is a folder ``<out>/<language>/<split>.txt`` (one sentence a line, UTF-8) plus
``<out>/pool.json`` (sources, licences, counts, rejections), which is what
``whisperforge data synth --texts <out>`` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whisperforge.data.sources import DEFAULT_SOURCES, get_source, read_source
from whisperforge.data.text import (
    SPLITS,
    TextLimits,
    assign_split,
    clean_sentences,
    sentence_key,
)

logger = logging.getLogger(__name__)
POOL_CARD = "pool.json"


@dataclass
class TextPool:
    """Sentences of one language by split, with where they came from."""

    language: str
    splits: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    sources: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.splits.values())


def _hash_order(sentence: str) -> bytes:
    return hashlib.sha1(sentence_key(sentence).encode("utf-8")).digest()


def build_pool(
    language: str = "en",
    sources: list[str] | None = None,
    limits: TextLimits = TextLimits(),
    dev_fraction: float = 0.03,
    test_fraction: float = 0.03,
    max_per_source: dict[str, int] | None = None,
) -> TextPool:
    """Read, clean and split the sentences of ``sources`` (default: all for ``language``).

    ``max_per_source`` caps a source (e.g. ``{"kjv": 4000}`` so archaic text does not dominate);
    the kept sentences are chosen by hash, so the choice is stable. A sentence found in two
    sources counts for the first. Split membership depends only on the sentence (see
    ``text.assign_split``), so the splits never share a sentence.
    """
    names = list(sources) if sources else list(DEFAULT_SOURCES.get(language, ()))
    if not names:
        raise ValueError(f"no default text sources for language {language!r}; pass sources")
    caps = max_per_source or {}
    pool, seen = TextPool(language), set()
    for name in names:
        source = get_source(name, language)
        sentences, rejected = clean_sentences(read_source(source), language, limits)
        fresh = [s for s in sentences if sentence_key(s) not in seen]
        if name in caps and len(fresh) > caps[name]:
            fresh = sorted(fresh, key=_hash_order)[: caps[name]]
        seen.update(sentence_key(s) for s in fresh)
        counts = Counter()
        for sentence in fresh:
            split = assign_split(sentence, dev_fraction, test_fraction)
            pool.splits[split].append(sentence)
            counts[split] += 1
        pool.sources[name] = {
            "licence": source.licence,
            "kept": dict(counts),
            "rejected": dict(sorted(rejected.items())),
            "duplicates_of_earlier_sources": len(sentences) - len(fresh),
        }
        logger.info("text source %s: kept %d, rejected %s", name, len(fresh), rejected)
    for split in SPLITS:
        pool.splits[split].sort(key=_hash_order)
    return pool


def write_pool(pools: list[TextPool], out_dir: str | Path, limits: TextLimits = TextLimits()) -> Path:
    """Write ``<out>/<lang>/<split>.txt`` and ``<out>/pool.json``; returns the card path."""
    out = Path(out_dir)
    card = {"limits": asdict(limits), "languages": {}}
    for pool in pools:
        folder = out / pool.language
        folder.mkdir(parents=True, exist_ok=True)
        for split, sentences in pool.splits.items():
            (folder / f"{split}.txt").write_text("".join(s + "\n" for s in sentences), "utf-8")
        card["languages"][pool.language] = {
            "sentences": {s: len(v) for s, v in pool.splits.items()},
            "sources": pool.sources,
        }
    path = out / POOL_CARD
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return path


def read_pool(path: str | Path, language: str, split: str) -> list[str]:
    """Sentences of one language and split from a pool folder, or from a plain text file."""
    path = Path(path)
    if path.is_file():
        return [ln.strip() for ln in path.read_text("utf-8").splitlines() if ln.strip()]
    file = path / language / f"{split}.txt"
    if not file.is_file():
        raise FileNotFoundError(
            f"no {language} {split} sentences at {file}; build a pool with "
            f"`whisperforge data text --language {language} --out {path}`"
        )
    return [ln.strip() for ln in file.read_text("utf-8").splitlines() if ln.strip()]
