"""Speech tokens over HTTP: /v1/audio/tokens and /v1/tokens/transcribe, in-process, with the
real whisper-tiny.en and an untrained seeded bottleneck saved as a tokenizer folder (the
endpoints must give exactly what the library gives)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import JFK  # noqa: E402
from whisperforge.models.vq import whisper_vq_tiny  # noqa: E402
from whisperforge.serve.app import create_app  # noqa: E402
from whisperforge.serve.settings import ServeSettings  # noqa: E402
from whisperforge.tokens import SpeechTokenizer, from_llm_text  # noqa: E402

TOKENS = "/v1/audio/tokens"
READ_BACK = "/v1/tokens/transcribe"


@pytest.fixture(scope="module")
def folder(tiny_en, tmp_path_factory):
    torch.manual_seed(0)
    speech = SpeechTokenizer(whisper_vq_tiny(codebook_size=256), tiny_en, "whisper-tiny.en")
    return speech.save(tmp_path_factory.mktemp("tok") / "vq-tiny")


@pytest.fixture(scope="module")
def speech(folder, tiny_en):
    return SpeechTokenizer.load(folder, whisper=tiny_en)


@pytest.fixture(scope="module")
def client(folder):
    settings = ServeSettings(models=("whisper-tiny.en",), tokenizers=(str(folder),))
    with TestClient(create_app(settings)) as c:
        yield c


def jfk():
    return {"file": ("jfk.wav", JFK.read_bytes(), "audio/wav")}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_tokens_match_the_library(client, speech, folder):
    response = client.post(TOKENS, files=jfk(), data={"transcribe": "true", "language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = speech.tokenize(JFK)
    assert body["tokens"] == expected and body["n_tokens"] == len(expected) == 275
    assert body["duration"] == 11.0 and body["tokens_per_second"] == 25.0
    assert body["codebook_size"] == 257 and body["model"] == str(folder)
    assert from_llm_text(body["llm"]) == expected
    assert body["text"] == speech.transcribe_tokens([expected])[0]
    assert "text" not in client.post(TOKENS, files=jfk()).json()  # only when asked
    llm = client.post(TOKENS, files=jfk(), data={"response_format": "llm"})
    assert llm.headers["content-type"].startswith("text/plain")
    assert from_llm_text(llm.text) == expected
    ids = client.post(TOKENS, files=jfk(), data={"response_format": "ids"})
    assert [int(i) for i in ids.text.split()] == expected
    assert client.get("/health").json()["tokenizers"] == {str(folder): "loaded"}
    # the tokenizer's Whisper model is served too: one copy of its weights, one session
    loaded = client.app.state.tokenizers.get(str(folder))
    transcriber = client.app.state.pool.get("whisper-tiny.en")
    assert loaded.whisper is transcriber.bundle and loaded.session is transcriber.session


def test_read_tokens_back(client, speech):
    ids = speech.tokenize(JFK)
    text = speech.transcribe_tokens([ids])[0]
    assert client.post(READ_BACK, json={"tokens": ids}).json() == {
        "model": speech_model(client),
        "n_tokens": 275,
        "text": text,
    }
    llm = client.post(TOKENS, files=jfk(), data={"response_format": "llm"}).text
    assert client.post(READ_BACK, json={"llm": llm}).json()["text"] == text
    assert client.post(READ_BACK, json={"tokens": []}).json()["text"] == ""


def test_vad_tokenizes_only_the_speech_and_follows_the_server_default(client, speech, folder):
    import io

    import numpy as np
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, load_audio

    audio = np.concatenate([np.zeros(10 * SAMPLE_RATE, np.float32), load_audio(JFK)])
    data = io.BytesIO()
    sf.write(data, audio, SAMPLE_RATE, format="WAV")
    late = {"file": ("late.wav", data.getvalue(), "audio/wav")}
    body = client.post(TOKENS, files=late, data={"vad": "true"}).json()
    assert body["tokens"] == speech.tokenize(audio, vad=True) and body["duration"] == 21.0
    assert 11 <= body["duration_after_vad"] < 13 and body["n_tokens"] < 330
    plain = client.post(TOKENS, files=late).json()  # the server's default: off
    assert "duration_after_vad" not in plain and plain["n_tokens"] == 525
    quiet = io.BytesIO()
    sf.write(quiet, np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE, format="WAV")
    silent = {"file": ("quiet.wav", quiet.getvalue(), "audio/wav")}
    body = client.post(TOKENS, files=silent, data={"vad": "true", "transcribe": "true"}).json()
    assert body["tokens"] == [] and body["text"] == "" and body["duration_after_vad"] == 0.0
    settings = ServeSettings(models=("whisper-tiny.en",), tokenizers=(str(folder),), vad=True)
    with TestClient(create_app(settings)) as on:
        assert on.post(TOKENS, files=silent).json()["tokens"] == []
        assert on.post(TOKENS, files=silent, data={"vad": "false"}).json()["n_tokens"] == 50


def test_vad_without_silero_is_a_clear_400(client, monkeypatch):
    import whisperforge.serve.app as app_module

    monkeypatch.setattr(app_module, "vad_available", lambda: False)
    error = error_of(client.post(TOKENS, files=jfk(), data={"vad": "true"}), 400)
    assert error["param"] == "vad" and "silero-vad" in error["message"]
    assert client.post(TOKENS, files=jfk()).json()["n_tokens"] == 275


def speech_model(client) -> str:
    return next(iter(client.get("/health").json()["tokenizers"]))


def test_bad_requests_get_clear_errors(client):
    error = error_of(client.post(READ_BACK, json={"tokens": [1, 257]}), 400)
    assert "outside 0..256" in error["message"]
    both = client.post(READ_BACK, json={"tokens": [1], "llm": "x"})
    assert error_of(both, 400)["param"] == "tokens"
    assert error_of(client.post(READ_BACK, json={"tokens": ["a"]}), 400)["param"] == "tokens"
    assert error_of(client.post(READ_BACK, json={"llm": "hello"}), 400)["param"] == "llm"
    assert error_of(client.post(READ_BACK, content=b"{not json"), 400)["code"] == "invalid_value"
    bad_audio = {"file": ("x.wav", b"RIFF not really audio", "audio/wav")}
    assert error_of(client.post(TOKENS, files=bad_audio), 400)["code"] == "invalid_audio"
    fmt = error_of(client.post(TOKENS, files=jfk(), data={"response_format": "srt"}), 400)
    assert fmt["param"] == "response_format"
    other = error_of(client.post(TOKENS, files=jfk(), data={"model": "nope"}), 404)
    assert other["code"] == "model_not_found" and "served:" in other["message"]
    assert client.post(TOKENS, files=jfk()).status_code == 200  # the server carries on


def test_no_tokenizer_served_says_how_to_serve_one():
    settings = ServeSettings(models=("whisper-tiny.en",), tokenizers=())
    with TestClient(create_app(settings)) as c:
        error = error_of(c.post(TOKENS, files=jfk()), 404)
    assert "--tokenizers" in error["message"]


def test_tokenizers_from_the_environment(folder):
    env = {"WHISPERFORGE_TOKENIZERS": f"{folder}, other"}
    assert ServeSettings.from_env(env).tokenizers == (str(folder), "other")


def test_a_bfloat16_server_tokenizes_as_the_library_does_in_bfloat16(folder, tiny_en):
    fast = SpeechTokenizer.load(folder, whisper=tiny_en, encoder_dtype="bfloat16")
    settings = ServeSettings(models=("whisper-tiny.en",), tokenizers=(str(folder),),
                             encoder_dtype="bfloat16")  # fmt: skip
    with TestClient(create_app(settings)) as c:
        response = c.post(TOKENS, files=jfk())
        assert response.status_code == 200, response.text
        assert response.json()["tokens"] == fast.tokenize(JFK)
        assert c.get("/health").json()["encoder_dtype"] == "bfloat16"
