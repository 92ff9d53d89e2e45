"""Audio in, features out: decode anything to 16 kHz mono float32, then log-mel features.

Decoding: soundfile (libsndfile) for its own formats (wav, flac, ogg, aiff) and bytes; PyAV
(the FFmpeg libraries, no ``ffmpeg`` program needed) for everything else (mp3, m4a, mp4, webm,
...). Channels are averaged and the rate is converted with soxr at quality ``"HQ"`` (the
librosa / HF ``datasets`` default). Amplitudes are left as decoded, never clipped or normalised.

The one padding convention of the project (pseudo-labels, training, evaluation, inference):
a window of at most 30 s of audio is zero-padded *as audio* to ``N_SAMPLES`` samples, and only
then turned into a log-mel spectrogram of ``N_FRAMES`` frames, normalised per window (floor at
max - 8, then ``(x + 4) / 4``). This is what openai-whisper and Hugging Face's
``WhisperFeatureExtractor`` (hence the transformers pipeline) do. faster-whisper instead computes
the log-mel of the unpadded audio and pads the *features* with zeros; on short clips the two give
the model different inputs and different tokens. We pad the audio so that our features equal HF's
``WhisperFeatureExtractor`` exactly (tested to 1e-4), and a model trained or labelled here sees
what it will see in the transformers pipeline.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import BinaryIO, TypeAlias, TypeVar

import numpy as np
import soundfile as sf
import soxr
import torch

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the rate Whisper was trained on
N_FFT = 400  # 25 ms STFT window
HOP_LENGTH = 160  # 10 ms between mel frames
CHUNK_LENGTH = 30  # seconds of audio per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's stride-2 conv halves the frame rate
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50 encoder frames per second
TIME_PRECISION = 1 / TOKENS_PER_SECOND  # 0.02 s, one timestamp token step
N_MELS = 80  # large-v3 and its distilled students use 128

AudioSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | BinaryIO | np.ndarray | torch.Tensor
)
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class AudioError(ValueError):
    """Audio that cannot be used: missing, unreadable, undecodable, empty or non-finite.

    The message is one line that names the file (``'<array>'`` / ``'<bytes>'`` for in-memory
    input) and says what is wrong.
    """


def load_audio(source: AudioSource, sampling_rate: int | None = None) -> np.ndarray:
    """Decode or convert ``source`` to 16 kHz mono float32 samples.

    Args:
        source: a path (``str`` / ``PathLike``), the bytes of an audio file, a binary file object
            (read to its end), or samples as a numpy array / torch tensor of shape
            ``(samples,)`` or ``(samples, channels)``; integer samples are scaled to [-1, 1].
        sampling_rate: the rate of an array ``source`` in Hz (default 16000). Files carry their
            own rate, so passing it with a file is an error.

    Returns:
        ``(n_samples,)`` float32, C-contiguous, at ``SAMPLE_RATE`` Hz, channels averaged.

    Raises:
        AudioError: missing file, directory, empty or undecodable data, zero samples, or
            NaN / inf samples; the message names the file.
    """
    if isinstance(source, np.ndarray | torch.Tensor):
        rate = SAMPLE_RATE if sampling_rate is None else sampling_rate
        if not rate > 0:
            raise ValueError(f"sampling_rate must be a positive number of Hz, got {rate!r}")
        return _to_mono_16k(_array_to_float(source, "<array>"), rate, "<array>")
    if sampling_rate is not None:
        raise ValueError(
            "sampling_rate is only for array input; a file's rate is read from the file"
        )
    samples, rate, name = _decode(source)
    return _to_mono_16k(samples, rate, name)


def audio_samples(path: str | os.PathLike) -> int:
    """Samples ``load_audio(path)`` gives at 16 kHz: the header's frame count for a 16 kHz
    file, else the decoded length."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError):
        info = None
    if info is not None and info.samplerate == SAMPLE_RATE:
        return int(info.frames)
    return len(load_audio(path))


def _decode(source: AudioSource) -> tuple[np.ndarray, int, str]:
    """Decode a path, bytes or binary file -> ``((samples, channels) float32, rate, name)``."""
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        _check_path(Path(name), name)
        return (*_decode_file(lambda: name, name), name)
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "<bytes>"
    elif hasattr(source, "read"):
        data = source.read()
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else "<bytes>"
        if not isinstance(data, bytes):
            raise TypeError(f"{name!r} must be opened in binary mode ('rb'), not text mode")
    else:
        raise TypeError(
            f"cannot load audio from {type(source).__name__}; pass a path, bytes, "
            "a binary file object, or a numpy array / torch tensor of samples"
        )
    if not data:
        raise AudioError(f"cannot decode {name!r}: empty file (0 bytes)")
    return (*_decode_file(lambda: io.BytesIO(data), name), name)


# what a folder given in place of files is searched for (audio and the common video
# containers PyAV reads the sound of)
AUDIO_SUFFIXES = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif",
    ".aiff", ".au", ".caf", ".wma", ".webm", ".mp4", ".mkv", ".mov",
})  # fmt: skip


STDIN = "-"  # an input name standing for the file piped in on standard input


def audio_files(paths: Iterable[str]) -> list[str]:
    """``paths`` with each folder among them replaced by the audio files below it (by
    ``AUDIO_SUFFIXES``, any case; sorted, hidden files and folders left out). Anything else
    stays as given, so a missing file is reported when it is read; so is a folder that holds
    no audio. ``STDIN`` may be among them once (``input_source``): it can be read once."""
    paths = list(paths)
    if paths.count(STDIN) > 1:
        raise ValueError(f"standard input ({STDIN}) can be read once")
    files = []
    for name in paths:
        folder = Path(name)
        found = []
        if folder.is_dir():
            found = sorted(
                str(p) for p in folder.rglob("*")
                if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            )  # fmt: skip
        files += found or [name]
    return files


def input_source(name: str) -> str | BinaryIO:
    """What ``load_audio`` reads for an input name: the file piped in for ``STDIN``, else the
    path."""
    return sys.stdin.buffer if name == STDIN else name


def _check_path(path: Path, name: str) -> None:
    """Fail early, with a clear message, on paths no decoder could read."""
    if not path.exists():
        raise AudioError(f"cannot read {name!r}: no such file")
    if path.is_dir():
        raise AudioError(f"cannot read {name!r}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"cannot decode {name!r}: empty file (0 bytes)")


# libsndfile's own formats; for anything else (mp3 included: libsndfile's mpg123 prints
# notes on stderr for corrupt files) PyAV goes first
_SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".caf"}


def _decode_file(open_source: Callable[[], str | BinaryIO], name: str) -> tuple[np.ndarray, int]:
    """Try soundfile, then PyAV. ``open_source()`` gives a fresh path or stream for each try."""
    suffix = Path(name).suffix.lower() if not name.startswith("<") else ""
    if suffix and suffix not in _SOUNDFILE_SUFFIXES:
        return _decode_with_pyav(open_source(), name)
    try:
        samples, rate = sf.read(open_source(), dtype="float32", always_2d=True)
    except sf.SoundFileError as err:
        logger.debug("soundfile cannot decode %r (%s); trying PyAV", name, err)
        return _decode_with_pyav(open_source(), name)
    return samples, rate


def _decode_with_pyav(file: str | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV -> ``((samples, channels) float32, rate)``."""
    import av  # FFmpeg's libraries are only needed for formats libsndfile cannot read

    try:
        with av.open(file, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"cannot decode {name!r}: no audio stream in the file")
            chunks, rate = _decode_stream(container, container.streams.audio[0], name)
    except av.FFmpegError as err:
        reason = err.strerror or str(err)
        raise AudioError(
            f"cannot decode {name!r}: {reason} (not a supported audio or video file, or corrupt)"
        ) from err
    if not chunks:
        raise AudioError(f"cannot decode {name!r}: no audio samples (empty or corrupt file)")
    return np.concatenate(chunks, axis=1).T, rate


def _decode_stream(container, stream, name: str) -> tuple[list[np.ndarray], int]:
    """All frames of ``stream`` as ``(channels, samples)`` float32 chunks at the first frame's rate.

    Packets that fail to decode are skipped, as faster-whisper does, so a truncated or
    partly corrupt file yields the audio that is there.
    """
    import av

    resampler, chunks, rate, skipped = None, [], 0, 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            skipped += 1
            continue
        for frame in frames:
            if resampler is None:  # planar float, keeping the first frame's layout and rate
                resampler = av.AudioResampler("fltp", frame.layout, frame.sample_rate)
                rate = frame.sample_rate
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
    if resampler is None:
        return [], 0
    chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if skipped:
        logger.warning("%r: skipped %d undecodable packets", name, skipped)
    return chunks, rate


def _array_to_float(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` -> ``(samples, channels)`` float32 in [-1, 1]."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    if array.ndim not in (1, 2):
        raise AudioError(
            f"cannot load {name!r}: expected shape (samples,) or (samples, channels), "
            f"got {tuple(array.shape)}"
        )
    if array.ndim == 1:
        array = array[:, None]
    if array.size and array.shape[1] > array.shape[0]:
        raise AudioError(
            f"cannot load {name!r}: shape {tuple(array.shape)} looks like (channels, samples); "
            "pass (samples, channels), e.g. array.T"
        )
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind == "i":  # int16 -> / 32768, as libsndfile does
        return (array / -np.iinfo(array.dtype).min).astype(np.float32)
    if kind == "u":  # unsigned PCM (8-bit wav) is centred on half the range
        half = (int(np.iinfo(array.dtype).max) + 1) // 2
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioError(f"cannot load {name!r}: unsupported sample dtype {array.dtype}")


def _to_mono_16k(samples: np.ndarray, rate: float, name: str) -> np.ndarray:
    """``(samples, channels)`` float32 at ``rate`` Hz -> ``(n,)`` float32 at 16 kHz, checked."""
    if samples.shape[0] == 0:
        raise AudioError(f"cannot load {name!r}: no audio samples")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    finite = np.isfinite(mono)
    if not finite.all():
        raise AudioError(
            f"cannot load {name!r}: {np.size(finite) - np.count_nonzero(finite)} samples are "
            "NaN or infinite; repair or re-export the audio"
        )
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
        if mono.size == 0:
            raise AudioError(f"cannot load {name!r}: too short to resample to {SAMPLE_RATE} Hz")
    return np.ascontiguousarray(mono, dtype=np.float32)


def pad_or_trim(array: ArrayT, length: int = N_SAMPLES, axis: int = -1) -> ArrayT:
    """Zero-pad at the end, or trim, ``array`` along ``axis`` to ``length`` (samples or frames).

    Works on numpy arrays and torch tensors; a trimmed result is a view of the input.
    """
    size = array.shape[axis]
    if isinstance(array, torch.Tensor):
        if size > length:
            return array.narrow(axis, 0, length)
        if size < length:
            pad_shape = list(array.shape)
            pad_shape[axis] = length - size
            return torch.cat([array, array.new_zeros(pad_shape)], dim=axis)
        return array
    array = np.asarray(array)
    if size > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        return array[tuple(index)]
    if size < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - size)
        return np.pad(array, widths)
    return array


@cache
def _mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney mel filters ``(n_mels, 1 + N_FFT // 2)`` float32 on CPU, built as HF Whisper does."""
    from transformers.audio_utils import mel_filter_bank  # heavy import, needed only here

    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(filters.T, dtype=np.float32))


def log_mel_spectrogram(
    audio: np.ndarray | torch.Tensor,
    n_mels: int = N_MELS,
    *,
    device: str | torch.device | None = None,
    n_samples: int = N_SAMPLES,
) -> torch.Tensor:
    """Whisper's log-mel features of windows of 16 kHz audio, equal to HF's WhisperFeatureExtractor.

    Args:
        audio: float samples in [-1, 1] at 16 kHz, ``(n_samples,)`` or ``(batch, n_samples)``;
            each row is zero-padded (or trimmed) to ``N_SAMPLES`` (30 s) before the STFT.
        n_mels: mel bands, 80 (most Whisper models) or 128 (large-v3).
        device: where to compute; default the tensor's device (CPU for numpy input).
        n_samples: window length the rows are padded or trimmed to, a multiple of
            ``HOP_LENGTH``; shorter than 30 s for a shortened audio context (rows that end in
            at least a second of silence give the first frames of their 30 s features).

    Returns:
        float32 ``(n_mels, n_samples // HOP_LENGTH)`` (30 s: ``N_FRAMES``) or with a leading
        batch axis, 100 frames per second, each window floored at its max - 8 (log10 units)
        and scaled by ``(x + 4) / 4``.
    """
    if n_samples <= 0 or n_samples % HOP_LENGTH:
        raise ValueError(f"n_samples must be a positive multiple of {HOP_LENGTH}, not {n_samples}")
    x = _as_float_tensor(audio, device)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be (n_samples,) or (batch, n_samples), got {tuple(x.shape)}")
    batch = pad_or_trim((x if x.ndim == 2 else x[None]).float(), n_samples)
    window = torch.hann_window(N_FFT, periodic=True, device=batch.device)
    stft = torch.stft(
        batch,
        N_FFT,
        HOP_LENGTH,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # (batch, 1 + N_FFT // 2, N_FRAMES + 1)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # the last frame is dropped, as in HF
    mel = _mel_filters(n_mels).to(batch.device) @ power  # (batch, n_mels, N_FRAMES)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per window, not per batch
    log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
    return log_spec if x.ndim == 2 else log_spec[0]


def _as_float_tensor(audio: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """Float samples as a tensor on ``device`` (default: where they are; CPU for numpy)."""
    if not isinstance(audio, torch.Tensor):
        audio = np.asarray(audio)
        if audio.dtype.kind != "f":
            raise TypeError(
                f"log_mel_spectrogram expects float samples in [-1, 1], got {audio.dtype}; "
                "use load_audio() to convert"
            )
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        audio = torch.from_numpy(audio if audio.flags.writeable else audio.copy())
    elif not audio.is_floating_point():
        raise TypeError(
            f"log_mel_spectrogram expects float samples in [-1, 1], got {audio.dtype}; "
            "use load_audio() to convert"
        )
    return audio if device is None else audio.to(device)
