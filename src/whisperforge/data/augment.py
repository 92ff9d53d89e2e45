"""Audio augmentation for synthetic speech: speed, reverb, telephone band, additive noise.

Everything works on float32 mono arrays at a given sample rate (16 kHz in the corpus builder)
with numpy and soxr only, and every random choice comes from the ``np.random.Generator`` passed
in, so the same generator state gives the same samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import soxr


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (each drawn independently per utterance).

    ``speed`` resamples (tempo and pitch together, Kaldi-style 0.9/1.0/1.1 perturbation);
    ``reverb`` convolves with a synthetic room response of RT60 in ``rt60_s`` seconds;
    ``telephone`` band-limits to 300-3400 Hz at 8 kHz with 8-bit mu-law;
    ``noise`` adds white/pink/brown noise at an SNR in ``snr_db`` decibels.
    """

    p_speed: float = 0.3
    speed_factors: tuple[float, ...] = (0.9, 1.1)
    p_reverb: float = 0.25
    rt60_s: tuple[float, float] = (0.2, 0.7)
    p_telephone: float = 0.1
    p_noise: float = 0.4
    snr_db: tuple[float, float] = (5.0, 25.0)

    def to_dict(self) -> dict:
        return asdict(self)


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``factor`` times faster (shorter by ``1/factor``); pitch moves with it."""
    out_rate = max(1, round(sample_rate / factor))
    return soxr.resample(audio, sample_rate, out_rate, quality="HQ").astype(np.float32)


def room_impulse(sample_rate: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room response: direct path plus exponentially decaying noise (60 dB in
    ``rt60_s`` seconds) starting after a few milliseconds."""
    n = max(1, int(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078
    gap = int(0.005 * sample_rate)
    tail[:gap] = 0.0
    tail *= 0.3 / (np.sqrt(np.sum(tail**2)) + 1e-9)
    tail[0] = 1.0
    return tail.astype(np.float32)


def _fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)[:n]


def reverb(
    audio: np.ndarray, sample_rate: int, rt60_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Convolve with ``room_impulse``; same length as the input, same peak level."""
    wet = _fft_convolve(audio, room_impulse(sample_rate, rt60_s, rng))[: len(audio)]
    peak_in, peak_out = np.max(np.abs(audio)), np.max(np.abs(wet))
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Narrow-band telephone channel: 8 kHz, 300-3400 Hz band-pass, 8-bit mu-law."""
    narrow = soxr.resample(audio, sample_rate, 8000, quality="HQ").astype(np.float64)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(len(narrow), 1 / 8000)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    band = np.fft.irfft(spectrum, len(narrow))
    peak = np.max(np.abs(band)) or 1.0
    x = band / peak
    mu = 255.0
    coded = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127) / 127
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu * peak
    return soxr.resample(decoded.astype(np.float32), 8000, sample_rate, quality="HQ")


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f^k spectrum: white (k=0), pink (k=1), brown (k=2)."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    white = rng.standard_normal(n)
    if exponent:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1] if n > 1 else 1.0
        white = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def add_noise(
    audio: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white"
) -> np.ndarray:
    """Add noise so that speech power / noise power = ``snr_db`` decibels."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    if power == 0.0:
        return audio
    noise = colored_noise(len(audio), color, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def draw_augmentation(rng: np.random.Generator, config: AugmentConfig) -> dict:
    """Choose which effects an utterance gets and their settings, e.g.
    ``{"speed": 1.1, "noise": {"color": "pink", "snr_db": 12.3}}`` (empty: clean)."""
    draws = rng.random(4)  # one draw per effect keeps each choice independent of the others
    applied: dict = {}
    if draws[0] < config.p_speed:
        applied["speed"] = float(rng.choice(config.speed_factors))
    if draws[1] < config.p_reverb:
        applied["reverb_rt60_s"] = round(float(rng.uniform(*config.rt60_s)), 3)
    if draws[2] < config.p_telephone:
        applied["telephone"] = True
    if draws[3] < config.p_noise:
        color = str(rng.choice(["white", "pink", "brown"]))
        applied["noise"] = {"color": color, "snr_db": round(float(rng.uniform(*config.snr_db)), 1)}
    return applied


def apply_augmentation(
    audio: np.ndarray, sample_rate: int, params: dict, rng: np.random.Generator
) -> np.ndarray:
    """Apply ``draw_augmentation``'s choice in the order speed -> reverb -> telephone -> noise;
    ``rng`` supplies the room response and noise samples."""
    if "speed" in params:
        audio = speed_perturb(audio, params["speed"], sample_rate)
    if "reverb_rt60_s" in params:
        audio = reverb(audio, sample_rate, params["reverb_rt60_s"], rng)
    if params.get("telephone"):
        audio = telephone(audio, sample_rate)
    if "noise" in params:
        audio = add_noise(audio, params["noise"]["snr_db"], rng, params["noise"]["color"])
    return audio


def augment(
    audio: np.ndarray, sample_rate: int, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, dict]:
    """Draw and apply in one call; returns the audio and what was applied."""
    params = draw_augmentation(rng, config)
    return apply_augmentation(audio, sample_rate, params, rng), params
