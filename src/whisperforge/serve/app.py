"""The HTTP server: an OpenAI-compatible speech-to-text API and a small web demo.

``create_app(settings)`` builds a FastAPI app (no global state; tests build one per case):

- ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's multipart form
  (``file``, ``model``, ``language``, ``prompt``, ``temperature``, ``response_format``,
  ``timestamp_granularities[]``) so the official ``openai`` client works unchanged; one field
  of our own, ``vad`` (true/false; default the server's ``--vad``, else the model's), skips
  non-speech.
- ``POST /v1/audio/tokens``: speech -> discrete speech tokens (25 per second) from a served
  speech tokenizer, as ids, LLM text (``<|sound_start|><|sound_0123|>...<|sound_end|>``), and
  optionally the text the Whisper decoder reads back from them (``vad`` as above: only the
  speech is tokenized); ``POST /v1/tokens/transcribe``: ids (or LLM text) -> text.
- ``GET /v1/models`` (OpenAI's list shape), ``GET /health``, and the demo page at ``/``.

Request path: ``_Guard`` (ASGI middleware: API key, upload size, before the body is read) ->
form checks -> ``_Admission`` (bounded queue -> 429, wait too long -> 503, then a slot out of
``max_concurrency``) -> a worker thread decodes the audio and transcribes with the model's warm
``Transcriber`` (loaded once, on first use, under a per-model lock) -> the response format.
Every error is OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``; a
stack trace is logged, never sent.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisperforge.audio import FRAMES_PER_SECOND, SAMPLE_RATE, AudioError, load_audio
from whisperforge.models.inference import cpu_has_bf16_matmul
from whisperforge.serve.settings import OPENAI_DEFAULT_ALIAS, ServeSettings, vad_available

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
FORM_OVERHEAD_BYTES = 64 * 1024  # room for the form's other fields and part headers
MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


class APIError(Exception):
    """An error the client caused or should hear about; rendered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code,
        )  # fmt: skip


def error_body(message: str, type: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(error: APIError) -> JSONResponse:
    body = error_body(error.message, error.type, error.param, error.code)
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers)


# -- models ------------------------------------------------------------------------------


class _WarmPool:
    """Objects loaded on first use, once, under a lock per name, then kept (warm)."""

    kind = "model"  # for messages

    def __init__(self, settings: ServeSettings, names: tuple[str, ...]):
        self.settings = settings
        self._loaded: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in names}

    def _not_served(self, name: str) -> APIError:
        served = ", ".join(self._locks) or "none"
        return APIError(
            404, f"The {self.kind} '{name}' is not served here; served: {served}",
            param="model", code="model_not_found",
        )  # fmt: skip

    def status(self) -> dict[str, str]:
        return {m: "loaded" if m in self._loaded else "not loaded" for m in self._locks}

    def _load(self, name: str):
        raise NotImplementedError

    def get(self, name: str):
        """The loaded object; blocking (call from a worker thread)."""
        if name in self._loaded:
            return self._loaded[name]
        from whisperforge.models.loading import ModelNotFoundError
        from whisperforge.models.presets import WeightsNotInstalledError

        with self._locks[name]:
            if name not in self._loaded:
                started = time.perf_counter()
                try:
                    self._loaded[name] = self._load(name)
                except (ModelNotFoundError, WeightsNotInstalledError, OSError, ImportError,
                        ValueError) as error:  # fmt: skip
                    logger.error("cannot load %s %r: %s", self.kind, name, error)
                    raise APIError(
                        503, f"{self.kind} '{name}' cannot be loaded on this server: {error}",
                        type="server_error", param="model", code="model_unavailable",
                    ) from error  # fmt: skip
                logger.info("loaded %s in %.1f s", name, time.perf_counter() - started)
        return self._loaded[name]


