"""Writing files and folders so that a killed process never leaves a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; when the block succeeds it replaces ``dest``
    in one rename, when it fails (or is interrupted) it is removed. The result has the mode a
    plain ``mkdir`` gives under the umask (temporary folders are private), so models, exports
    and corpora can be shared like any folder their user makes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _chmod_as_mkdir(tmp)
        yield tmp
        _widen_private_files(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temp file beside ``path`` and rename it over ``path``, so
    readers see the old file or the complete new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resume_jsonl(path: Path) -> list[dict]:
    """The complete rows of a JSON-lines file that a killed process may have been appending
    to (``append_lines``). A last line without its newline, cut off mid-write, is removed from
    the file, so appending can go on after the last complete row; another bad line is a
    ValueError naming it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    rows = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
    return rows


def append_lines(handle: IO[str], lines: list[str]) -> None:
    """Append ``lines`` in one write and push them to disk: a kill leaves at most the last
    line cut short, which ``resume_jsonl`` removes."""
    handle.write("".join(line + "\n" for line in lines))
    handle.flush()
    os.fsync(handle.fileno())


def _widen_private_files(folder: Path) -> None:
    """Give files written private (safetensors writes its files 0600) the mode a plain
    ``open`` gives under the umask."""
    probe = folder / ".mode-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            have = path.stat().st_mode & 0o777
            if have | mode != have:
                path.chmod(have | mode)


def _chmod_as_mkdir(folder: Path) -> None:
    probe = folder / ".mode-probe"
    probe.mkdir()
    mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    folder.chmod(mode)
