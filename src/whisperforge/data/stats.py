"""Corpus statistics: hours, utterances, speakers/voices, languages, duration histogram."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from whisperforge.data.manifest import Utterance

HISTOGRAM_EDGES_S = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
"""Duration bins in seconds; the last bin is open (>= 30 s, longer than one Whisper window)."""


def _bin_label(i: int) -> str:
    edges = HISTOGRAM_EDGES_S
    if i == len(edges) - 1:
        return f">={edges[-1]:g}s"
    return f"{edges[i]:g}-{edges[i + 1]:g}s"


def duration_histogram(durations: Iterable[float]) -> dict[str, int]:
    """Counts per bin of ``HISTOGRAM_EDGES_S``, every bin present (zero when empty)."""
    counts = Counter()
    for d in durations:
        i = sum(d >= e for e in HISTOGRAM_EDGES_S) - 1
        counts[max(i, 0)] += 1
    return {_bin_label(i): counts[i] for i in range(len(HISTOGRAM_EDGES_S))}


def manifest_stats(utterances: Iterable[Utterance]) -> dict:
    """Totals and per-voice/per-language hours of valid utterances (durations in seconds)."""
    seconds = defaultdict(float)
    count = Counter()
    languages = defaultdict(float)
    durations = []
    for utt in utterances:
        d = float(utt.duration or 0.0)
        durations.append(d)
        key = utt.voice or "unknown"
        seconds[key] += d
        count[key] += 1
        languages[utt.language or "unknown"] += d
    total = sum(durations)
    return {
        "hours": round(total / 3600, 4),
        "utterances": len(durations),
        "mean_duration_s": round(total / len(durations), 2) if durations else 0.0,
        "max_duration_s": round(max(durations), 2) if durations else 0.0,
        "voices": {
            k: {"hours": round(seconds[k] / 3600, 4), "utterances": count[k]}
            for k in sorted(seconds)
        },
        "languages": {k: round(v / 3600, 4) for k, v in sorted(languages.items())},
        "duration_histogram": duration_histogram(durations),
    }


def format_stats(stats: dict, title: str = "") -> str:
    """A plain-text table of ``manifest_stats`` for the terminal."""
    lines = [title] if title else []
    lines.append(
        f"hours {stats['hours']:.3f}  utterances {stats['utterances']}  "
        f"mean {stats['mean_duration_s']:.2f} s  max {stats['max_duration_s']:.2f} s"
    )
    lines.append(f"speakers/voices {len(stats['voices'])}:")
    for name, v in stats["voices"].items():
        lines.append(f"  {name:<28} {v['hours'] * 60:8.1f} min  {v['utterances']:6d} utts")
    langs = ", ".join(f"{k} {v:.3f} h" for k, v in stats["languages"].items())
    lines.append(f"languages: {langs}")
    lines.append("durations:")
    peak = max(stats["duration_histogram"].values(), default=0) or 1
    for label, n in stats["duration_histogram"].items():
        lines.append(f"  {label:>8} {n:6d} {'#' * round(40 * n / peak)}")
    return "\n".join(lines)