class ModelPool(_WarmPool):
    """One warm ``Transcriber`` per served model."""

    def __init__(self, settings: ServeSettings):
        super().__init__(settings, settings.models)

    def resolve(self, requested: str | None) -> str:
        """The served model for a request's ``model`` field; ``whisper-1`` is the default."""
        name = (requested or "").strip() or OPENAI_DEFAULT_ALIAS
        if name == OPENAI_DEFAULT_ALIAS:
            return self.settings.default_model
        if name not in self._locks:
            raise APIError(
                404, f"The model '{name}' does not exist on this server; served: "
                f"{', '.join([OPENAI_DEFAULT_ALIAS, *self.settings.models])}",
                param="model", code="model_not_found",
            )  # fmt: skip
        return name

    def _load(self, name: str):
        from whisperforge.transcribe import Transcriber

        return Transcriber(
            name, device=self.settings.device, encoder_dtype=self.settings.encoder_dtype
        )


class TokenizerPool(_WarmPool):
    """One warm ``SpeechTokenizer`` per served speech tokenizer. A tokenizer whose Whisper
    model is also served for transcription (``whisper-vq-base`` in ``whisper-base``) shares
    that model's weights and session with ``models`` instead of loading a second copy."""

    kind = "speech tokenizer"

    def __init__(self, settings: ServeSettings, models: ModelPool | None = None):
        super().__init__(settings, settings.tokenizers)
        self.models = models

    def resolve(self, requested: str | None) -> str:
        name = (requested or "").strip() or self.settings.default_tokenizer
        if name is None:
            raise APIError(
                404, "No speech tokenizer is served; start the server with --tokenizers "
                "NAME_OR_FOLDER (a folder written by 'whisperforge tokenizer train')",
                param="model", code="model_not_found",
            )  # fmt: skip
        if name not in self._locks:
            raise self._not_served(name)
        return name

    def _load(self, name: str):
        from whisperforge.tokens import SpeechTokenizer, tokenizer_meta

        teacher = tokenizer_meta(name)["teacher"]
        if self.models is not None and teacher in self.settings.models:
            transcriber = self.models.get(teacher)  # the same weights, loaded once
            return SpeechTokenizer.load(name, whisper=transcriber.bundle,
                                        session=transcriber.session)  # fmt: skip
        return SpeechTokenizer.load(
            name, device=self.settings.device, encoder_dtype=self.settings.encoder_dtype
        )


# -- admission: bounded concurrency + bounded queue --------------------------------------


