"""Voice activity detection: Silero VAD finds the speech, segment times map back to the file."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import JFK, JFK_TEXT

from whisperforge.audio import SAMPLE_RATE, load_audio
from whisperforge.metrics import corpus_error_rates, normalize_text
from whisperforge.segments import Segment
from whisperforge.transcribe import TranscribeOptions, Transcriber
from whisperforge.vad import (
    FRAME,
    MAX_GAIN,
    SpeechMap,
    frame_probabilities,
    level_gain,
    speech_map,
)


def seconds(n: float) -> np.ndarray:
    return np.zeros(int(n * SAMPLE_RATE), np.float32)


def test_times_in_the_compacted_audio_map_back_to_the_file():
    found = SpeechMap(((16000, 32000), (80000, 96000)), total=160000)  # 1-2 s and 5-6 s
    assert found.duration_after_vad == 2.0
    audio = np.arange(160000, dtype=np.float32)
    assert np.array_equal(
        found.compact(audio), np.concatenate([audio[16000:32000], audio[80000:96000]])
    )
    assert found.original_time(0.0) == 1.0
    assert found.original_time(0.5) == 1.5
    assert found.original_time(1.0) == 5.0  # a start on the join: the second stretch
    assert found.original_time(1.0, is_end=True) == 2.0  # an end on the join: the first
    assert found.original_time(1.25) == 5.25
    assert found.original_time(2.5, is_end=True) == 6.5  # past the last stretch: file time
    assert found.original_time(20.0, is_end=True) == 10.0  # never past the file's end
    segments = [Segment(0, 0.0, 0.8, " a"), Segment(1, 0.9, 2.0, " b")]
    assert [(s.start, s.end) for s in found.restore(segments)] == [(1.0, 1.8), (1.9, 6.0)]
    assert [s.text for s in found.restore(segments)] == [" a", " b"]
    # with 0.4 s of padding around each stretch, a segment that crosses the join from inside
    # the padding starts with the next stretch, and one that ends inside the next stretch's
    # padding ends with the first
    padded = SpeechMap(found.chunks, found.total, pad=6400)
    assert padded.segment_times(0.8, 1.9) == (5.0, 5.9)
    assert padded.segment_times(0.2, 1.3) == (1.2, 2.0)
    assert padded.segment_times(0.3, 1.7) == (1.3, 5.7)
    assert padded.segment_times(0.1, 0.5) == (1.1, 1.5)
    touching = SpeechMap(((16000, 32000), (32000, 48000)), total=48000, pad=6400)
    assert touching.segment_times(0.8, 1.9) == (1.8, 2.9)  # nothing was cut: no snapping
    nothing = SpeechMap((), total=16000)
    assert len(nothing.compact(audio[:16000])) == 0 and nothing.duration_after_vad == 0.0


def test_finds_each_utterance_between_long_silences():
    jfk = load_audio(JFK)
    audio = np.concatenate([seconds(4), jfk, seconds(6), jfk, seconds(3)])
    found = speech_map(audio)
    # jfk's own pauses (up to 1 s) are shorter than min_silence (2 s): one stretch each
    assert len(found.chunks) == 2
    (s1, e1), (s2, e2) = (tuple(x / SAMPLE_RATE for x in c) for c in found.chunks)
    end1, start2 = 4 + len(jfk) / SAMPLE_RATE, 10 + len(jfk) / SAMPLE_RATE
    assert 3.6 <= s1 <= 4.5 and end1 - 1.0 <= e1 <= end1 + 0.5
    assert start2 - 0.4 <= s2 <= start2 + 0.5 and e2 <= start2 + len(jfk) / SAMPLE_RATE + 0.5
    assert found.duration_after_vad < len(audio) / SAMPLE_RATE - 8  # the silences are gone
    # a shorter min_silence splits jfk at its pauses
    assert len(speech_map(audio, min_silence=0.3, speech_pad=0.1).chunks) > 2


def test_frame_probabilities_score_every_frame_as_speech_map_does():
    jfk = load_audio(JFK)
    audio = np.concatenate([seconds(4), jfk, seconds(3)])
    probs = frame_probabilities(audio)
    assert probs.shape == (-(-len(audio) // FRAME),) and probs.dtype == np.float32
    found = speech_map(audio)
    ((start, end),) = found.chunks
    assert np.array_equal(found.probs, probs)  # the scores VAD decided on, kept
    kept = found.speech_probabilities()  # ... and those of the compacted audio
    assert len(kept) == -(-len(found.compact(audio)) // FRAME)
    assert np.array_equal(kept, probs[start // FRAME : start // FRAME + len(kept)])
    frames = np.flatnonzero(probs >= 0.5)
    # the frames heard as speech lie in the stretch speech_map found (widened by its pad)
    assert start <= frames[0] * FRAME and (frames[-1] + 1) * FRAME <= end + FRAME
    assert probs[: 3 * SAMPLE_RATE // FRAME].max() < 0.5  # the leading silence
    assert probs[(4 * SAMPLE_RATE + len(jfk)) // FRAME + 16 :].max() < 0.5  # the trailing
    # quiet audio is lifted as speech_map lifts it: the same speech frames
    lifted = frame_probabilities(audio * 0.003)
    assert np.mean((lifted >= 0.5) != (probs >= 0.5)) < 0.02
    assert len(frame_probabilities(np.zeros(0, np.float32))) == 0


def test_kept_scores_follow_the_compacted_audio_without_drift():
    probs = np.arange(40, dtype=np.float32)  # frame k scored k
    found = SpeechMap(((1000, 3000), (10000, 12000)), total=40 * FRAME, probs=probs)
    # compacted frames start at 0, 512, ... of 4000 samples: 1000-3000, then 10000-12000
    assert found.speech_probabilities().tolist() == [1, 2, 3, 4, 19, 20, 21, 22]
    assert SpeechMap((), 0, probs=probs).speech_probabilities().tolist() == []
    assert SpeechMap(((0, 100),), 100).speech_probabilities() is None


def test_quiet_speech_is_found_as_loud_speech_is():
    # Silero on its own drops the first words of jfk at -40 dB and all of it at -50 dB
    jfk = load_audio(JFK)
    audio = np.concatenate([seconds(4), jfk, seconds(6), jfk, seconds(3)])
    loud = speech_map(audio).chunks
    assert level_gain(audio) == 1.0  # audio at a normal level is scored as it is
    rng = np.random.default_rng(0)
    for gain in (0.01, 0.003, 0.001):
        quiet = (audio * gain + rng.normal(0, 1e-6, len(audio))).astype(np.float32)
        found = speech_map(quiet).chunks
        assert len(found) == 2
        for (s, e), (want_s, want_e) in zip(found, loud):
            assert abs(s - want_s) <= 0.3 * SAMPLE_RATE and abs(e - want_e) <= 0.3 * SAMPLE_RATE
    # ... while silence, hiss and noise lifted as far as the gain goes hold no speech
    assert level_gain(rng.normal(0, 1e-5, SAMPLE_RATE)) == MAX_GAIN
    for level in (1e-5, 1e-4, 1e-3):
        noise = rng.normal(0, level, 10 * SAMPLE_RATE).astype(np.float32)
        assert speech_map(noise).chunks == ()
    click = np.concatenate([seconds(1), np.full(512, 0.5, np.float32), jfk * 0.001])
    assert level_gain(click) == 1.0  # the loudest frame decides: never louder than it was


def test_the_model_hears_quiet_speech_that_vad_found_at_a_normal_level(tiny_en):
    jfk = load_audio(JFK)
    found = speech_map(jfk)
    assert np.array_equal(found.speech(jfk), found.compact(jfk))  # a normal level: as it is
    quiet = jfk * 0.003  # 50 dB down
    heard = speech_map(quiet).speech(quiet)
    assert level_gain(heard) == 1.0 and 0.1 < np.abs(heard).max() <= 1.0
    transcriber = Transcriber(tiny_en)

    def wer(vad: bool) -> float:
        segments, _ = transcriber.transcribe(quiet, vad=vad, language="en")
        return corpus_error_rates([JFK_TEXT], ["".join(s.text for s in segments)])["wer"]

    # whisper-tiny.en reads it 50 dB down with errors, lifted by VAD as said: exactly
    assert wer(vad=True) == 0.0 < wer(vad=False)


def test_long_files_are_scored_in_parallel_streams_as_one_stream_would_be(monkeypatch):
    import torch
    from silero_vad import get_speech_timestamps

    from whisperforge.vad import _model, speech_probabilities

    jfk = load_audio(JFK)
    rng = np.random.default_rng(0)
    audio = np.concatenate([x for _ in range(12) for x in (seconds(rng.uniform(0.5, 6)), jfk)])
    assert len(audio) / SAMPLE_RATE > 150  # five streams of 30 s or more

    def one_stream(x):  # Silero's own frame-by-frame loop
        found = get_speech_timestamps(torch.from_numpy(x), _model(), sampling_rate=SAMPLE_RATE,
                                      min_silence_duration_ms=2000, speech_pad_ms=400)  # fmt: skip
        return [(t["start"], min(t["end"], len(x))) for t in found]

    short = audio[: 50 * SAMPLE_RATE]  # one stream: exactly Silero's result
    assert list(speech_map(short).chunks) == one_stream(short)
    want, got = one_stream(audio), list(speech_map(audio).chunks)
    assert len(got) == len(want) >= 8  # jfk 12 times, pauses under 2 s not splitting
    # next to a cut between streams a stretch's edge may move by a few 32 ms frames (4 here):
    # well inside the 0.4 s of padding each stretch keeps
    moved = [max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(want, got)]
    assert max(moved) <= 0.2 * SAMPLE_RATE and sum(m > 0 for m in moved) <= 2, moved
    # a longer file is cut into more pieces, scored a batch of rows at a time: the same here
    # with pieces of at most 40 s, two rows a batch (five pieces, three batches)
    monkeypatch.setattr("whisperforge.vad.MAX_STREAMS", 2)
    monkeypatch.setattr("whisperforge.vad.MAX_PIECE_SECONDS", 40.0)
    grouped = list(speech_map(audio).chunks)
    moved = [max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(want, grouped)]
    assert len(grouped) == len(want) and max(moved) <= 0.2 * SAMPLE_RATE, moved
    probs = speech_probabilities(_model(), torch.from_numpy(audio))
    assert len(probs) == -(-len(audio) // 512) and 0 <= min(probs) <= max(probs) <= 1


def test_loading_silero_leaves_the_thread_count_alone():
    import subprocess
    import sys

    from tests.conftest import SUBPROCESS_ENV

    # importing silero_vad sets torch's threads to 1 for the process; a fresh process shows it
    code = (
        "import numpy as np, torch; torch.set_num_threads(2);"
        "from whisperforge.vad import speech_map; speech_map(np.zeros(16000, np.float32));"
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=SUBPROCESS_ENV, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.split() == ["2"]


def test_silence_noise_and_nothing_hold_no_speech():
    rng = np.random.default_rng(0)
    assert speech_map(seconds(5)).chunks == ()
    assert speech_map(rng.normal(0, 0.003, 5 * SAMPLE_RATE).astype(np.float32)).chunks == ()
    assert speech_map(seconds(0)) == SpeechMap((), 0)
    with pytest.raises(ValueError, match="threshold"):
        speech_map(seconds(1), threshold=1.5)
    with pytest.raises(ValueError, match="vad_threshold"):
        TranscribeOptions(vad=True, vad_threshold=0)
    with pytest.raises(ValueError, match="vad_min_silence"):
        TranscribeOptions(vad=True, vad_min_silence=-1)


def test_transcribe_with_vad_skips_silence_and_keeps_file_times(tiny_en, speech_clips):
    (path1, text1), (path2, text2) = speech_clips[:2]
    clip1, clip2 = load_audio(path1), load_audio(path2)
    noise = np.random.default_rng(1).normal(0, 0.002, 12 * SAMPLE_RATE).astype(np.float32)
    audio = np.concatenate([seconds(5), clip1, noise, clip2, seconds(4)])
    start2 = 5 + (len(clip1) + len(noise)) / SAMPLE_RATE
    transcriber = Transcriber(tiny_en)
    speech, silent, jfk = transcriber.transcribe_batch(
        [audio, seconds(6), str(JFK)], vad=True, language="en"
    )
    assert speech.error is None and speech.segments
    # as good as the two clips transcribed on their own
    alone = " ".join(r.text for r in transcriber.transcribe_batch([clip1, clip2], language="en"))
    wer = corpus_error_rates([f"{text1} {text2}"], [speech.text])["wer"]
    assert wer <= corpus_error_rates([f"{text1} {text2}"], [alone])["wer"] + 0.05, speech.text
    assert wer <= 0.25, speech.text
    assert speech.info.duration == len(audio) / SAMPLE_RATE
    assert speech.info.duration_after_vad < speech.info.duration - 12
    for seg in speech.segments:  # every segment lies on one of the two utterances
        on_first = 4.5 <= seg.start and seg.end <= 5 + len(clip1) / SAMPLE_RATE + 0.6
        on_second = start2 - 0.5 <= seg.start and seg.end <= len(audio) / SAMPLE_RATE - 3.4
        assert on_first or on_second, (seg.start, seg.end, seg.text)
    assert any(seg.start >= start2 - 0.5 for seg in speech.segments)
    assert silent.error is None and silent.segments == []
    assert silent.info.duration == 6.0 and silent.info.duration_after_vad == 0.0
    assert normalize_text(jfk.text) == normalize_text(JFK_TEXT)
    # the single-file API agrees, and says nothing about a silent file
    segments, info = transcriber.transcribe(seconds(6), vad=True, language="en")
    assert list(segments) == [] and info.duration_after_vad == 0.0
    segments, info = transcriber.transcribe(audio, vad=True, language="en")
    assert [s.start for s in segments] == [s.start for s in speech.segments]


def test_a_model_can_make_vad_its_default(tiny_en, monkeypatch, caplog, capsys):
    from whisperforge.cli import build_parser, main

    audio = np.concatenate([seconds(6), load_audio(JFK)])
    transcriber = Transcriber(tiny_en)
    assert tiny_en.vad is False and transcriber.uses_vad(None) is False
    _, info = transcriber.transcribe(audio, language="en")
    assert info.duration_after_vad is None and info.options["vad"] is False
    monkeypatch.setattr(tiny_en.model.config, "vad", True, raising=False)  # as student.json says
    assert tiny_en.vad is True
    segments, info = transcriber.transcribe(audio, language="en")
    assert info.options["vad"] is True and info.duration_after_vad < 12.5
    assert normalize_text(" ".join(s.text for s in segments)) == normalize_text(JFK_TEXT)
    _, info = transcriber.transcribe(audio, language="en", vad=False)  # asked: off
    assert info.duration_after_vad is None and info.options["vad"] is False
    # without silero-vad a model's default is skipped with a warning, once
    monkeypatch.setattr("whisperforge.vad.is_available", lambda: False)
    with caplog.at_level("WARNING", logger="whisperforge.vad"):
        _, info = transcriber.transcribe(audio, language="en")
        transcriber.transcribe(audio, language="en")
    assert info.duration_after_vad is None and info.options["vad"] is False
    warnings = [r.message for r in caplog.records if "silero-vad" in r.getMessage()]
    assert len(warnings) == 1 and "--no-vad" in caplog.text
    parser = build_parser()
    monkeypatch.setattr("whisperforge.vad.is_available", lambda: False)  # asking is an error
    for argv in (["transcribe", str(JFK)], ["tokens", "encode", str(JFK)]):
        assert main([*argv, "--vad"]) == 2
        assert "--vad needs the silero-vad package" in capsys.readouterr().err
    for argv, wanted in (([], None), (["--vad"], True), (["--no-vad"], False)):
        assert parser.parse_args(["transcribe", "a.wav", *argv]).vad is wanted
        assert parser.parse_args(["evaluate", "--manifest", "m.jsonl", *argv]).vad is wanted


def test_segmented_long_form_with_vad_cuts_on_the_scores_vad_kept(
    tiny_en, speech_clips, monkeypatch
):
    clips = [(load_audio(p), t) for p, t in speech_clips[:10]]
    pieces, starts, ends, t = [seconds(3)], [], [], 3.0
    for audio, _ in clips:
        starts.append(t)
        t += len(audio) / SAMPLE_RATE
        ends.append(t)
        pieces += [audio, seconds(2.5)]
        t += 2.5
    audio = np.concatenate(pieces)
    reference = " ".join(text for _, text in clips)

    def unwanted(_audio):
        raise AssertionError("segmented mode scored audio VAD had scored already")

    monkeypatch.setattr("whisperforge.transcribe.frame_probabilities", unwanted)
    transcriber = Transcriber(tiny_en)
    segments, info = transcriber.transcribe(audio, vad=True, long_form="segmented", language="en")
    segments = list(segments)
    assert info.duration_after_vad > 30  # more than one window of speech after VAD
    assert len(segments) >= 2
    # each window's segment starts at a clip's first word and ends after a clip's last one,
    # in the file's own times
    for seg in segments:
        assert any(s - 0.7 <= seg.start <= s + 0.3 for s in starts), seg.start
        assert any(e - 0.3 <= seg.end <= e + 0.7 for e in ends), seg.end
    assert all(b.start >= a.end for a, b in zip(segments, segments[1:]))
    alone = " ".join(
        r.text for r in transcriber.transcribe_batch([a for a, _ in clips], language="en")
    )
    wer = corpus_error_rates([reference], ["".join(s.text for s in segments)])["wer"]
    assert wer <= corpus_error_rates([reference], [alone])["wer"] + 0.05
    # with word timestamps each window's sentences are segments of their own: the same text
    worded, _ = transcriber.transcribe(
        audio, vad=True, long_form="segmented", language="en", word_timestamps=True
    )
    worded = list(worded)
    assert "".join(s.text for s in worded) == "".join(s.text for s in segments)
    assert len(worded) >= len(clips) - 2 > len(segments)
    assert all(b.start >= a.end for a, b in zip(worded, worded[1:]))
    for seg in worded:
        assert seg.words and (seg.start, seg.end) == (seg.words[0].start, seg.words[-1].end)
