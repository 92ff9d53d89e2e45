"""Write transcription results as txt, srt, vtt, json or tsv (the formats of openai-whisper).

Differences from openai-whisper's ``utils.py`` writers, on purpose:

- WebVTT timestamps always carry hours (``00:00:01.500``), like SRT; every player accepts it.
- WebVTT cue text is escaped (``AT&amp;T``, ``&lt;``), as the format requires.
- Segments whose text is empty after stripping are left out of txt/srt/vtt/tsv (an empty cue
  is malformed SRT); srt indices count the cues written, from 1. JSON keeps every segment.
- Files are written atomically (temp file in the same folder, then ``os.replace``), so a
  killed run leaves either the previous file or the complete new one, never half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from whisperforge.audio import STDIN
from whisperforge.segments import Segment, TranscriptionInfo

FORMATS = ("txt", "srt", "vtt", "json", "tsv")
MS_PER_SECOND = 1000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """``HH:MM:SS<marker>mmm``, rounded to the nearest millisecond; hours may exceed 99.

    >>> format_timestamp(3661.5, ",")
    '01:01:01,500'
    """
    if not seconds >= 0:
        raise ValueError(f"timestamp must be a non-negative number of seconds, got {seconds!r}")
    ms = round(seconds * MS_PER_SECOND)
    hours, ms = divmod(ms, MS_PER_HOUR)
    minutes, ms = divmod(ms, MS_PER_MINUTE)
    secs, ms = divmod(ms, MS_PER_SECOND)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cue_text(text: str) -> str:
    # "-->" inside a cue would read as a timing line, and a blank line ends the cue.
    lines = (line.strip() for line in text.replace("-->", "->").splitlines())
    return "\n".join(line for line in lines if line)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _spoken(segments: Iterable[Segment]) -> list[Segment]:
    return [s for s in segments if s.text.strip()]


def format_txt(segments: Sequence[Segment], info: TranscriptionInfo) -> str:
    """One stripped segment text per line."""
    return "".join(f"{s.text.strip()}\n" for s in _spoken(segments))


HIGHLIGHT_TAGS = ("<u>", "</u>")  # what ``highlight_cues`` marks a word with


def _vtt_escaped(text: str) -> str:
    """WebVTT cue text: ``&`` and ``<`` as character references (a bare ``<`` opens a tag
    there, a bare ``&`` a reference), the highlight tags kept."""
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    for tag in HIGHLIGHT_TAGS:
        text = text.replace(tag.replace("<", "&lt;"), tag)
    return text


def _format_cues(
    segments: Sequence[Segment], marker: str, numbered: bool, escape=lambda text: text
) -> list[str]:
    cues = []
    for index, s in enumerate(_spoken(segments), start=1):
        timing = f"{format_timestamp(s.start, marker)} --> {format_timestamp(s.end, marker)}"
        number = f"{index}\n" if numbered else ""
        cues.append(f"{number}{timing}\n{escape(_cue_text(s.text))}\n\n")
    return cues


def format_srt(segments: Sequence[Segment], info: TranscriptionInfo) -> str:
    """SubRip: 1-based cue numbers, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank line between cues."""
    return "".join(_format_cues(segments, ",", numbered=True))


def format_vtt(segments: Sequence[Segment], info: TranscriptionInfo) -> str:
    """WebVTT: ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues, their text
    escaped (``&amp;``, ``&lt;``)."""
    return "WEBVTT\n\n" + "".join(_format_cues(segments, ".", False, _vtt_escaped))


def format_tsv(segments: Sequence[Segment], info: TranscriptionInfo) -> str:
    """Header ``start\\tend\\ttext``, then integer milliseconds and one-line text per segment."""
    rows = ["start\tend\ttext\n"]
    for s in _spoken(segments):
        start, end = round(s.start * MS_PER_SECOND), round(s.end * MS_PER_SECOND)
        rows.append(f"{start}\t{end}\t{_one_line(s.text)}\n")
    return "".join(rows)


def _finite(value: Any) -> Any:
    # NaN/Infinity are not JSON; browsers and jq reject them.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def format_json(segments: Sequence[Segment], info: TranscriptionInfo) -> str:
    """``{"text", "segments", "language", "info"}``; non-finite floats become ``null``; a
    segment's ``words`` (start, end, word, probability) are there with word timestamps.

    ``text`` is the non-empty segment texts joined as decoded (they carry their own leading
    spaces, or none in languages written without spaces), then stripped; ``segments`` lists
    every segment unchanged.
    """
    result = {
        "text": "".join(s.text for s in _spoken(segments)).strip(),
        "segments": [s.to_dict() for s in segments],
        "language": info.language,
        "info": info.to_dict(),
    }
    return json.dumps(_finite(result), ensure_ascii=False, indent=2, default=str) + "\n"


_FORMATTERS: dict[str, Callable[[Sequence[Segment], TranscriptionInfo], str]] = {
    "txt": format_txt,
    "srt": format_srt,
    "vtt": format_vtt,
    "json": format_json,
    "tsv": format_tsv,
}


def resolve_formats(formats: str | Iterable[str]) -> list[str]:
    """Validate and expand formats: ``"all"`` -> :data:`FORMATS`; duplicates dropped, order kept."""
    requested = [formats] if isinstance(formats, str) else list(formats)
    resolved: list[str] = []
    for fmt in requested:
        fmt = fmt.lower()
        if fmt not in FORMATS and fmt != "all":
            raise ValueError(f"unknown output format {fmt!r}; available: {', '.join(FORMATS)}, all")
        for name in FORMATS if fmt == "all" else (fmt,):
            if name not in resolved:
                resolved.append(name)
    return resolved


def format_result(segments: Iterable[Segment], info: TranscriptionInfo, fmt: str) -> str:
    """The text of one output file in format ``fmt`` (one of :data:`FORMATS`, not ``"all"``)."""
    name = fmt.lower()
    if name not in _FORMATTERS:
        raise ValueError(
            f"unknown output format {fmt!r} for format_result; available: {', '.join(FORMATS)}"
            " (write_result also takes 'all')"
        )
    return _FORMATTERS[name](list(segments), info)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_path(output_dir: str | os.PathLike[str], stem: str, fmt: str) -> Path:
    """Where ``write_result`` writes format ``fmt`` of the results named ``stem``."""
    return Path(output_dir) / f"{stem}.{fmt}"


def output_names(files: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The name (without a format's suffix) each input's results get in an output folder.

    A file's stem (``talks/a.wav`` -> ``a``) as long as no two inputs share one; otherwise
    each input keeps its path below the folder all of them are in (``s1/001.wav`` and
    ``s2/001.wav`` -> ``s1/001`` and ``s2/001``), and where even that leaves two alike
    (``a.wav`` and ``a.mp3``), its file name (``a.wav``, ``a.mp3``): one input's results never
    overwrite another's. The same file given twice has one name; the file piped in
    (``audio.STDIN``) is named ``stdin``.
    """
    paths = [Path(os.path.abspath("stdin" if os.fspath(f) == STDIN else f)) for f in files]
    distinct = len(set(paths))
    names = [p.stem for p in paths]
    if len(set(names)) == distinct:
        return names
    root = Path(os.path.commonpath([p.parent for p in paths]))
    below = [p.relative_to(root) for p in paths]
    names = [r.with_suffix("").as_posix() for r in below]
    if len(set(names)) == distinct:
        return names
    return [r.as_posix() for r in below]


