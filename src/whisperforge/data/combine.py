"""Combine manifests into one, keeping test sets apart from what was trained or chosen on.

``whisperforge data combine`` joins manifests (audio paths rewritten relative to the new
manifest), drops rows whose sentence appears in other corpora (``--exclude-texts``: a fresh
held-out set, none of whose sentences any training, dev or earlier test set holds) and, with
``--unique-texts``, keeps only the first rendering of each sentence. Sentences are compared
after folding case and whitespace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from whisperforge.data.manifest import ManifestError, Utterance, iter_manifest

logger = logging.getLogger(__name__)


def sentence_key(text: str) -> str:
    """What makes two transcripts the same sentence here: case and whitespace folded."""
    return " ".join(text.split()).casefold()


def texts_in(sources: list[str | Path]) -> set[str]:
    """The sentence keys of every row of ``sources``: ``.jsonl`` manifests, or corpus folders
    (every ``*.jsonl`` directly in them: all splits). Only ``text`` is read; lines that are
    not JSON objects are counted in a warning."""
    found: set[str] = set()
    for source in map(Path, sources):
        if source.is_dir():
            files = sorted(source.glob("*.jsonl"))
            if not files:
                raise ManifestError(f"{source}: no .jsonl manifest in this folder")
        elif source.is_file():
            files = [source]
        else:
            raise ManifestError(f"{source}: no such manifest or folder")
        for path in files:
            broken = 0
            for _, row in iter_manifest(path):
                if isinstance(row, Utterance):
                    if row.text:
                        found.add(sentence_key(row.text))
                else:
                    broken += 1
            if broken:  # their sentences cannot be excluded: say so
                logger.warning("%s: %d line(s) are not JSON rows; their text is not excluded",
                               path, broken)  # fmt: skip
    return found


@dataclass
class CombineReport:
    """Per source: rows read, dropped (sentence excluded, or a repeat), kept."""

    sources: list[dict] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(s["kept"] for s in self.sources)

    def summary(self) -> str:
        lines = [
            f"{s['source']}: {s['read']} rows, {s['excluded']} with an excluded sentence, "
            f"{s['repeated']} repeating an earlier sentence, {s['kept']} kept"
            for s in self.sources
        ]
        return "\n".join([*lines, f"{self.kept} rows in all"])


def combine(
    sources: list[tuple[str, list[Utterance]]],
    exclude: set[str] | None = None,
    unique_texts: bool = False,
) -> tuple[list[Utterance], CombineReport]:
    """The rows of ``sources`` (name, rows) in order, less those whose sentence key is in
    ``exclude`` and, with ``unique_texts``, less later renderings of a sentence."""
    exclude = exclude or set()
    seen: set[str] = set()
    kept: list[Utterance] = []
    report = CombineReport()
    for name, rows in sources:
        counts = {"source": name, "read": len(rows), "excluded": 0, "repeated": 0, "kept": 0}
        for utt in rows:
            key = sentence_key(utt.text)
            if key in exclude:
                counts["excluded"] += 1
            elif unique_texts and key in seen:
                counts["repeated"] += 1
            else:
                seen.add(key)
                kept.append(utt)
                counts["kept"] += 1
        report.sources.append(counts)
    return kept, report
