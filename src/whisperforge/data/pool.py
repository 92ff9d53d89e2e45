"""A text pool: clean, de-duplicated sentences per language, split into train/dev/test.

On disk a pool is a folder ``<out>/<language>/<split>.txt`` (one sentence a line, UTF-8) plus
``<out>/pool.json`` (sources, licences, counts, rejections), which is what
``whisperforge data synth --texts <out>`` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
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
MIN_WORD_COUNT = {"en": 3}
"""Default: drop sentences with a word seen fewer times in the pool (others: 1, no filter)."""
EVAL_FRACTION = {"en": 0.03}
"""Default share of a language's sentences in dev and in test (others: 0.1)."""


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


def _collect(names, language, limits, caps) -> dict[str, dict]:
    """Clean each source; drop sentences an earlier source already gave; apply caps."""
    collected, seen = {}, set()
    for name in names:
        source = get_source(name, language)
        sentences, rejected = clean_sentences(read_source(source), language, limits)
        fresh = [s for s in sentences if sentence_key(s) not in seen]
        duplicates = len(sentences) - len(fresh)
        if name in caps and len(fresh) > caps[name]:
            fresh = sorted(fresh, key=_hash_order)[: caps[name]]
        seen.update(sentence_key(s) for s in fresh)
        collected[name] = {"source": source, "sentences": fresh, "rejected": rejected}
        collected[name]["duplicates_of_earlier_sources"] = duplicates
    return collected


def _drop_rare_words(collected: dict[str, dict], min_word_count: int) -> None:
    """Drop sentences with a word seen fewer than ``min_word_count`` times in the whole pool:
    rare words (``stertorously``, names) are what TTS voices mispronounce and ASR misspells."""
    if min_word_count <= 1:
        return
    counts = Counter(
        w for entry in collected.values() for s in entry["sentences"] for w in _words(s)
    )
    for entry in collected.values():
        kept = [
            s for s in entry["sentences"] if all(counts[w] >= min_word_count for w in _words(s))
        ]
        if len(kept) < len(entry["sentences"]):
            entry["rejected"]["rare word"] = len(entry["sentences"]) - len(kept)
        entry["sentences"] = kept


def _words(sentence: str) -> list[str]:
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", sentence.lower())


def build_pool(
    language: str = "en",
    sources: list[str] | None = None,
    limits: TextLimits | None = None,
    dev_fraction: float | None = None,
    test_fraction: float | None = None,
    max_per_source: dict[str, int] | None = None,
    min_word_count: int | None = None,
) -> TextPool:
    """Read, clean and split the sentences of ``sources`` (default: all for ``language``).

    ``dev_fraction``/``test_fraction`` default to ``EVAL_FRACTION`` of the language (small pools
    give a larger share so their dev and test sets are not tiny). ``max_per_source`` caps a
    source (e.g. ``{"kjv": 4000}``); the kept sentences are chosen by hash, so the choice is
    stable. A sentence found in two sources counts for the first. ``min_word_count`` (default
    ``MIN_WORD_COUNT`` of the language) drops sentences with rare words. Split membership
    depends only on the sentence (``text.assign_split``): the splits never share a sentence.
    """
    limits = limits or TextLimits()
    default = EVAL_FRACTION.get(language, 0.1)
    dev_fraction = default if dev_fraction is None else dev_fraction
    test_fraction = default if test_fraction is None else test_fraction
    if min_word_count is None:
        min_word_count = MIN_WORD_COUNT.get(language, 1)
    names = list(sources) if sources else list(DEFAULT_SOURCES.get(language, ()))
    if not names:
        raise ValueError(f"no default text sources for language {language!r}; pass sources")
    collected = _collect(names, language, limits, max_per_source or {})
    _drop_rare_words(collected, min_word_count)
    pool = TextPool(language)
    for name, entry in collected.items():
        counts = Counter()
        for sentence in entry["sentences"]:
            split = assign_split(sentence, dev_fraction, test_fraction)
            pool.splits[split].append(sentence)
            counts[split] += 1
        pool.sources[name] = {
            "licence": entry["source"].licence,
            "kept": dict(sorted(counts.items())),
            "rejected": dict(sorted(entry["rejected"].items())),
            "duplicates_of_earlier_sources": entry["duplicates_of_earlier_sources"],
        }
        logger.info("text source %s: kept %d, rejected %s", name, counts.total(), entry["rejected"])
    for split in SPLITS:
        pool.splits[split].sort(key=_hash_order)
    return pool


def write_pool(
    pools: list[TextPool], out_dir: str | Path, limits: TextLimits | None = None
) -> Path:
    """Write ``<out>/<lang>/<split>.txt`` and ``<out>/pool.json``; returns the card path."""
    out = Path(out_dir)
    card = {"limits": asdict(limits or TextLimits()), "languages": {}}
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
