"""Where sentences come from: text that Debian packages install, files shipped with whisperforge,
and the user's own files.

Each source yields raw text chunks (a quotation, a verse, a paragraph); ``whisperforge.data.pool``
splits and normalises them. Licences and provenance are listed in ``docs/data.md``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Fortune files that are mostly ASCII art, code, shell hints, other languages, dictionary-style
# definitions ("bugs, pl. n.") or Zippy's non sequiturs.
_FORTUNE_SKIP = {
    "art", "ascii-art", "debian", "definitions", "linux", "linuxcookie", "perl", "translate-me",
    "zippy",
}  # fmt: skip
_FORTUNE_MAX_LINES = 6  # longer entries are poems, dialogues and stories


class SourceUnavailable(RuntimeError):
    """A text source's package or file is not installed."""


@dataclass(frozen=True)
class TextSource:
    """A named source of raw text in one language; ``read`` yields text chunks."""

    name: str
    language: str
    licence: str
    install: str
    read: Callable[[], Iterator[str]]
    check: Callable[[], bool]

    def available(self) -> bool:
        return self.check()


def _read_fortunes() -> Iterator[str]:
    files = sorted(p for p in FORTUNES_DIR.glob("*") if p.suffix == "" and p.is_file())
    for path in files:
        if path.name in _FORTUNE_SKIP:
            continue
        body = path.read_text(encoding="utf-8", errors="replace")
        for entry in body.split("\n%\n"):
            lines = [ln for ln in entry.splitlines() if ln.strip()]
            lines = [ln for ln in lines if not re.match(r"\s*--\s", ln)]  # attribution
            if not lines or len(lines) > _FORTUNE_MAX_LINES:
                continue
            if any(re.match(r"\s*[A-Z][\w .]{0,20}:\s", ln) for ln in lines):
                continue  # "Q: ...", "Bob: ..." dialogue and riddles
            yield " ".join(ln.strip() for ln in lines)


def _read_wordnet() -> Iterator[str]:
    """Example sentences inside WordNet glosses, e.g. ``"she made a cup of tea"``."""
    for part in ("noun", "verb", "adj", "adv"):
        path = WORDNET_DIR / f"data.{part}"
        with path.open(encoding="latin-1") as handle:
            for line in handle:
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                for example in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    if len(example.split()) >= 4:
                        yield example


def _read_kjv() -> Iterator[str]:
    """King James Bible verses via the ``bible`` program (package bible-kjv)."""
    result = subprocess.run(
        ["bible", "-l", "100000", "gen1:1-rev22:21"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for line in result.stdout.splitlines():
        match = re.match(r"\s+\d+\s+(.+)", line)
        if match:
            yield match.group(1)


def _package_file(name: str) -> Path:
    return Path(str(resources.files("whisperforge.data").joinpath("texts", name)))


def _read_lines(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def _file_source(name: str, language: str, path: Path, licence: str) -> TextSource:
    return TextSource(
        name=name,
        language=language,
        licence=licence,
        install=f"a text file at {path}",
        read=lambda: _read_lines(path),
        check=path.is_file,
    )


SOURCES: dict[str, TextSource] = {
    "fortunes": TextSource(
        "fortunes",
        "en",
        "BSD (fortune-mod collection; quotations of mixed provenance)",
        "apt-get install fortunes",
        _read_fortunes,
        lambda: (FORTUNES_DIR / "fortunes").is_file(),
    ),
    "wordnet": TextSource(
        "wordnet",
        "en",
        "WordNet 3.0 licence (permissive, attribution)",
        "apt-get install wordnet-base",
        _read_wordnet,
        lambda: (WORDNET_DIR / "data.noun").is_file(),
    ),
    "kjv": TextSource(
        "kjv",
        "en",
        "public domain (King James Version, 1611)",
        "apt-get install bible-kjv",
        _read_kjv,
        lambda: shutil.which("bible") is not None,
    ),
    "conversation": _file_source(
        "conversation",
        "en",
        _package_file("en_conversation.txt"),
        "CC0 (written for whisperforge)",
    ),
    "vi-basic": _file_source(
        "vi-basic", "vi", _package_file("vi_sentences.txt"), "CC0 (written for whisperforge)"
    ),
}
DEFAULT_SOURCES = {"en": ("conversation", "wordnet", "fortunes"), "vi": ("vi-basic",)}
"""Sources used when none are named. kjv is opt-in: archaic, and full of names no model can
spell (whisper-base missed most of them in our check)."""


def get_source(spec: str, language: str = "en") -> TextSource:
    """A source by name (``fortunes``, ``wordnet``, ...) or ``file:PATH`` (one text per line)."""
    if spec.startswith("file:"):
        path = Path(spec[5:]).expanduser()
        return _file_source(spec, language, path, "as stated by its owner")
    try:
        return SOURCES[spec]
    except KeyError:
        raise ValueError(
            f"unknown text source {spec!r}; available: {sorted(SOURCES)} or file:PATH"
        ) from None


def read_source(source: TextSource) -> Iterator[str]:
    """Raw text chunks of a source; raises SourceUnavailable with the install command."""
    if not source.available():
        raise SourceUnavailable(f"text source {source.name!r} is not installed: {source.install}")
    yield from source.read()
