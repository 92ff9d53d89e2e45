"""Progress bars that also work in log files.

On a terminal ``progress_bar`` is a plain ``tqdm`` bar. When its stream is not a terminal (a
job under ``nohup``, a CI log, a batch scheduler's output file) a redrawn bar would either be
hidden (``tqdm(disable=None)``) or fill the file with carriage-return updates; there it
writes one plain line at most every ``interval`` seconds (and a last one when it closes)::

    pseudo-labels: 21% 120/572 [03:10<11:55, 0.63 window/s, loss=0.412]

``WHISPERFORGE_PROGRESS_INTERVAL`` (seconds) sets that interval for every command.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL = 30.0  # s between two progress lines in a log file
LOG_FORMAT = (
    "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
LOG_FORMAT_NO_TOTAL = "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class _Lines:
    """A text stream for tqdm that turns each redraw into one newline-terminated line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    """A tqdm bar that shows a fractional count (seconds of audio) to one decimal, not as the
    float its sum of updates happens to be (``2925.1830000000004/2952.3``)."""

    @property
    def format_dict(self):
        values = super().format_dict
        if isinstance(values["n"], float):
            values["n"] = round(values["n"], 1)
        return values


class _LogBar(_Bar):
    """A tqdm bar whose postfix and description changes wait for the next timed line
    instead of printing one each (a training loop sets its loss every step)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def log_interval() -> float:
    """Seconds between progress lines in a log file (``WHISPERFORGE_PROGRESS_INTERVAL``)."""
    value = os.environ.get("WHISPERFORGE_PROGRESS_INTERVAL")
    if value is None:
        return LOG_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"WHISPERFORGE_PROGRESS_INTERVAL must be seconds, got {value!r}") from None
    if seconds < 0:
        raise ValueError(f"WHISPERFORGE_PROGRESS_INTERVAL must be >= 0, got {value!r}")
    return seconds


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(
    total: float | None = None,
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    interval: float | None = None,
    **kwargs: Any,
) -> tqdm:
    """A ``tqdm`` bar on ``file`` (default stderr): redrawn on a terminal, one line every
    ``interval`` seconds (default ``log_interval()``) otherwise; ``enabled=False`` gives a
    silent bar with the same methods. Other keywords go to ``tqdm`` (``desc``, ``unit``,
    ``initial``...)."""
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, file=stream, disable=True, **kwargs)
    if _is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return _Bar(total=total, file=stream, **kwargs)
    if kwargs.get("desc") and not kwargs["desc"].endswith(": "):
        kwargs["desc"] = kwargs["desc"].rstrip(":") + ": "
    kwargs.pop("dynamic_ncols", None)
    every = log_interval() if interval is None else interval
    fmt = LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL
    return _LogBar(
        total=total,
        file=_Lines(stream),
        mininterval=every,
        maxinterval=max(every, 10.0),
        miniters=1,
        bar_format=fmt,
        ascii=True,
        **kwargs,
    )