def split_cues(
    segments: Iterable[Segment], max_words: int | None = None, max_chars: int | None = None
) -> list[Segment]:
    """Segments cut into subtitle cues of at most ``max_words`` words and ``max_chars``
    characters (a longer single word is a cue of its own), each timed by its words.

    Needs word timestamps (``Segment.words``); a segment without words is kept whole."""
    if max_words is not None and max_words < 1 or max_chars is not None and max_chars < 1:
        raise ValueError("max_words and max_chars must be at least 1")
    cues: list[Segment] = []

    def add(seg: Segment, words: list) -> None:
        text = "".join(w.word for w in words)
        tokens = tuple(t for w in words for t in w.tokens)
        cues.append(replace(seg, id=len(cues), start=words[0].start, end=words[-1].end,
                            text=text, tokens=tokens, words=tuple(words)))  # fmt: skip

    for seg in segments:
        if not seg.words:
            cues.append(replace(seg, id=len(cues)))
            continue
        line: list = []
        for word in seg.words:
            longer = "".join(w.word for w in [*line, word]).strip()
            if line and (
                max_words is not None
                and len(line) >= max_words
                or max_chars is not None
                and len(longer) > max_chars
            ):
                add(seg, line)
                line = []
            line.append(word)
        add(seg, line)
    return cues


def highlight_cues(cues: Iterable[Segment]) -> list[Segment]:
    """Karaoke subtitles: each cue with words becomes one cue per word, timed by it, with
    that word underlined (``<u>``) in the cue's text, and the plain text over the gaps
    between words (openai-whisper's ``--highlight_words``). Cues without words stay."""
    out: list[Segment] = []
    for cue in cues:
        if not cue.words:
            out.append(replace(cue, id=len(out)))
            continue
        last = cue.start
        for k, word in enumerate(cue.words):
            if word.start > last:
                out.append(replace(cue, id=len(out), start=last, end=word.start))
            lead = word.word[: len(word.word) - len(word.word.lstrip())]
            marked = f"{lead}{HIGHLIGHT_TAGS[0]}{word.word.lstrip()}{HIGHLIGHT_TAGS[1]}"
            text = "".join(marked if j == k else w.word for j, w in enumerate(cue.words))
            out.append(replace(cue, id=len(out), start=word.start, end=word.end, text=text))
            last = word.end
    return out


CUE_FORMATS = ("srt", "vtt")  # the formats ``split_cues`` and ``highlight_cues`` apply to


def write_result(
    segments: Iterable[Segment],
    info: TranscriptionInfo,
    output_dir: str | os.PathLike[str],
    stem: str,
    formats: str | Iterable[str] = "all",
    max_words_per_cue: int | None = None,
    max_chars_per_cue: int | None = None,
    highlight_words: bool = False,
) -> list[Path]:
    """Write ``<output_dir>/<stem>.<fmt>`` for each format (``"all"`` = :data:`FORMATS`).

    ``segments`` may be a lazy iterator; it is consumed once. ``output_dir`` (and the folders
    in a ``stem`` from ``output_names``) is created if missing. Each file is UTF-8 and
    written atomically. With ``max_words_per_cue`` or ``max_chars_per_cue`` the subtitle
    formats (srt, vtt) hold cues of at most that many words / characters (``split_cues``,
    for segments with word timestamps), and with ``highlight_words`` one cue per word with
    the word underlined (``highlight_cues``). Returns the paths written, in order.
    """
    names = resolve_formats(formats)
    segments = list(segments)
    cues = segments
    if max_words_per_cue is not None or max_chars_per_cue is not None:
        cues = split_cues(segments, max_words_per_cue, max_chars_per_cue)
    if highlight_words:
        cues = highlight_cues(cues)
    paths = []
    for name in names:
        path = output_path(output_dir, stem, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, _FORMATTERS[name](cues if name in CUE_FORMATS else segments, info))
        paths.append(path)
    return paths
