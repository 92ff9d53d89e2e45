"""Transcription with real weights on real and synthetic speech."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from tests.conftest import JFK, JFK_TEXT

from whisperforge.audio import SAMPLE_RATE, load_audio
from whisperforge.metrics import corpus_error_rates, normalize_text
from whisperforge.transcribe import (
    FRAME_SECONDS,
    TranscribeOptions,
    Transcriber,
    plan_segments,
    plan_windows,
    speech_extent,
    split_sentences,
    transcribe,
)


def test_jfk_whisper_base_exact(base_transcriber):
    segments, info = transcribe(JFK, model=base_transcriber.bundle)
    segments = list(segments)
    text = "".join(s.text for s in segments).strip()
    assert text == JFK_TEXT
    assert info.language == "en" and info.language_probability > 0.9
    assert info.options["beam_size"] == 1 and info.duration == pytest.approx(11.0, abs=0.01)
    assert info.options["condition_on_previous_text"] is True  # Whisper's own default
    assert segments[0].start == 0.0 and 10.0 <= segments[-1].end <= 11.0


@pytest.mark.parametrize("mode", ["chunked", "sequential"])
def test_jfk_beam_search_and_modes(base_transcriber, mode):
    segments, _ = base_transcriber.transcribe(JFK, long_form=mode, beam_size=5, language="en")
    text = "".join(s.text for s in segments)
    assert normalize_text(text) == normalize_text(JFK_TEXT)


def test_jfk_with_a_bfloat16_encoder(base_transcriber):
    fast = Transcriber(base_transcriber.bundle, encoder_dtype="bfloat16")
    segments, info = fast.transcribe(JFK, language="en")
    assert normalize_text("".join(s.text for s in segments)) == normalize_text(JFK_TEXT)
    with pytest.raises(ValueError, match="encoder dtype"):
        Transcriber(base_transcriber.bundle, encoder_dtype="half")
    # a second transcriber can share the session (and its bfloat16 encoder copy)
    shared = Transcriber(fast.bundle, session=fast.session)
    assert shared.session is fast.session and shared.session.encoder_dtype == torch.bfloat16
    again, _ = shared.transcribe(JFK, language="en")
    assert normalize_text("".join(s.text for s in again)) == normalize_text(JFK_TEXT)
    with pytest.raises(ValueError, match="keeps its own"):
        Transcriber(fast.bundle, session=fast.session, encoder_dtype="bfloat16")
    with pytest.raises(ValueError, match="ModelBundle's model"):
        Transcriber("whisper-base", session=fast.session)


def test_tiny_en_without_timestamps(tiny_en):
    segments, info = transcribe(JFK, model=tiny_en, without_timestamps=True)
    text = "".join(s.text for s in segments)
    assert normalize_text(text) == normalize_text(JFK_TEXT)
    assert info.language == "en"


def test_english_only_model_refuses_other_languages(tiny_en):
    with pytest.raises(ValueError, match="English-only"):
        transcribe(JFK, model=tiny_en, language="de")
    with pytest.raises(ValueError, match="cannot translate"):
        transcribe(JFK, model=tiny_en, task="translate")


def test_options_are_validated_in_one_place():
    with pytest.raises(ValueError, match="long_form"):
        TranscribeOptions(long_form="streaming")
    with pytest.raises(ValueError, match="unknown language"):
        TranscribeOptions(language="klingon")
    with pytest.raises(TypeError, match="unknown transcribe option"):
        TranscribeOptions.from_kwargs(beamsize=3)
    with pytest.raises(ValueError, match="compression_ratio_threshold must be > 0"):
        TranscribeOptions(compression_ratio_threshold=0)
    assert TranscribeOptions(language="English").language == "en"


def test_silence_and_tiny_clip_give_no_hallucinated_text(base_transcriber):
    results = list(
        base_transcriber.transcribe_batch(
            [np.zeros(SAMPLE_RATE * 5, np.float32), np.zeros(1600, np.float32)], language="en"
        )
    )
    for r in results:
        assert r.error is None
        assert len(r.text.split()) <= 2  # at most a stray word, never a made-up sentence


def test_sampled_fallback_text_does_not_depend_on_the_batch(tiny_en, speech_clips):
    """Every window fails greedy decoding here (a compression-ratio threshold no text meets)
    and is sampled at 0.7, each window from a generator of its own with the same seed, so that
    a file's text is the same in any batch and after any other file."""
    transcriber = Transcriber(tiny_en)
    files = [p for p, _ in speech_clips[:4]]
    options = dict(language="en", temperature=(0.0, 0.7), compression_ratio_threshold=0.5)
    together = list(transcriber.transcribe_batch(files, batch_size=4, **options))
    assert all(s.temperature == 0.7 for r in together for s in r.segments)
    backwards = list(transcriber.transcribe_batch(files[::-1], batch_size=3, **options))[::-1]
    alone = [next(iter(transcriber.transcribe_batch([f], batch_size=1, **options))) for f in files]
    texts = [r.text for r in together]
    assert texts == [r.text for r in backwards] == [r.text for r in alone]
    greedy = [r.text for r in transcriber.transcribe_batch(files, language="en", temperature=0)]
    assert texts != greedy  # sampled: another text than greedy decoding's


def test_batch_equals_one_by_one(base_transcriber, speech_clips):
    files = [p for p, _ in speech_clips[:6]]
    batched = [
        r.text for r in base_transcriber.transcribe_batch(files, batch_size=4, language="en")
    ]
    single = [r.text for r in base_transcriber.transcribe_batch(files, batch_size=1, language="en")]
    assert batched == single


def test_bad_file_in_batch_is_reported_and_others_go_on(base_transcriber, tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00\x01 not audio at all" * 50)
    results = list(base_transcriber.transcribe_batch([JFK, bad, JFK], language="en"))
    assert [r.error is None for r in results] == [True, False, True]
    assert "broken.mp3" in results[1].error
    assert normalize_text(results[2].text) == normalize_text(JFK_TEXT)


def test_plan_windows_cover_the_audio_with_overlap():
    assert plan_windows(12.0, 5.0) == [(0.0, 12.0)]
    windows = plan_windows(125.0, 5.0)
    assert windows[0] == (0.0, 30.0) and windows[-1][1] == 125.0
    for (_, e0), (s1, _) in zip(windows, windows[1:]):
        assert e0 - s1 == pytest.approx(10.0)  # 2 * stride of shared context
    assert all(e - s <= 30.0 for s, e in windows)


def test_plan_windows_of_a_shorter_chunk():
    assert plan_windows(19.0, 2.0, 20.0) == [(0.0, 19.0)]
    assert plan_windows(30.0, 2.0, 20.0) == [(0.0, 30.0)]  # fits one window: not cut
    windows = plan_windows(100.0, 2.0, 20.0)
    assert windows[0] == (0.0, 20.0) and windows[-1][1] == 100.0
    for (_, e0), (s1, _) in zip(windows, windows[1:]):
        assert e0 - s1 == pytest.approx(4.0)
    assert all(e - s <= 20.0 for s, e in windows)


def _probs(seconds: float, pauses: list[tuple[float, float]], level: float = 0.9) -> np.ndarray:
    """Speech probabilities of ``seconds`` of audio: ``level`` except 0.05 in ``pauses``."""
    probs = np.full(int(np.ceil(seconds / FRAME_SECONDS)), level, np.float32)
    for a, b in pauses:
        probs[round(a / FRAME_SECONDS) : round(b / FRAME_SECONDS)] = 0.05
    return probs


def _check_cover(windows, duration, length):
    assert windows[0][0] == 0.0 and windows[-1][1] == duration
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(windows, windows[1:]))  # end to end
    assert all(0 < e - s <= length + 1e-9 for s, e in windows)


def test_plan_segments_cut_in_the_latest_pause_in_reach():
    assert plan_segments(_probs(19, []), 19.0, 20.0) == [(0.0, 19.0)]
    # pauses at 6-6.5 (too early: a cut is looked for from 10 s), 12-12.5 and 17-17.4;
    # the first window ends in the latest one, the next looks from 27.2 to 37.2 s
    probs = _probs(50, [(6, 6.5), (12, 12.5), (17, 17.4), (29, 29.5), (33, 33.1)])
    windows = plan_segments(probs, 50.0, 20.0)
    _check_cover(windows, 50.0, 20.0)
    assert windows[0][1] == pytest.approx(17.2, abs=FRAME_SECONDS)
    assert windows[1][1] == pytest.approx(29.25, abs=FRAME_SECONDS)  # not the 0.1 s gap at 33
    # with only gaps shorter than a pause in reach, the longest of them
    probs = _probs(30, [(11, 11.1), (14, 14.25), (18, 18.1)])
    windows = plan_segments(probs, 30.0, 20.0)
    _check_cover(windows, 30.0, 20.0)
    assert windows[0][1] == pytest.approx(14.125, abs=FRAME_SECONDS)


def test_plan_segments_without_a_pause_cut_at_the_least_likely_frame():
    probs = _probs(45, [])
    probs[round(23.0 / FRAME_SECONDS)] = 0.6  # speech throughout, least sure here
    windows = plan_segments(probs, 45.0, 30.0)
    _check_cover(windows, 45.0, 30.0)
    assert windows[0][1] == pytest.approx(23.0 + FRAME_SECONDS / 2, abs=FRAME_SECONDS)
    # scores that stop short of the audio: plain cuts of the full length after them
    windows = plan_segments(_probs(10, []), 70.0, 30.0)
    _check_cover(windows, 70.0, 30.0)
    assert [e for _, e in windows] == [30.0, 60.0, 70.0]


def test_speech_extent_is_a_windows_speech_padded_inside_the_window():
    probs = _probs(30, [(0, 3), (12, 30)], level=0.9)  # speech from 3 s to 12 s
    start, end = speech_extent(probs, 0.0, 20.0)
    assert start == pytest.approx(2.8, abs=FRAME_SECONDS) and end == pytest.approx(
        12.2, abs=FRAME_SECONDS
    )
    assert speech_extent(probs, 4.0, 10.0) == (4.0, 10.0)  # speech throughout: the window
    assert speech_extent(probs, 13.0, 30.0) == (13.0, 30.0)  # no speech: the window
    assert speech_extent(probs, 2.9, 30.0)[0] == 2.9  # never outside the window


def test_split_sentences_cuts_timed_segments_after_each_sentence(tiny_en_tokenizer):
    from whisperforge.stitch import RawSegment

    tokens = tiny_en_tokenizer.encode(" It costs 3.5 dollars. Is that so? Yes! Fine")
    timing = [(float(i), i + 0.5, 0.9) for i in range(len(tokens))]
    seg = RawSegment(0.0, 30.0, tokens, False, timing=timing)
    parts = split_sentences(seg, tiny_en_tokenizer)
    texts = [tiny_en_tokenizer.decode(p.tokens) for p in parts]
    assert texts == [" It costs 3.5 dollars.", " Is that so?", " Yes!", " Fine"]
    assert [t for p in parts for t in p.tokens] == tokens
    for p in parts:  # each part spans its own tokens' times
        assert (p.start, p.end) == (p.timing[0][0], p.timing[-1][1])
    untimed = RawSegment(0.0, 30.0, tokens, False)
    assert split_sentences(untimed, tiny_en_tokenizer) == [untimed]


def test_chunk_length_and_stride_are_checked_and_default_to_the_models(
    tiny_en, long_recording, monkeypatch
):
    for bad in (dict(chunk_length=3), dict(chunk_length=31), dict(stride_length=-1),
                dict(chunk_length=20, stride_length=10)):  # fmt: skip
        with pytest.raises(ValueError, match="chunk_length|stride_length"):
            TranscribeOptions(**bad)
    transcriber = Transcriber(tiny_en)
    assert tiny_en.chunk_length == 30.0 and tiny_en.stride_length is None
    assert transcriber.chunking(None, None) == (30.0, 5.0)  # Whisper's: a sixth of 30 s
    assert transcriber.chunking(15.0, None) == (15.0, 2.5)
    path, reference = long_recording
    plans = []
    original = plan_windows

    def spy(duration, stride, length=30.0):
        plans.append(original(duration, stride, length))
        return plans[-1]

    monkeypatch.setattr("whisperforge.transcribe.plan_windows", spy)
    whole, info = transcriber.transcribe(path, language="en")
    whole = "".join(s.text for s in whole)
    assert info.options["chunk_length"] == 30.0 and info.options["stride_length"] == 5.0
    # a model whose config says so (a student's student.json) gets its own windows
    monkeypatch.setattr(tiny_en.model.config, "chunk_length", 20.0, raising=False)
    monkeypatch.setattr(tiny_en.model.config, "stride_length", 2.0, raising=False)
    assert transcriber.chunking(None, None) == (20.0, 2.0)
    assert transcriber.chunking(None, 3.0) == (20.0, 3.0)
    assert transcriber.chunking(15.0, None) == (15.0, 2.5)  # its stride was for its length
    with pytest.raises(ValueError, match="stride_length must be in \\[0, 10\\)"):
        transcriber.chunking(None, 12.0)
    from whisperforge.recipes.evaluate import chunking_of  # what an evaluate report records

    assert chunking_of(transcriber, {}) == {"chunk_length": 20.0, "stride_length": 2.0}
    segmented = chunking_of(transcriber, {"long_form": "segmented", "chunk_length": 25.0})
    assert segmented == {"chunk_length": 25.0, "stride_length": None}
    segments, info = transcriber.transcribe(path, language="en")
    segments = list(segments)
    assert info.options["chunk_length"] == 20.0 and info.options["stride_length"] == 2.0
    assert all(e - s <= 20.0 for s, e in plans[-1]) and len(plans[-1]) > len(plans[0])
    assert segments[-1].end > info.duration - 10  # the windows cover the recording
    shorter = corpus_error_rates([reference], ["".join(s.text for s in segments)])["wer"]
    assert shorter <= corpus_error_rates([reference], [whole])["wer"] + 0.05


