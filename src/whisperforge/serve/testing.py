"""Run the real server on loopback in a background thread (tests, benchmarks, notebooks).

>>> with background_server(ServeSettings(models=("whisper-tiny.en",))) as url:
...     httpx.get(url + "/health")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from whisperforge.serve.settings import ServeSettings

STARTUP_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def background_server(settings: ServeSettings | None = None, log_level: str = "warning"):
    """Serve ``create_app(settings)`` with uvicorn on ``settings.host`` and a free port.

    Yields the base URL (``http://127.0.0.1:PORT``); stops the server on exit.
    """
    import dataclasses

    import uvicorn

    from whisperforge.serve.app import create_app

    settings = settings or ServeSettings(models=("whisper-tiny.en",))
    settings = dataclasses.replace(settings, port=free_port(settings.host))
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level=log_level
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="whisperforge-serve", daemon=True)
    thread.start()
    yield from _until_stopped(server, thread, f"http://{settings.host}:{settings.port}")


def _until_stopped(server, thread: threading.Thread, url: str) -> Iterator[str]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
