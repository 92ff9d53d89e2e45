"""The real server on loopback: the official ``openai`` client, and the web page in Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import JFK, JFK_TEXT  # noqa: E402
from whisperforge.metrics import word_errors  # noqa: E402
from whisperforge.serve.settings import ServeSettings  # noqa: E402
from whisperforge.serve.testing import background_server  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update",
]  # fmt: skip


@pytest.fixture(scope="module")
def server_url():
    settings = ServeSettings(models=("whisper-tiny.en", "whisper-base"), api_key="test-key")
    with background_server(settings) as url:
        yield url


def test_official_openai_client(server_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="test-key", base_url=server_url + "/v1", max_retries=0)
    with open(JFK, "rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert word_errors(JFK_TEXT, result.text).wer < 0.15
    with open(JFK, "rb") as audio:
        srt = client.audio.transcriptions.create(
            model="whisper-tiny.en", file=audio, response_format="srt"
        )
    assert "00:00:00,000 -->" in srt
    with open(JFK, "rb") as audio:
        verbose = client.audio.transcriptions.create(
            model="whisper-base", file=audio, response_format="verbose_json",
            timestamp_granularities=["segment"], language="en",
        )  # fmt: skip
    assert verbose.language == "english" and verbose.segments[0].start == 0.0
    with open(JFK, "rb") as audio:  # our own field, sent as the client's extra form data
        skipped = client.audio.transcriptions.create(
            model="whisper-tiny.en", file=audio, response_format="verbose_json",
            extra_body={"vad": "true"},
        )  # fmt: skip
    assert 0 < skipped.model_extra["duration_after_vad"] <= skipped.duration
    assert word_errors(JFK_TEXT, skipped.text).wer < 0.15
    assert [m.id for m in client.models.list()][:2] == ["whisper-1", "whisper-tiny.en"]
    with pytest.raises(openai.NotFoundError), open(JFK, "rb") as audio:
        client.audio.transcriptions.create(model="whisper-huge", file=audio)
    bad = openai.OpenAI(api_key="wrong", base_url=server_url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError), open(JFK, "rb") as audio:
        bad.audio.transcriptions.create(model="whisper-1", file=audio)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_web_page_transcribes_an_upload_side_by_side(server_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(server_url + "/")
            page.fill("#api-key", "test-key")  # the server wants a key: the page asks for it
            page.press("#api-key", "Enter")
            page.wait_for_selector("#models input[value='whisper-base']")
            page.check("#models input[value='whisper-base']")  # tiny.en is checked already
            page.check("#vad")  # shown: this server has Silero VAD
            page.set_input_files("#file", str(JFK))
            page.click("#go")
            page.wait_for_selector(".result .spinner", state="attached", timeout=5_000)
            page.wait_for_function(
                "document.querySelectorAll('.result[data-done]').length === 2", timeout=120_000
            )
            page.screenshot(path=str(tmp_path / "serve-demo.png"), full_page=True)
            results = page.eval_on_selector_all(
                ".result",
                "els => els.map(e => [e.dataset.model, e.querySelector('.text').textContent,"
                " e.querySelectorAll('.segments li').length, e.classList.contains('error')])",
            )
            overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            first_stamp = page.text_content(".segments li time")
            metas = page.eval_on_selector_all(".result .meta", "els => els.map(e => e.textContent)")
        finally:
            browser.close()
    assert [r[0] for r in results] == ["whisper-tiny.en", "whisper-base"]
    for model, text, n_segments, failed in results:
        assert not failed and n_segments >= 1, (model, text)
        assert word_errors(JFK_TEXT, text).wer < 0.15, (model, text)
    assert first_stamp.startswith("00:00.00")
    assert all(" s speech)" in meta for meta in metas), metas  # VAD ran for both
    assert not overflow  # usable at phone width: no sideways scrolling
    assert (tmp_path / "serve-demo.png").stat().st_size > 10_000


def test_web_page_words_play_from_where_they_are_spoken(server_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            page.goto(server_url + "/")
            page.fill("#api-key", "test-key")
            page.press("#api-key", "Enter")
            page.wait_for_selector("#models input[value='whisper-tiny.en']")
            page.check("#words")
            page.set_input_files("#file", str(JFK))
            page.click("#go")
            page.wait_for_selector(".result[data-done]", timeout=120_000)
            words = page.eval_on_selector_all(
                ".result .word", "els => els.map(e => [e.textContent, +e.dataset.start])"
            )
            text = page.text_content(".result .text")
            country = [start for word, start in words if word.startswith("country")][0]
            page.click(f".result .word[data-start='{country:g}']")
            page.wait_for_selector(".result .word.now", timeout=10_000)
            played = page.evaluate("document.getElementById('player').currentTime")
        finally:
            browser.close()
    assert len(words) == len(JFK_TEXT.split())
    assert word_errors(JFK_TEXT, text).wer < 0.15, text
    assert all(a <= b for (_, a), (_, b) in zip(words, words[1:]))
    assert country <= played < country + 3  # playing from the word clicked


def test_queue_limit_over_real_http():
    """With no queue, requests that arrive while one runs get 429; the server stays healthy."""
    import asyncio

    import httpx

    clip = JFK.read_bytes()  # 11 s: the others arrive while the first one runs
    settings = ServeSettings(models=("whisper-tiny.en",), max_concurrency=1, max_queue=0)

    async def burst(url):
        async with httpx.AsyncClient(timeout=120) as client:
            await client.post(url + "/v1/audio/transcriptions", files={"file": ("w.wav", clip)})
            replies = await asyncio.gather(
                *(
                    client.post(url + "/v1/audio/transcriptions", files={"file": ("c.wav", clip)})
                    for _ in range(4)
                )
            )
            health = (await client.get(url + "/health")).json()
        return replies, health

    with background_server(settings) as url:
        replies, health = asyncio.run(burst(url))
    statuses = sorted(r.status_code for r in replies)
    assert statuses[0] == 200 and 429 in statuses, statuses
    assert all(r.json()["error"]["code"] == "queue_full" for r in replies if r.status_code == 429)
    assert health["queue"]["rejected"] == statuses.count(429) and health["queue"]["waiting"] == 0