class _Admission:
    """At most ``max_concurrency`` transcriptions run; at most ``max_queue`` wait.

    A request that finds the queue full gets 429 at once; one that waits longer than
    ``queue_timeout`` seconds gets 503. anyio primitives, so it works under any event loop.
    """

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self._slots = anyio.Semaphore(settings.max_concurrency)
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.rejected = 0

    @asynccontextmanager
    async def slot(self):
        if self._slots.value == 0 and self.waiting >= self.settings.max_queue:
            self.rejected += 1
            raise APIError(
                429, f"Too many requests: {self.waiting} already waiting "
                f"(max_queue {self.settings.max_queue}); retry later",
                type="rate_limit_error", code="queue_full",
            )  # fmt: skip
        self.waiting += 1
        try:
            with anyio.fail_after(self.settings.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.rejected += 1
            raise APIError(
                503, f"Server overloaded: no transcription slot within "
                f"{self.settings.queue_timeout:g} s; retry later",
                type="server_error", code="overloaded",
            ) from None  # fmt: skip
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self.served += 1
            self._slots.release()

    def status(self) -> dict[str, int]:
        return {
            "running": self.running, "waiting": self.waiting, "served": self.served,
            "rejected": self.rejected, "max_concurrency": self.settings.max_concurrency,
            "max_queue": self.settings.max_queue,
        }  # fmt: skip


# -- guard: API key and body size, before the body is read -------------------------------


class _Guard:
    """ASGI middleware for ``/v1/``: 401 without the right Bearer key, 413 for big bodies.

    The size check trusts a ``Content-Length`` first and also counts the bytes of a chunked
    body: once they pass the limit the app sees a disconnect, and its response is replaced.
    """

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings
        self.limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._authorized(headers.get("authorization", "")):
            error = APIError(
                401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )  # fmt: skip
            await _error_response(error)(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        expected = self.settings.api_key
        if expected is None:
            return True
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(given.encode(), expected.encode())

    async def _too_large(self, scope, receive, send) -> None:
        error = APIError(
            413, f"File too large: the limit is {self.settings.max_upload_mb:g} MB",
            param="file", code="file_too_large",
        )  # fmt: skip
        await _error_response(error)(scope, receive, send)

    async def _counted(self, scope, receive, send) -> None:
        seen = 0
        exceeded = False
        started = False

        async def counting_receive():
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                return  # the app's reply to the fake disconnect is dropped; 413 goes instead
            started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._too_large(scope, receive, send)


# -- responses -----------------------------------------------------------------------------


def _language_name(code: str) -> str:
    from whisperforge.tokenizer import LANGUAGES

    return LANGUAGES.get(code, code)


def _verbose(segments, info, task: str, granularities: tuple[str, ...] = ()) -> dict[str, Any]:
    """OpenAI's ``verbose_json``: task, language name, duration, text, segments; with the
    ``word`` granularity ``words`` too (``word``, ``start``, ``end``: OpenAI's fields), and
    with only that one no segments, as OpenAI answers."""
    body = {
        "task": task,
        "language": _language_name(info.language),
        "duration": round(info.duration, 3),
        "text": "".join(s.text for s in segments).strip(),
        "segments": [
            {
                "id": i,
                "seek": int(s.start * FRAMES_PER_SECOND),
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }  # fmt: skip
            for i, s in enumerate(segments)
        ],
        "model": info.model,
        **({} if info.duration_after_vad is None else
           {"duration_after_vad": round(info.duration_after_vad, 3)}),
    }  # fmt: skip
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in segments
            for w in s.words or ()
        ]
        if "segment" not in granularities:
            del body["segments"]
    return body


def _finite(value: Any) -> Any:
    # NaN/Infinity are not JSON; browsers and OpenAI clients reject them.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def render(
    segments, info, response_format: str, task: str, granularities: tuple[str, ...] = ()
) -> Response:
    """The response body in ``response_format`` (checked already)."""
    from whisperforge.writers import format_result

    if response_format == "json":
        return JSONResponse({"text": "".join(s.text for s in segments).strip()})
    if response_format == "verbose_json":
        return JSONResponse(_finite(_verbose(segments, info, task, granularities)))
    text = (
        "".join(s.text for s in segments).strip() + "\n"
        if response_format == "text"
        else format_result(segments, info, response_format)
    )
    return PlainTextResponse(text, media_type=MEDIA_TYPES[response_format])


# -- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    model: str
    data: bytes
    filename: str
    options: dict[str, Any]
    response_format: str
    granularities: tuple[str, ...] = ()


def _language_option(language: str | None) -> str | None:
    from whisperforge.tokenizer import normalize_language

    if not language:
        return None
    try:
        return normalize_language(language)
    except ValueError as error:
        raise APIError(400, str(error), param="language", code="invalid_value") from None


def _response_format(value: str | None, allowed: tuple[str, ...]) -> str:
    fmt = (value or "json").strip().lower()
    if fmt not in allowed:
        raise APIError(
            400, f"response_format must be one of {', '.join(allowed)}, not {fmt!r}",
            param="response_format", code="invalid_value",
        )  # fmt: skip
    return fmt


