"""Audio decoding and log-mel features: real files, real decoders, HF's extractor as reference."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from whisperforge.audio import (
    CHUNK_LENGTH,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    N_SAMPLES_PER_TOKEN,
    SAMPLE_RATE,
    TIME_PRECISION,
    TOKENS_PER_SECOND,
    AudioError,
    audio_files,
    audio_samples,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)

JFK = Path(__file__).parents[1] / "samples" / "jfk.wav"


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(JFK)


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def encode_with_pyav(path: Path, codec: str, rate: int = 44100, seconds: float = 1.0) -> None:
    """Write a stereo 440 Hz sine with PyAV's encoders (container chosen from the suffix)."""
    x = sine(440, seconds, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        for start in range(0, len(x), 1024):
            block = np.ascontiguousarray(np.tile(x[start : start + 1024], (2, 1)))
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def hf_features(audio: np.ndarray, n_mels: int) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]


def test_constants_are_whispers():
    assert (N_SAMPLES, N_FRAMES, FRAMES_PER_SECOND) == (480_000, 3000, 100)
    assert N_SAMPLES == CHUNK_LENGTH * SAMPLE_RATE and N_FRAMES == N_SAMPLES // HOP_LENGTH
    assert (N_SAMPLES_PER_TOKEN, TOKENS_PER_SECOND, TIME_PRECISION) == (320, 50, 0.02)


# ---- log-mel: one padding convention, equal to HF's WhisperFeatureExtractor ----


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("clip", ["jfk", "0.5s", "silence"])
def test_log_mel_equals_hf_feature_extractor(jfk, n_mels, clip):
    audio = {"jfk": jfk, "0.5s": jfk[: SAMPLE_RATE // 2], "silence": np.zeros(8000, "float32")}
    audio = audio[clip]
    mel = log_mel_spectrogram(audio, n_mels=n_mels)
    assert mel.dtype == torch.float32 and mel.shape == (n_mels, N_FRAMES)
    np.testing.assert_allclose(mel.numpy(), hf_features(audio, n_mels), atol=1e-4, rtol=0)


def test_short_clip_is_padded_as_audio_not_as_features(jfk):
    """The convention: pad samples to 30 s first; padding frames afterwards gives other features."""
    clip = jfk[: SAMPLE_RATE // 2]
    np.testing.assert_array_equal(log_mel_spectrogram(clip), log_mel_spectrogram(pad_or_trim(clip)))
    n_clip_frames = len(clip) // HOP_LENGTH
    tail = log_mel_spectrogram(clip)[:, n_clip_frames + 2 :]
    assert torch.all(tail == tail.min()), "padding frames are the window's floor (max - 8)"
    assert tail.min() > -1.5, "floor is relative to this window's peak, not log10(1e-10)"


def test_batched_equals_per_item(jfk):
    rows = [jfk, jfk[:8000], 0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)]
    batch = np.stack([pad_or_trim(row.astype(np.float32)) for row in rows])
    mel = log_mel_spectrogram(batch)
    assert mel.shape == (3, 80, N_FRAMES)
    for i, row in enumerate(rows):
        # per-window normalisation: a loud neighbour in the batch changes nothing
        torch.testing.assert_close(mel[i], log_mel_spectrogram(row.astype(np.float32)))


def test_log_mel_accepts_tensors_and_device_and_trims_long_audio(jfk):
    reference = log_mel_spectrogram(jfk)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(jfk), device="cpu"), reference)
    torch.testing.assert_close(log_mel_spectrogram(jfk.astype(np.float64)), reference)
    long = np.tile(jfk, 4)  # 44 s: only the first 30 s are featurised
    torch.testing.assert_close(log_mel_spectrogram(long), log_mel_spectrogram(long[:N_SAMPLES]))


def test_log_mel_rejects_integer_samples():
    with pytest.raises(TypeError, match="load_audio"):
        log_mel_spectrogram(np.zeros(16000, dtype=np.int16))


def test_pad_or_trim_numpy_and_torch():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert pad_or_trim(x, 3).tolist() == [[0, 1, 2], [5, 6, 7]]
    assert pad_or_trim(x, 7)[0].tolist() == [0, 1, 2, 3, 4, 0, 0]
    assert pad_or_trim(x, 4, axis=0).shape == (4, 5) and not pad_or_trim(x, 4, axis=0)[2:].any()
    t = torch.from_numpy(x)
    assert torch.equal(pad_or_trim(t, 3), torch.from_numpy(pad_or_trim(x, 3)))
    assert torch.equal(pad_or_trim(t, 7), torch.from_numpy(pad_or_trim(x, 7)))
    assert torch.equal(pad_or_trim(t, 4, axis=0), torch.from_numpy(pad_or_trim(x, 4, axis=0)))
    assert pad_or_trim(t, 5) is t


