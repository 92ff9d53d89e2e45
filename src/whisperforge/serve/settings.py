"""Server settings: one frozen dataclass, filled from CLI flags and ``WHISPERFORGE_*`` env vars.

Precedence: an explicit argument (a CLI flag) > the environment variable > the default. The
defaults are safe for a laptop: loopback only, one transcription at a time, 25 MB uploads
(OpenAI's own limit), 30 minutes of audio.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from whisperforge.models.presets import DEFAULT_MODEL, ENCODER_DTYPES

BYTES_PER_MB = 1024 * 1024
OPENAI_DEFAULT_ALIAS = "whisper-1"  # OpenAI's one model name; served by the default model
ENV_PREFIX = "WHISPERFORGE_"


@dataclass(frozen=True)
class ServeSettings:
    """What ``create_app`` needs; checked once here.

    ``models`` are the names the server accepts (presets, local folders or hub ids); the first
    is the default, also served as ``whisper-1``. Models load on first use and stay loaded.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = (DEFAULT_MODEL, "whisper-tiny.en")
    api_key: str | None = None  # None: no authentication (fine on loopback)
    max_upload_mb: float = 25.0
    max_audio_seconds: float = 1800.0
    max_concurrency: int = 1  # transcriptions running at once (each uses all torch threads)
    max_queue: int = 16  # requests waiting for a slot; one more gets 429
    queue_timeout: float = 300.0  # seconds a queued request waits before 503
    preload: bool = False  # load every model at startup instead of on first use
    device: str = "cpu"
    # speech tokenizers served at /v1/audio/tokens (names or folders); None: the shipped ones
    tokenizers: tuple[str, ...] | None = None
    # skip non-speech with Silero VAD (True) or not (False) unless a request's ``vad`` field
    # says otherwise; None: each model's own default (``ModelBundle.vad``), off for tokenizers
    vad: bool | None = None
    # precision of the transcription models' encoders (None: the models' own, float32)
    encoder_dtype: str | None = None

    def __post_init__(self) -> None:
        models = self.models
        if isinstance(models, str):
            models = tuple(m.strip() for m in models.split(",") if m.strip())
        models = tuple(dict.fromkeys(models))  # dedupe, keep order
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "tokenizers", _names(self.tokenizers, shipped_tokenizers))
        object.__setattr__(self, "api_key", self.api_key or None)
        if not models:
            raise ValueError("models must name at least one model, e.g. whisper-base")
        if OPENAI_DEFAULT_ALIAS in models:
            raise ValueError(f"'{OPENAI_DEFAULT_ALIAS}' is an alias of the default model")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, not {self.port}")
        if self.max_upload_mb <= 0 or self.max_audio_seconds <= 0 or self.queue_timeout <= 0:
            raise ValueError("max_upload_mb, max_audio_seconds and queue_timeout must be > 0")
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        if self.encoder_dtype not in (None, *ENCODER_DTYPES):
            raise ValueError(
                f"encoder_dtype must be one of {', '.join(ENCODER_DTYPES)}, "
                f"not {self.encoder_dtype!r}"
            )
        if self.vad and not vad_available():
            raise ValueError("vad needs the silero-vad package: pip install 'whisperforge[vad]'")

    @property
    def default_tokenizer(self) -> str | None:
        return self.tokenizers[0] if self.tokenizers else None

    @property
    def default_model(self) -> str:
        return self.models[0]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * BYTES_PER_MB)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ServeSettings:
        """Settings from ``WHISPERFORGE_<FIELD>`` (e.g. ``WHISPERFORGE_API_KEY``,
        ``WHISPERFORGE_MAX_UPLOAD_MB``, ``WHISPERFORGE_MODELS=whisper-base,whisper-tiny.en``),
        then ``overrides`` that are not None on top."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, getattr(cls, f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def vad_available() -> bool:
    """Whether Silero VAD (the ``vad`` extra) is installed."""
    from whisperforge.vad import is_available

    return is_available()


def shipped_tokenizers() -> tuple[str, ...]:
    """Speech tokenizers that ship with the package, the default one first."""
    from whisperforge.models.zoo import DEFAULT_TOKENIZER, zoo_models

    names = [n for n, p in zoo_models().items() if (p / "speech_tokenizer.json").exists()]
    return tuple(sorted(names, key=lambda n: n != DEFAULT_TOKENIZER))


_OPTIONAL_FLAGS = {"vad"}  # true/false fields whose default is None


def _names(value, default) -> tuple[str, ...]:
    """A comma-separated string or a sequence -> unique names in order; None -> default()."""
    if value is None:
        return default()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


def _parse(name: str, raw: str, default):
    try:
        if isinstance(default, bool) or name in _OPTIONAL_FLAGS:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw
