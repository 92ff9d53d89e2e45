"""Shared fixtures: real weights, real audio, and speech synthesised offline with flite."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# for `python -m whisperforge.cli ...` / torchrun subprocesses: this tree's code, 1 thread
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
JFK = REPO / "samples" / "jfk.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)

# Plain sentences for synthetic speech (written for these tests).
SENTENCES = [
    "The train to the city leaves from platform four at half past seven.",
    "Please remember to water the plants while I am away next week.",
    "My brother bought a small house near the river last summer.",
    "We should finish the report before the meeting on Thursday morning.",
    "The children played football in the park until it started to rain.",
    "She opened the window and listened to the birds in the garden.",
    "A cup of hot tea is the best thing on a cold winter evening.",
    "The museum is closed on Mondays but open late on Fridays.",
    "He forgot his keys at the office and had to wait outside.",
    "They walked along the beach and collected shells for an hour.",
    "The new library has thousands of books and a quiet reading room.",
    "Our neighbours are planning a big party for their daughter's birthday.",
    "I like to read the newspaper with my breakfast every morning.",
    "The doctor told him to rest for a few days and drink more water.",
    "We watched an old film about a ship lost at sea.",
    "The farmer sold fresh eggs and vegetables at the market.",
    "Could you tell me the way to the nearest post office?",
    "The bridge was closed for repairs so we took the long road home.",
    "Her grandmother taught her how to bake bread when she was young.",
    "The weather will be sunny in the morning with clouds later in the day.",
    "Thank you for calling, someone will answer your question shortly.",
    "The students asked the teacher many questions about the history lesson.",
    "He plays the piano every evening after dinner.",
    "The airport was busy because many flights were delayed by the storm.",
    "We need more chairs for the guests in the dining room.",
    "The little dog ran across the street to greet its owner.",
    "Most shops in the village close early on Sunday afternoons.",
    "She writes letters to her friends in other countries.",
    "The mountain road is narrow and full of sharp turns.",
    "After the concert we went out for dinner at a small restaurant.",
    "The garden looks beautiful when all the roses are in bloom.",
    "Please turn off the lights when you leave the room.",
    "The bus was late again this morning so I walked to work.",
    "His favourite subject at school was always mathematics.",
    "The lake freezes every winter and people go skating on it.",
    "We painted the kitchen yellow to make it feel brighter.",
    "The baker starts work at four so the bread is ready by dawn.",
    "Please send me the photographs from the wedding when you can.",
    "The old clock in the hall stopped working many years ago.",
    "We are going camping in the forest at the end of the month.",
    "The nurse checked on every patient before the end of her shift.",
    "A strong wind blew the leaves off the trees during the night.",
]


def flite_available() -> bool:
    return shutil.which("flite") is not None


needs_flite = pytest.mark.skipif(not flite_available(), reason="flite is not installed")


def synthesize(text: str, path: Path, voice: str = "slt") -> Path:
    """Speak ``text`` with flite into a wav file (a little slower than flite's default)."""
    command = ["flite", "-voice", voice, "--setf", "duration_stretch=1.25", "-t", text]
    subprocess.run([*command, "-o", str(path)], check=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def tiny_en():
    from whisperforge.models import load_model

    return load_model("whisper-tiny.en")


@pytest.fixture(scope="session")
def base_transcriber():
    from whisperforge.transcribe import Transcriber

    torch.manual_seed(0)
    return Transcriber("whisper-base")


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory) -> list[tuple[Path, str]]:
    """Short synthetic utterances (two voices) with their reference texts."""
    if not flite_available():
        pytest.skip("flite is not installed")
    folder = tmp_path_factory.mktemp("speech")
    voices = ["slt", "kal16"]
    return [
        (synthesize(text, folder / f"clip{i:02d}.wav", voices[i % 2]), text)
        for i, text in enumerate(SENTENCES)
    ]


@pytest.fixture(scope="session")
def long_recording(speech_clips, tmp_path_factory) -> tuple[Path, str]:
    """Several minutes of speech: the clips joined with short pauses."""
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, load_audio

    rng = np.random.default_rng(0)
    pieces = []
    for path, _ in speech_clips:
        pieces.append(load_audio(path))
        pieces.append(np.zeros(int(rng.uniform(0.3, 0.9) * SAMPLE_RATE), np.float32))
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, np.concatenate(pieces), SAMPLE_RATE)
    return path, " ".join(text for _, text in speech_clips)


# --------------------------------------------------------------------------- training recipes


@pytest.fixture(scope="session")
def tiny_en_tokenizer():
    """The text tokenizer of whisper-tiny.en (English-only)."""
    from whisperforge.models import resolve_model
    from whisperforge.tokenizer import Tokenizer

    return Tokenizer.from_file(resolve_model("whisper-tiny.en") / "tokenizer.json", False)


def save_tiny_whisper(folder: Path, tokenizer, **overrides) -> Path:
    """A random Whisper (seed 0; d_model 32, 2 encoder layers, 2 heads, FFN 64) with
    tiny.en's vocabulary and tokenizer, saved as an HF folder; ``overrides`` are
    ``WhisperConfig`` fields (``decoder_layers``, ``init_std``, ...)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisperforge.models import resolve_model

    torch.manual_seed(0)
    fields = {
        "vocab_size": 51864, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
        "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64, "num_mel_bins": 80, "max_source_positions": 1500,
        "max_target_positions": 448, "decoder_start_token_id": tokenizer.sot,
        "eos_token_id": tokenizer.eot, "pad_token_id": tokenizer.eot,
        "bos_token_id": tokenizer.eot,
    }  # fmt: skip
    WhisperForConditionalGeneration(WhisperConfig(**fields | overrides)).save_pretrained(folder)
    shutil.copy(resolve_model("whisper-tiny.en") / "tokenizer.json", folder)
    return folder


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def read_log(folder: Path) -> dict[int, dict]:
    """The rows of a run's ``log.csv`` that hold a loss, by step (values as strings)."""
    with (folder / "log.csv").open() as handle:
        return {int(r["step"]): r for r in csv.DictReader(handle) if r["loss"]}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``path`` exists while ``proc`` keeps running (its stderr in the failure)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise AssertionError(f"exit {proc.returncode} before {path} appeared\n{stderr}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