def _check_form(
    pool: ModelPool, task: str, model, language, prompt, temperature, response_format, grans, vad
) -> tuple[str, dict[str, Any], str]:
    name = pool.resolve(model)
    fmt = _response_format(response_format, RESPONSE_FORMATS)
    for g in grans or []:
        if g not in GRANULARITIES:
            raise APIError(
                400, f"timestamp_granularities {g!r} is not supported; use 'segment' or 'word'",
                param="timestamp_granularities", code="invalid_value",
            )  # fmt: skip
    if "word" in (grans or []) and fmt != "verbose_json":
        raise APIError(
            400, "timestamp_granularities 'word' needs response_format verbose_json",
            param="timestamp_granularities", code="invalid_value",
        )  # fmt: skip
    if temperature is not None and not 0 <= temperature <= 1:
        raise APIError(400, "temperature must be between 0 and 1", param="temperature")
    options: dict[str, Any] = {"task": task}
    if language:
        options["language"] = _language_option(language)
    if prompt:
        options["initial_prompt"] = prompt
    if temperature:  # OpenAI: 0 (the default) means "raise it automatically when needed"
        options["temperature"] = (temperature,)
    if "word" in (grans or []):
        options["word_timestamps"] = True
    vad = _vad_option(pool.settings, vad)
    if vad is not None:
        options["vad"] = vad
    return name, options, fmt


def _vad_option(settings: ServeSettings, vad: bool | None) -> bool | None:
    """A request's ``vad`` field, else the server's ``--vad``/``--no-vad``, else None (the
    model's own default); 400 where VAD is asked for and cannot run."""
    if vad is None:
        vad = settings.vad
    if vad and not vad_available():
        raise APIError(
            400, "vad is not available on this server (it needs the silero-vad package)",
            param="vad", code="unsupported_value",
        )  # fmt: skip
    return vad


def _decode_upload(settings: ServeSettings, data: bytes, filename: str):
    """The upload's 16 kHz samples; 400 for a file that does not decode or is too long."""
    try:
        audio = load_audio(data)
    except AudioError as error:
        message = str(error).replace("'<bytes>'", repr(filename))
        raise APIError(
            400, f"Invalid file: {message}", param="file", code="invalid_audio"
        ) from None
    duration = len(audio) / SAMPLE_RATE
    if duration > settings.max_audio_seconds:
        raise APIError(
            400, f"Audio is {duration:.0f} s long; this server accepts at most "
            f"{settings.max_audio_seconds:g} s", param="file", code="audio_too_long",
        )  # fmt: skip
    return audio


def _run_job(pool: ModelPool, settings: ServeSettings, job: _Job):
    """Decode, check the duration, transcribe; blocking, runs in a worker thread."""
    audio = _decode_upload(settings, job.data, job.filename)
    transcriber = pool.get(job.model)
    try:
        segments, info = transcriber.transcribe(audio, **job.options)
        return list(segments), info
    except ValueError as error:  # options this model cannot honour (English-only, ...)
        raise APIError(400, str(error), code="invalid_value") from None


async def _read_upload(request: Request, file: UploadFile) -> bytes:
    app = request.app
    data = await file.read()
    if not data:
        raise APIError(400, "Invalid file: the uploaded file is empty", param="file",
                       code="invalid_audio")  # fmt: skip
    if len(data) > app.state.settings.max_upload_bytes:
        raise APIError(413, f"File too large: the limit is {app.state.settings.max_upload_mb:g} MB",
                       param="file", code="file_too_large")  # fmt: skip
    return data


async def _handle(request: Request, task: str, file: UploadFile, form: dict) -> Response:
    app = request.app
    pool: ModelPool = app.state.pool
    name, options, fmt = _check_form(pool, task, **form)
    data = await _read_upload(request, file)
    grans = tuple(form.get("grans") or ())
    job = _Job(name, data, file.filename or "upload", options, fmt, grans)
    started = time.perf_counter()
    async with app.state.admission.slot():
        segments, info = await run_in_threadpool(_run_job, pool, app.state.settings, job)
    logger.info(
        "%s %s %.1f s audio in %.2f s", task, name, info.duration, time.perf_counter() - started
    )
    return render(segments, info, fmt, task, job.granularities)


# -- speech tokens -------------------------------------------------------------------------

TOKEN_FORMATS = ("json", "llm", "ids")


