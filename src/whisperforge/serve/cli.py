"""``whisperforge serve``: run the OpenAI-compatible API and the web demo with uvicorn.

A thin layer over ``whisperforge.serve.app.create_app``; every flag is a ``ServeSettings``
field, and each also reads ``WHISPERFORGE_<FIELD>`` from the environment (a flag wins).
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the main CLI's subparsers."""
    from whisperforge.models.presets import ENCODER_DTYPES

    p = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible transcription API and a web demo",
        description="Defaults come from WHISPERFORGE_* environment variables, e.g. "
        "WHISPERFORGE_API_KEY, WHISPERFORGE_MODELS, WHISPERFORGE_MAX_UPLOAD_MB.",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--models", help="comma-separated models to serve; the first is the default and "
        "answers to 'whisper-1' (default whisper-base,whisper-tiny.en)",
    )  # fmt: skip
    p.add_argument(
        "--tokenizers", help="comma-separated speech tokenizers (names or folders) for "
        "/v1/audio/tokens; the first is the default (default: the shipped ones)",
    )  # fmt: skip
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--max-upload-mb", type=float, help="largest upload in MB (default 25)")
    p.add_argument("--max-audio-seconds", type=float, help="longest audio (default 1800)")
    p.add_argument("--max-concurrency", type=int, help="transcriptions at once (default 1)")
    p.add_argument("--max-queue", type=int, help="requests waiting before 429 (default 16)")
    p.add_argument("--queue-timeout", type=float, help="seconds queued before 503 (default 300)")
    p.add_argument("--preload", action="store_true", default=None, help="load models at start")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument(
        "--encoder-dtype", choices=ENCODER_DTYPES,
        help="precision of the models' encoders (default float32); bfloat16 is faster on "
        "CPUs with bf16 instructions",
    )  # fmt: skip
    p.add_argument(
        "--vad", action=argparse.BooleanOptionalAction, default=None,
        help="skip non-speech with Silero VAD (--no-vad: never) unless a request's vad field "
        "says otherwise; default: each model's own (on for distil-whisper-base.en, off for "
        "the others and for speech tokens; needs the vad extra)",
    )  # fmt: skip
    p.set_defaults(func=run_serve)
    return p


def settings_from_args(args: argparse.Namespace):
    from whisperforge.serve.settings import ServeSettings

    names = ("host", "port", "models", "api_key", "max_upload_mb", "max_audio_seconds",
             "max_concurrency", "max_queue", "queue_timeout", "preload", "device",
             "tokenizers", "vad", "encoder_dtype")  # fmt: skip
    return ServeSettings.from_env(**{n: getattr(args, n, None) for n in names})


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from whisperforge.serve.app import create_app
    except ImportError as error:
        print(f"whisperforge serve needs: pip install 'whisperforge[serve]' ({error})",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = settings_from_args(args)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it may use it",
                       settings.host)  # fmt: skip
    print(f"whisperforge serve: http://{settings.host}:{settings.port}/ "
          f"(models: {', '.join(settings.models)}; speech tokenizers: "
          f"{', '.join(settings.tokenizers) or 'none'})", file=sys.stderr)  # fmt: skip
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
