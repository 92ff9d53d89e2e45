"""The HTTP API in-process (FastAPI TestClient) with the real tiny.en / base weights."""

from __future__ import annotations

import io
import json
import os
import random
import wave

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import JFK, JFK_TEXT  # noqa: E402
from whisperforge.audio import SAMPLE_RATE, load_audio  # noqa: E402
from whisperforge.metrics import word_errors  # noqa: E402
from whisperforge.serve.app import create_app  # noqa: E402
from whisperforge.serve.settings import ServeSettings  # noqa: E402

TRANSCRIBE = "/v1/audio/transcriptions"
JFK_BYTES = JFK.read_bytes()


def jfk_file(name: str = "jfk.wav"):
    return {"file": (name, JFK_BYTES, "audio/wav")}


@pytest.fixture(scope="module")
def client():
    settings = ServeSettings(models=("whisper-tiny.en", "whisper-base"))
    with TestClient(create_app(settings)) as c:
        yield c


def assert_error(response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def close_to_jfk(text: str) -> bool:
    return word_errors(JFK_TEXT, text).wer < 0.15


def test_json_is_openai_shape_and_whisper1_is_the_default_model(client):
    r = client.post(TRANSCRIBE, files=jfk_file(), data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["text"]
    assert close_to_jfk(r.json()["text"])


def test_text_srt_vtt(client):
    text = client.post(TRANSCRIBE, files=jfk_file(), data={"response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert close_to_jfk(text.text)
    srt = client.post(TRANSCRIBE, files=jfk_file(), data={"response_format": "srt"})
    assert srt.text.startswith("1\n00:00:00,000 --> ")
    assert "country" in srt.text
    vtt = client.post(TRANSCRIBE, files=jfk_file(), data={"response_format": "vtt"})
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_verbose_json_with_segments(client):
    data = {"response_format": "verbose_json", "timestamp_granularities[]": "segment"}
    r = client.post(TRANSCRIBE, files=jfk_file(), data=data)
    body = r.json()
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == pytest.approx(11.0, abs=0.1)
    assert close_to_jfk(body["text"])
    segments = body["segments"]
    assert segments and segments[0]["start"] == 0.0 and segments[-1]["end"] <= 11.01
    assert all(s["start"] <= s["end"] for s in segments)
    assert {"id", "seek", "tokens", "avg_logprob", "no_speech_prob"} <= set(segments[0])


def test_verbose_json_with_words(client):
    data = {"response_format": "verbose_json", "timestamp_granularities[]": "word"}
    body = client.post(TRANSCRIBE, files=jfk_file(), data=data).json()
    words = body["words"]
    assert "segments" not in body  # OpenAI: only what was asked for
    assert " ".join(w["word"] for w in words) == body["text"]
    assert all(w["start"] <= w["end"] <= 11.01 for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))
    data["timestamp_granularities[]"] = ["word", "segment"]
    both = client.post(TRANSCRIBE, files=jfk_file(), data=data).json()
    assert both["words"] == words and both["segments"]


def test_base_model_language_prompt_and_translation(client):
    data = {"model": "whisper-base", "language": "en", "prompt": "JFK inaugural address."}
    r = client.post(TRANSCRIBE, files=jfk_file(), data=data)
    assert r.status_code == 200, r.text
    assert close_to_jfk(r.json()["text"])
    r = client.post("/v1/audio/translations", files=jfk_file(), data={"model": "whisper-base"})
    assert r.status_code == 200, r.text
    assert "country" in r.json()["text"].lower()


def test_models_list_and_health(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == ["whisper-1", "whisper-tiny.en", "whisper-base"]
    assert all(m["object"] == "model" for m in body["data"])
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["default_model"] == "whisper-tiny.en"
    assert set(health["models"]) == {"whisper-tiny.en", "whisper-base"}
    from whisperforge.models.inference import cpu_has_bf16_matmul

    assert health["vocab_screen"] is cpu_has_bf16_matmul()  # the CPU default


def test_unknown_model_404(client):
    r = client.post(TRANSCRIBE, files=jfk_file(), data={"model": "whisper-large-v9"})
    error = assert_error(r, 404, "model_not_found", "model")
    assert "whisper-tiny.en" in error["message"]  # says what is served


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "2"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"timestamp_granularities[]": "char"}, "timestamp_granularities"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),  # json: no words
        ({"vad": "maybe"}, "vad"),
    ],
)
def test_bad_parameters_400(client, data, param):
    assert_error(client.post(TRANSCRIBE, files=jfk_file(), data=data), 400, param=param)


def test_english_only_model_rejects_french_and_translation(client):
    r = client.post(TRANSCRIBE, files=jfk_file(), data={"language": "fr"})
    assert "English-only" in assert_error(r, 400)["message"]
    r = client.post("/v1/audio/translations", files=jfk_file(), data={"model": "whisper-tiny.en"})
    assert_error(r, 400)


def test_bad_audio_400_names_the_file(client):
    r = client.post(TRANSCRIBE, files={"file": ("notes.mp3", b"this is not audio" * 50)})
    error = assert_error(r, 400, "invalid_audio", "file")
    assert "notes.mp3" in error["message"]
    assert_error(client.post(TRANSCRIBE, files={"file": ("e.wav", b"")}), 400, param="file")
    assert_error(client.post(TRANSCRIBE, data={"model": "whisper-1"}), 400, param="file")
    assert_error(client.post(TRANSCRIBE, content=b"{}"), 400)


def test_fifty_bad_uploads_then_a_good_one(client):
    """Empty, random, truncated and oversized uploads in a row: each a JSON error, server up."""
    rng = random.Random(0)
    huge = rng.randbytes(26 * 1024 * 1024)  # over the 25 MB default limit
    for i in range(50):
        payload = b"" if i % 4 == 0 else rng.randbytes(rng.randint(1, 50_000))
        if i % 5 == 3:  # a real wav header followed by garbage
            payload = JFK_BYTES[:44] + payload
        if i % 10 == 9:
            payload = huge
        r = client.post(TRANSCRIBE, files={"file": (f"bad{i}.wav", payload)})
        assert_error(r, 413 if payload is huge else 400)
    r = client.post(TRANSCRIBE, files=jfk_file())
    assert r.status_code == 200 and close_to_jfk(r.json()["text"])
    assert client.get("/health").json()["status"] == "ok"


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_vad_skips_silence_keeps_file_times_and_follows_the_server_default(client):
    jfk = load_audio(JFK)
    silence = np.zeros(8 * SAMPLE_RATE, np.float32)
    padded = {"file": ("padded.wav", wav_bytes(np.concatenate([silence, jfk, silence])))}
    data = {"response_format": "verbose_json"}
    r = client.post(TRANSCRIBE, files=padded, data={**data, "vad": "true"})
    body = r.json()
    assert r.status_code == 200, r.text
    assert close_to_jfk(body["text"])
    assert body["duration"] == pytest.approx(27.0, abs=0.1)
    assert body["duration_after_vad"] < 14  # the two 8 s silences were not transcribed
    segments = body["segments"]
    assert 7 < segments[0]["start"] < 9 and 17 < segments[-1]["end"] < 20  # times in the file
    plain = client.post(TRANSCRIBE, files=padded, data=data).json()
    assert "duration_after_vad" not in plain and close_to_jfk(plain["text"])
    quiet = {"file": ("quiet.wav", wav_bytes(silence))}
    r = client.post(TRANSCRIBE, files=quiet, data={**data, "vad": "true"})
    assert r.json()["text"] == "" and r.json()["segments"] == []
    # neither --vad nor --no-vad: each model's own default (off for whisper-tiny.en)
    assert client.get("/health").json()["vad"] == {"available": True, "default": None}

    with TestClient(create_app(ServeSettings(models=("whisper-tiny.en",), vad=True))) as vad:
        assert vad.get("/health").json()["vad"]["default"] is True
        assert vad.post(TRANSCRIBE, files=quiet, data=data).json()["segments"] == []
        off = vad.post(TRANSCRIBE, files=padded, data={**data, "vad": "false"}).json()
        assert "duration_after_vad" not in off and close_to_jfk(off["text"])


def test_vad_without_silero_is_a_clear_400(client, monkeypatch):
    import whisperforge.serve.app as app_module
    import whisperforge.serve.settings as settings_module

    monkeypatch.setattr(app_module, "vad_available", lambda: False)
    monkeypatch.setattr(settings_module, "vad_available", lambda: False)
    r = client.post(TRANSCRIBE, files=jfk_file(), data={"vad": "true"})
    assert "silero-vad" in assert_error(r, 400, param="vad")["message"]
    assert close_to_jfk(client.post(TRANSCRIBE, files=jfk_file()).json()["text"])
    with pytest.raises(ValueError, match="silero-vad"):
        ServeSettings(vad=True)


def test_bfloat16_encoder_server_transcribes_and_says_so():
    import torch

    from whisperforge.models.inference import ENCODER_DTYPES
    from whisperforge.serve.settings import ENCODER_DTYPES as SETTINGS_DTYPES

    assert SETTINGS_DTYPES == tuple(ENCODER_DTYPES)
    settings = ServeSettings(models=("whisper-tiny.en",), encoder_dtype="bfloat16")
    with TestClient(create_app(settings)) as fast:
        assert fast.get("/health").json()["encoder_dtype"] == "bfloat16"
        r = fast.post(TRANSCRIBE, files=jfk_file())
        assert r.status_code == 200, r.text
        assert close_to_jfk(r.json()["text"])
        pool = fast.app.state.pool
        assert pool.get("whisper-tiny.en").session.encoder_dtype == torch.bfloat16