def _tokens_job(
    tokenizers: TokenizerPool, settings: ServeSettings, name: str, data: bytes, filename: str,
    transcribe: bool, language: str | None, vad: bool | None,
) -> dict[str, Any]:  # fmt: skip
    """Decode, tokenize (only the speech, with ``vad``; None: as the tokenizer's config
    says) and (if asked) read the tokens back; blocking, in a worker thread."""
    from whisperforge.tokens import to_llm_text
    from whisperforge.vad import speech_only

    audio = _decode_upload(settings, data, filename)
    speech = tokenizers.get(name)
    vad = bool(speech.uses_vad(vad))
    kept = speech_only(audio, vad)
    ids = speech.tokenize(kept, vad=False)  # no speech kept: no ids
    body: dict[str, Any] = {
        "model": name, "duration": round(len(audio) / SAMPLE_RATE, 3),
        "tokens_per_second": speech.config.tokens_per_second, "n_tokens": len(ids),
        "codebook_size": speech.config.n_ids, "tokens": ids, "llm": to_llm_text(ids),
    }  # fmt: skip
    if vad:
        body["duration_after_vad"] = round(len(kept) / SAMPLE_RATE, 3)
    if transcribe:
        try:
            body["text"] = speech.transcribe_tokens([ids], language=language)[0] if ids else ""
        except ValueError as error:  # a language an English-only model cannot honour
            raise APIError(400, str(error), param="language", code="invalid_value") from None
    return body


def _parse_ids(tokens: Any, llm: Any) -> list[int]:
    from whisperforge.tokens import from_llm_text

    if (tokens is None) == (llm is None):
        raise APIError(400, "send exactly one of 'tokens' (a list of ids) or 'llm' (text)",
                       param="tokens", code="invalid_value")  # fmt: skip
    if llm is not None:
        if not isinstance(llm, str):
            raise APIError(400, "'llm' must be a string", param="llm", code="invalid_value")
        try:
            return from_llm_text(llm)
        except ValueError as error:
            raise APIError(400, str(error), param="llm", code="invalid_value") from None
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise APIError(400, "'tokens' must be a list of integer ids", param="tokens",
                       code="invalid_value")  # fmt: skip
    return tokens


def _transcribe_ids_job(tokenizers: TokenizerPool, name: str, ids: list[int],
                        language: str | None) -> dict[str, Any]:  # fmt: skip
    speech = tokenizers.get(name)
    try:
        text = speech.transcribe_tokens([ids], language=language)[0] if ids else ""
    except ValueError as error:  # ids outside the codebook, unknown language
        raise APIError(400, str(error), param="tokens", code="invalid_value") from None
    return {"model": name, "n_tokens": len(ids), "text": text}


# -- the app -------------------------------------------------------------------------------