# ---- load_audio: files ----


def test_load_jfk(jfk):
    assert jfk.dtype == np.float32 and jfk.ndim == 1 and jfk.flags.c_contiguous
    assert len(jfk) / SAMPLE_RATE == pytest.approx(11.0, abs=0.01)
    pcm, rate = sf.read(JFK, dtype="int16")
    np.testing.assert_array_equal(jfk, pcm / np.float32(32768))
    assert rate == SAMPLE_RATE


def test_path_bytes_and_file_object_agree(jfk):
    data = JFK.read_bytes()
    np.testing.assert_array_equal(load_audio(str(JFK)), jfk)
    np.testing.assert_array_equal(load_audio(data), jfk)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data)), jfk)
    with open(JFK, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), jfk)


def test_stereo_44k_wav_becomes_mono_16k(tmp_path):
    n = 44100 * 2
    left, right = sine(440, 2.0, 44100), 0.5 * sine(440, 2.0, 44100)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    audio = load_audio(path)
    assert abs(len(audio) - n * SAMPLE_RATE / 44100) <= 1
    expected = 0.75 * sine(440, 2.0, SAMPLE_RATE)  # mean of channels, resampled
    middle = slice(1000, 31000)  # away from the resampler's edges
    np.testing.assert_allclose(audio[middle], expected[middle], atol=1e-3)


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_flac_and_ogg_round_trip(tmp_path, jfk, fmt, subtype):
    path = tmp_path / f"jfk.{fmt.lower()}"
    sf.write(path, jfk, SAMPLE_RATE, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert len(audio) == len(jfk)
    if fmt == "FLAC":  # lossless
        np.testing.assert_array_equal(audio, jfk)
    else:  # lossy but faithful
        assert np.corrcoef(audio, jfk)[0, 1] > 0.99


@pytest.mark.parametrize(
    "suffix, codec", [("mp3", "libmp3lame"), ("m4a", "aac"), ("webm", "libopus")]
)
def test_compressed_formats_decode(tmp_path, suffix, codec):
    rate = 48000 if codec == "libopus" else 44100
    path = tmp_path / f"tone.{suffix}"
    encode_with_pyav(path, codec, rate=rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(SAMPLE_RATE, abs=0.1 * SAMPLE_RATE)  # codec priming aside
    assert peak_frequency(audio) == pytest.approx(440, abs=2)
    assert 0.4 < np.abs(audio).max() < 0.6
    # in-memory bytes carry no file name: libsndfile may decode mp3 there instead of PyAV
    np.testing.assert_allclose(load_audio(path.read_bytes()), audio, atol=1e-4)


def test_unicode_file_name(tmp_path, jfk):
    path = tmp_path / "Grüße 日本語 🎤.flac"
    sf.write(path, jfk[:8000], SAMPLE_RATE)
    np.testing.assert_array_equal(load_audio(path), jfk[:8000])
    encode_with_pyav(tmp_path / "tête à tête.m4a", "aac")  # the PyAV path too
    assert len(load_audio(tmp_path / "tête à tête.m4a")) > 0.9 * SAMPLE_RATE


def test_short_and_silent_clips_are_valid(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, sine(440, 0.1, 22050), 22050)
    assert len(load_audio(path)) == pytest.approx(1600, abs=1)
    sf.write(path, np.zeros(16000, np.int16), SAMPLE_RATE)
    silence = load_audio(path)
    assert len(silence) == 16000 and not silence.any()


def test_truncated_wav_decodes_what_is_there(tmp_path, jfk):
    """Decision: a cut-off file yields its surviving samples (soundfile reads up to the end)."""
    data = JFK.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    audio = load_audio(path)
    assert 0.45 * len(jfk) < len(audio) < 0.55 * len(jfk)
    np.testing.assert_array_equal(audio, jfk[: len(audio)])


@pytest.mark.parametrize("suffix, codec", [("mp3", "libmp3lame"), ("webm", "libopus")])
def test_truncated_stream_formats_decode_what_is_there(tmp_path, suffix, codec):
    path = tmp_path / f"tone.{suffix}"
    encode_with_pyav(path, codec, rate=48000, seconds=4.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert 1.5 * SAMPLE_RATE < len(load_audio(path)) < 2.5 * SAMPLE_RATE


def test_truncated_m4a_is_an_error(tmp_path):
    """MP4 writes its index (moov) last, so half a file has nothing decodable."""
    path = tmp_path / "tone.m4a"
    encode_with_pyav(path, "aac", seconds=4.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_audio_error(path, "tone.m4a", "cannot decode")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_decoding_leaks_no_open_files(tmp_path):
    good, bad = tmp_path / "tone.m4a", tmp_path / "noise.mp3"
    encode_with_pyav(good, "aac")
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        load_audio(good)
        with pytest.raises(AudioError):
            load_audio(bad)
    assert len(os.listdir("/proc/self/fd")) == before


# ---- load_audio: errors name the file ----


def assert_audio_error(source, name: str, match: str) -> None:
    with pytest.raises(AudioError, match=match) as info:
        load_audio(source)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_missing_file_and_directory(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", "nope.wav", "no such file")
    assert_audio_error(tmp_path, str(tmp_path), "directory")


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    assert_audio_error(path, "empty.wav", "empty")
    assert_audio_error(b"", "<bytes>", "empty")


def test_garbage_files(tmp_path):
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(20000))
    assert_audio_error(noise, "noise.mp3", "cannot decode")
    text = tmp_path / "notes.flac"
    text.write_text("this is not audio\n" * 100)
    assert_audio_error(text, "notes.flac", "cannot decode")
    assert_audio_error(text.read_bytes(), "<bytes>", "cannot decode")


def test_nan_samples_in_array_and_file(tmp_path, jfk):
    bad = jfk.copy()
    bad[100] = np.nan
    assert_audio_error(bad, "<array>", "NaN")
    assert_audio_error(torch.full((100,), float("inf")), "<array>", "NaN or infinite")
    path = tmp_path / "nan.wav"
    sf.write(path, bad, SAMPLE_RATE, subtype="FLOAT")
    assert_audio_error(path, "nan.wav", "NaN")


def test_bad_arrays():
    assert_audio_error(np.zeros(0, np.float32), "<array>", "no audio samples")
    assert_audio_error(np.zeros((2, 16000), np.float32), "<array>", "channels, samples")
    assert_audio_error(np.zeros((2, 2, 2), np.float32), "<array>", "expected shape")
    with pytest.raises(ValueError, match="only for array input"):
        load_audio(JFK, sampling_rate=16000)


# ---- load_audio: arrays ----


def test_integer_arrays_are_scaled():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_allclose(load_audio(pcm), [0, 0.5, -1, 32767 / 32768])
    np.testing.assert_allclose(load_audio(pcm.astype(np.int32) << 16), load_audio(pcm))
    np.testing.assert_allclose(load_audio(np.array([128, 0, 255], np.uint8)), [0, -1, 127 / 128])
    np.testing.assert_allclose(load_audio(torch.from_numpy(pcm)), load_audio(pcm))


def test_array_channels_and_amplitudes_kept():
    stereo = np.stack([np.full(100, 0.2), np.full(100, 2.0)], axis=1)  # (samples, channels)
    audio = load_audio(stereo)
    assert audio.dtype == np.float32 and audio.shape == (100,)
    np.testing.assert_allclose(audio, 1.1, rtol=1e-6)  # mean of channels, not clipped


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_array_sampling_rate_is_resampled(rate):
    audio = load_audio(sine(440, 1.0, rate), sampling_rate=rate)
    assert abs(len(audio) - SAMPLE_RATE) <= 1
    assert peak_frequency(audio) == pytest.approx(440, abs=2)
    np.testing.assert_allclose(
        audio[1000:15000], sine(440, 1.0, SAMPLE_RATE)[1000:15000], atol=1e-3
    )


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 44100])
def test_audio_samples_is_the_decoded_length(tmp_path, rate):
    # 16 kHz: read from the header; any other rate: decoded and resampled
    path = tmp_path / f"tone-{rate}.flac"
    sf.write(str(path), sine(440.0, 1.37, rate), rate)
    assert audio_samples(path) == len(load_audio(path))
    assert abs(audio_samples(path) - round(1.37 * SAMPLE_RATE)) <= 1


def test_audio_samples_of_a_broken_file_names_it(tmp_path):
    path = tmp_path / "broken.flac"
    path.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="broken.flac"):
        audio_samples(path)


def test_a_folder_stands_for_the_audio_files_below_it(tmp_path):
    for name in ("talks/b.wav", "talks/a.FLAC", "talks/2024/c.mp3", "talks/notes.txt",
                 "talks/.cache/d.wav", "other/e.ogg"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    talks, other = tmp_path / "talks", tmp_path / "other" / "e.ogg"
    assert audio_files([str(talks), str(other), "missing.wav", str(tmp_path / "empty")]) == [
        str(talks / "2024" / "c.mp3"), str(talks / "a.FLAC"), str(talks / "b.wav"),
        str(other), "missing.wav", str(tmp_path / "empty"),
    ]  # fmt: skip
    assert audio_files(["-", str(other)]) == ["-", str(other)]  # the file piped in stays
    with pytest.raises(ValueError, match="can be read once"):
        audio_files(["-", "-"])