def test_too_large_413_by_length_and_by_stream():
    settings = ServeSettings(models=("whisper-tiny.en",), max_upload_mb=0.1)  # jfk is 344 KB
    client = TestClient(create_app(settings))
    assert_error(client.post(TRANSCRIBE, files=jfk_file()), 413, "file_too_large", "file")

    # chunked upload without Content-Length: counted while it arrives
    boundary = "wfboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="j.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    body = head + JFK_BYTES + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    r = client.post(TRANSCRIBE, content=chunks(), headers=headers)
    assert_error(r, 413, "file_too_large")
    # the models were never loaded for these
    assert client.get("/health").json()["models"] == {"whisper-tiny.en": "not loaded"}


def test_audio_longer_than_the_limit_400():
    client = TestClient(create_app(ServeSettings(models=("whisper-tiny.en",), max_audio_seconds=5)))
    r = client.post(TRANSCRIBE, files=jfk_file())
    assert "at most 5 s" in assert_error(r, 400, "audio_too_long")["message"]


def test_api_key():
    client = TestClient(create_app(ServeSettings(models=("whisper-tiny.en",), api_key="s3cret")))
    assert_error(client.get("/v1/models"), 401, "invalid_api_key")
    wrong = {"Authorization": "Bearer nope"}
    assert_error(client.post(TRANSCRIBE, files=jfk_file(), headers=wrong), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.post(TRANSCRIBE, files=jfk_file(), headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and close_to_jfk(r.json()["text"])
    assert client.get("/health").status_code == 200  # liveness needs no key
    assert client.get("/").status_code == 200  # the page asks for the key itself


def test_queue_full_429_and_overloaded_503():
    import anyio

    from whisperforge.serve.app import APIError, _Admission

    async def scenario(settings, expected_status):
        admission = _Admission(settings)
        statuses = []

        async def second():
            try:
                async with admission.slot():
                    statuses.append(200)
            except APIError as error:
                statuses.append(error.status)

        async with admission.slot():  # holds the only slot
            await second()
        async with admission.slot():  # released: the next one runs
            statuses.append(200)
        assert statuses == [expected_status, 200]
        assert admission.status()["rejected"] == 1 and admission.running == 0

    base = ServeSettings(models=("whisper-tiny.en",), max_concurrency=1)
    no_queue = ServeSettings(**{**base.__dict__, "max_queue": 0})
    short_wait = ServeSettings(**{**base.__dict__, "max_queue": 4, "queue_timeout": 0.05})
    anyio.run(scenario, no_queue, 429)
    anyio.run(scenario, short_wait, 503)


def test_index_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>whisperforge</title>" in page.text
    assert "http" not in page.text.split("<body>")[0].replace('href="/static', "")  # no CDN
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert client.get("/static/app.css").status_code == 200
    # the word-timing box asks for the word granularity the API answers (test_verbose_json_...)
    assert 'id="words"' in page.text and '"timestamp_granularities[]", "word"' in script.text


def test_settings_from_env_and_flags(monkeypatch):
    import argparse

    from whisperforge.serve.cli import add_parser, settings_from_args

    env = {"WHISPERFORGE_API_KEY": "k", "WHISPERFORGE_MAX_QUEUE": "3",
           "WHISPERFORGE_MODELS": "whisper-tiny.en, whisper-base",
           "WHISPERFORGE_VAD": "yes", "WHISPERFORGE_ENCODER_DTYPE": "float16"}  # fmt: skip
    monkeypatch.setattr(os, "environ", {**os.environ, **env})
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    settings = settings_from_args(
        parser.parse_args(["serve", "--max-queue", "5", "--encoder-dtype", "bfloat16"])
    )
    assert settings.encoder_dtype == "bfloat16"  # the flag beats WHISPERFORGE_ENCODER_DTYPE
    assert settings.api_key == "k" and settings.max_queue == 5  # a flag beats the env
    assert settings.models == ("whisper-tiny.en", "whisper-base")
    assert settings.host == "127.0.0.1"  # loopback unless asked
    assert settings.vad is True
    assert settings_from_args(parser.parse_args(["serve", "--no-vad"])).vad is False
    assert ServeSettings.from_env({"WHISPERFORGE_VAD": "0"}).vad is False  # never
    assert ServeSettings.from_env({}).vad is None  # each model's own default
    with pytest.raises(ValueError, match="alias"):
        ServeSettings(models=("whisper-1",))
    with pytest.raises(ValueError, match="encoder_dtype must be one of float32, bfloat16"):
        ServeSettings(encoder_dtype="int8")
    with pytest.raises(ValueError, match="not a number"):
        ServeSettings.from_env({"WHISPERFORGE_PORT": "eighty"})
    assert json.loads(json.dumps(settings.models)) == ["whisper-tiny.en", "whisper-base"]