FileField = Annotated[UploadFile, File(description="audio file: wav, flac, mp3, m4a, webm, ...")]
OptionalStr = Annotated[str | None, Form()]


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The server for ``settings`` (default: ``ServeSettings.from_env()``)."""
    settings = settings or ServeSettings.from_env()
    pool = ModelPool(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.preload:
            for name in settings.models:
                await run_in_threadpool(pool.get, name)
        yield

    # Swagger UI / ReDoc load their scripts from a CDN; the schema is served, the pages are not
    app = FastAPI(
        title="whisperforge",
        summary="OpenAI-compatible speech to text",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.tokenizers = tokenizers = TokenizerPool(settings, pool)
    app.state.admission = _Admission(settings)
    app.add_middleware(_Guard, settings=settings)
    _add_error_handlers(app)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: FileField,
        model: Annotated[str, Form()] = OPENAI_DEFAULT_ALIAS,
        language: OptionalStr = None,
        prompt: OptionalStr = None,
        temperature: Annotated[float | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        timestamp_granularities: Annotated[
            list[str] | None, Form(alias="timestamp_granularities[]")
        ] = None,
        vad: Annotated[bool | None, Form()] = None,
    ) -> Response:
        form = dict(model=model, language=language, prompt=prompt, temperature=temperature,
                    response_format=response_format, grans=timestamp_granularities,
                    vad=vad)  # fmt: skip
        return await _handle(request, "transcribe", file, form)

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: FileField,
        model: Annotated[str, Form()] = OPENAI_DEFAULT_ALIAS,
        prompt: OptionalStr = None,
        temperature: Annotated[float | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        vad: Annotated[bool | None, Form()] = None,
    ) -> Response:
        form = dict(model=model, language=None, prompt=prompt, temperature=temperature,
                    response_format=response_format, grans=None, vad=vad)  # fmt: skip
        return await _handle(request, "translate", file, form)

    @app.post("/v1/audio/tokens")
    async def speech_tokens(
        request: Request,
        file: FileField,
        model: OptionalStr = None,
        response_format: Annotated[str, Form()] = "json",
        transcribe: Annotated[bool, Form()] = False,
        language: OptionalStr = None,
        vad: Annotated[bool | None, Form()] = None,
    ) -> Response:
        name = tokenizers.resolve(model)
        fmt = _response_format(response_format, TOKEN_FORMATS)
        lang = _language_option(language)
        use_vad = _vad_option(settings, vad)  # None: the tokenizer's default
        data = await _read_upload(request, file)
        started = time.perf_counter()
        async with app.state.admission.slot():
            body = await run_in_threadpool(
                _tokens_job, tokenizers, settings, name, data, file.filename or "upload",
                transcribe, lang, use_vad,
            )  # fmt: skip
        logger.info("tokens %s %.1f s audio in %.2f s", name, body["duration"],
                    time.perf_counter() - started)  # fmt: skip
        if fmt == "llm":
            return PlainTextResponse(body["llm"])
        if fmt == "ids":
            return PlainTextResponse(" ".join(map(str, body["tokens"])))
        return JSONResponse(body)

    @app.post("/v1/tokens/transcribe")
    async def transcribe_speech_tokens(request: Request) -> dict[str, Any]:
        try:
            payload = await request.json()
        except ValueError:
            raise APIError(400, "send a JSON body: {\"tokens\": [...]} or {\"llm\": \"...\"}",
                           code="invalid_value") from None  # fmt: skip
        if not isinstance(payload, dict):
            raise APIError(400, "the JSON body must be an object", code="invalid_value")
        name = tokenizers.resolve(payload.get("model"))
        ids = _parse_ids(payload.get("tokens"), payload.get("llm"))
        lang = _language_option(payload.get("language"))
        async with app.state.admission.slot():
            return await run_in_threadpool(_transcribe_ids_job, tokenizers, name, ids, lang)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [OPENAI_DEFAULT_ALIAS, *settings.models]
        return {
            "object": "list",
            "data": [
                {
                    "id": n,
                    "object": "model",
                    "created": 0,
                    "owned_by": "whisperforge",
                    "default": n in (OPENAI_DEFAULT_ALIAS, settings.default_model),
                }  # fmt: skip
                for n in names
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "default_model": settings.default_model,
            "models": pool.status(),
            "tokenizers": tokenizers.status(),
            "queue": app.state.admission.status(),
            "auth": settings.api_key is not None,
            "max_upload_mb": settings.max_upload_mb,
            "max_audio_seconds": settings.max_audio_seconds,
            "vad": {"available": vad_available(), "default": settings.vad},
            "encoder_dtype": settings.encoder_dtype or "float32",
            # decoding's vocabulary projection screened in bfloat16 (InferenceSession)
            "vocab_screen": settings.device == "cpu" and cpu_has_bf16_matmul(),
        }

    static = resources.files("whisperforge.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, error: RequestValidationError) -> JSONResponse:
        first = (error.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query")]
        param = loc[0] if loc else None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "Invalid request"
        if param == "file" and first.get("type") == "missing":
            message = "Missing the 'file' field: upload the audio as multipart form data"
        return _error_response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if error.status_code < 500 else "server_error"
        return _error_response(APIError(error.status_code, str(error.detail), type=type_))

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(
            APIError(500, "Internal server error; see the server log", type="server_error")
        )
