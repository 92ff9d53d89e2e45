"""Progress bars: redrawn on a terminal, timed plain lines in a log file."""

import io

import pytest

from whisperforge.progress import log_interval, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines_no_more_often_than_the_interval():
    log = io.StringIO()
    bar = progress_bar(50, unit="window", desc="pseudo-labels", file=log, interval=3600)
    for step in range(50):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # must not print a line of its own
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines  # the opening line and the closing one
    assert lines[0].startswith("pseudo-labels:   0% 0/50")
    assert lines[1].startswith("pseudo-labels: 100% 50/50")
    assert "loss=0.020" in lines[1]  # the last postfix is in the closing line


def test_a_zero_interval_logs_every_update():
    log = io.StringIO()
    with progress_bar(4, unit="utt", file=log, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    counts = [line.split()[1] for line in log.getvalue().splitlines()]
    assert counts[:5] == ["0/4", "1/4", "2/4", "3/4", "4/4"]


def test_without_a_total_the_lines_count_up():
    log = io.StringIO()
    with progress_bar(None, unit="file", file=log, interval=0) as bar:
        bar.update(3)
    assert log.getvalue().splitlines()[-1].startswith("3 [")


def test_seconds_of_audio_show_one_decimal():
    for stream in (io.StringIO(), Terminal()):
        with progress_bar(5.5, unit="s", file=stream, interval=0) as bar:
            bar.update(1.1)
            bar.update(2.2)  # 3.3000000000000003 s so far
            bar.refresh()  # a terminal bar redraws at most every 0.1 s
            bar.update(2.2)
        text = stream.getvalue()
        assert "3.3/5.5" in text and "5.5/5.5" in text and "0000" not in text, text


def test_a_terminal_gets_a_redrawn_bar_and_quiet_gets_nothing():
    terminal = Terminal()
    with progress_bar(3, unit="file", file=terminal) as bar:
        bar.update(3)
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    silent = io.StringIO()
    with progress_bar(3, unit="file", file=silent, enabled=False) as bar:
        bar.update(3)
    assert silent.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("WHISPERFORGE_PROGRESS_INTERVAL", "5")
    assert log_interval() == 5.0
    monkeypatch.setenv("WHISPERFORGE_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="must be seconds"):
        log_interval()
    monkeypatch.setenv("WHISPERFORGE_PROGRESS_INTERVAL", "-1")
    with pytest.raises(ValueError, match=">= 0"):
        log_interval()
    monkeypatch.delenv("WHISPERFORGE_PROGRESS_INTERVAL")
    assert log_interval() == 30.0