@pytest.mark.parametrize("mode", ["chunked", "sequential", "segmented"])
def test_long_form_matches_short_form(
    base_transcriber, speech_clips, long_recording, mode, monkeypatch
):
    """Several minutes of joined clips give the words the clips gave one by one."""
    path, reference = long_recording
    audio = load_audio(path)
    assert len(audio) / SAMPLE_RATE > 170  # about three minutes
    short = list(base_transcriber.transcribe_batch([p for p, _ in speech_clips], language="en"))
    short_wer = corpus_error_rates([t for _, t in speech_clips], [r.text for r in short])["wer"]
    plans = []
    original = plan_segments

    def spy(*args, **kwargs):
        plans.append(original(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr("whisperforge.transcribe.plan_segments", spy)
    segments, info = base_transcriber.transcribe(path, long_form=mode, language="en")
    segments = list(segments)
    if mode == "segmented":  # cut only where the recording is silent (between the clips)
        (windows,) = plans
        assert len(windows) >= len(audio) / SAMPLE_RATE / 30 and all(
            e - s <= 30.0 for s, e in windows
        )
        for _, cut in windows[:-1]:
            around = audio[int((cut - 0.05) * SAMPLE_RATE) : int((cut + 0.05) * SAMPLE_RATE)]
            assert np.abs(around).max() < 1e-3, cut
        # one segment a window, over the speech in it, decoded without timestamps
        assert info.options["without_timestamps"] and len(segments) == len(windows)
        for seg, (s, e) in zip(segments, windows):
            assert s <= seg.start < seg.end <= e and seg.end - seg.start > (e - s) / 2
    long_wer = corpus_error_rates([reference], ["".join(s.text for s in segments)])["wer"]
    assert short_wer < 0.10
    assert long_wer <= short_wer + 0.02, (mode, short_wer, long_wer)
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and segments[-1].end > 165
    # no two segments share time: a sentence cut by a window edge is one segment
    assert all(b.start >= a.end for a, b in zip(segments, segments[1:])), mode


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_language_detection_on_vietnamese_speech(base_transcriber, tmp_path):
    path = tmp_path / "vi.wav"
    text = "Xin chào các bạn, hôm nay trời đẹp quá, chúng ta cùng đi dạo trong công viên nhé."
    subprocess.run(["espeak-ng", "-v", "vi", "-w", str(path), text], check=True, timeout=60)
    segments, info = base_transcriber.transcribe(path)
    assert info.language == "vi" and info.language_probability > 0.5
    hypothesis = "".join(s.text for s in segments)
    assert corpus_error_rates([text], [hypothesis], language="vi")["cer"] < 0.5


def test_translate_task_produces_english(base_transcriber):
    segments, info = base_transcriber.transcribe(JFK, task="translate", language="en")
    text = "".join(s.text for s in segments)
    assert info.options["task"] == "translate"
    assert corpus_error_rates([JFK_TEXT], [text])["wer"] < 0.2


def test_a_model_trained_on_some_languages_detects_and_accepts_only_those(base_transcriber):
    config = base_transcriber.bundle.model.config
    try:
        config.languages = ["de", "en"]  # as distill train saves a student's
        _, info = base_transcriber.transcribe(JFK)
        assert info.language == "en" and {c for c, _ in info.all_language_probs} == {"de", "en"}
        assert sum(p for _, p in info.all_language_probs) == pytest.approx(1.0)
        with pytest.raises(ValueError, match="trained to transcribe de, en only, not fr"):
            base_transcriber.transcribe(JFK, language="fr")
    finally:
        del config.languages
    _, info = base_transcriber.transcribe(JFK)
    assert len(info.all_language_probs) == 10  # every language again: the ten likeliest
