"""Frozen-encoder outputs on disk, so a multi-epoch run encodes each utterance once.

``EncoderCache(folder, fingerprint)`` stores one ``(n_audio_ctx, d_model)`` float16 tensor per
audio file in a safetensors file under ``folder/<fingerprint>/``. The key is the model
fingerprint (``module_fingerprint(model.model.encoder)``: a hash of every encoder tensor, so a
changed encoder never reads stale outputs) and the file's identity (resolved path, size,
modification time). Files are written to a unique temporary name and renamed, so two
processes may fill the same cache at once and a reader never sees half a file.

``SharedEncoder`` runs a frozen encoder on a batch of audio files through such a cache;
``fill_cache`` (``whisperforge encoder-cache``) encodes every file of some manifests ahead
of training, so a run starts warm.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the features feeding the encoder change (padding, mel)
_TENSOR = "hidden"


def module_fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """A hex digest of ``module``'s tensors (names, shapes, dtypes, values) and ``extra``."""
    digest = hashlib.sha256(f"{CACHE_VERSION}:{extra}".encode())
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_fingerprint(bundle) -> str:
    """The key under which the training recipes store a loaded model's encoder outputs."""
    return module_fingerprint(bundle.model.model.encoder, f"mels={bundle.n_mels}")


def file_identity(path: str | Path, part: str = "") -> str:
    """A key for the audio in ``path`` (and ``part`` of it, e.g. an offset) as it is now."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    raw = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}:{part}"
    return hashlib.sha256(raw.encode()).hexdigest()


class EncoderCache:
    """Encoder outputs by audio file; see the module docstring."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.root = Path(folder) / fingerprint[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, audio: str | Path, part: str) -> Path:
        key = file_identity(audio, part)
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, audio: str | Path, part: str = "") -> bool:
        """Whether an entry for ``audio`` (as it is now) exists; it is not read."""
        return self._path(audio, part).exists()

    def get(self, audio: str | Path, part: str = "") -> torch.Tensor | None:
        """The stored float16 ``(n_audio_ctx, d_model)`` tensor, or None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(audio, part)
        if not path.exists():
            return None
        try:
            return load_file(str(path))[_TENSOR]
        except (SafetensorError, KeyError, OSError) as error:  # damaged: recompute it
            logger.warning("encoder cache entry %s unreadable (%s); recomputing", path, error)
            return None

    def put(self, audio: str | Path, hidden: torch.Tensor, part: str = "") -> torch.Tensor:
        """Store ``hidden`` ``(n_audio_ctx, d_model)`` as float16; returns what was stored."""
        from safetensors.torch import save_file

        path = self._path(audio, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        value = hidden.detach().to("cpu", torch.float16).contiguous()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file({_TENSOR: value}, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return value


class SharedEncoder:
    """Frozen-encoder states ``(batch, n_audio_ctx, d_model)`` for a batch of audio files:
    from the cache when there, else computed once (no graph) and stored."""

    def __init__(self, encoder: torch.nn.Module, n_mels: int, device, cache=None):
        self.encoder, self.n_mels, self.device, self.cache = encoder, n_mels, device, cache
        self._lengths: dict[str, int] = {}

    def features(self, audio: list[str], n_samples: int | None = None) -> torch.Tensor:
        """``(batch, n_mels, frames)`` log-mel of each file padded to ``n_samples`` (default
        30 s: ``N_FRAMES``), computed on the encoder's device (files are decoded on the CPU)."""
        from whisperforge.audio import load_audio

        return self.mel([load_audio(a) for a in audio], n_samples)

    def mel(self, waves: Sequence[np.ndarray], n_samples: int | None = None) -> torch.Tensor:
        """``features`` of decoded 16 kHz waveforms."""
        from whisperforge.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim

        n_samples = n_samples or N_SAMPLES
        waves = [pad_or_trim(torch.from_numpy(w), n_samples) for w in waves]
        return log_mel_spectrogram(torch.stack(waves), self.n_mels, device=self.device,
                                   n_samples=n_samples)  # fmt: skip

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """30 s log-mel ``(batch, n_mels, 3000)`` -> states, no graph, not cached."""
        dtype = next(self.encoder.parameters()).dtype
        with torch.no_grad():
            return self.encoder(features.to(self.device, dtype)).last_hidden_state

    def samples(self, audio: list[str]) -> list[int]:
        """Length of each file in 16 kHz samples (read once, remembered)."""
        from whisperforge.audio import audio_samples

        for a in audio:
            if a not in self._lengths:
                self._lengths[a] = audio_samples(a)
        return [self._lengths[a] for a in audio]

    def short(self, audio: list[str], n_samples: int) -> torch.Tensor:
        """States of the files each padded to ``n_samples`` (a shortened audio context,
        ``(batch, n_samples // 320, d_model)``): computed every time, never cached."""
        from whisperforge.models.inference import encoder_states

        mel = self.features(audio, n_samples)
        dtype = next(self.encoder.parameters()).dtype
        with torch.no_grad():
            return encoder_states(self.encoder, mel.to(dtype))

    def __call__(self, audio: list[str]) -> torch.Tensor:
        found = [self.cache.get(a) if self.cache is not None else None for a in audio]
        missing = [i for i, h in enumerate(found) if h is None]
        if missing:
            hidden = self.encode(self.features([audio[i] for i in missing]))
            for i, h in zip(missing, hidden):
                # with a cache, fresh outputs are rounded like cached ones: same run either way
                found[i] = self.cache.put(audio[i], h) if self.cache is not None else h
        dtype = next(self.encoder.parameters()).dtype
        return torch.stack([h.to(self.device, dtype) for h in found])


@dataclass
class FillReport:
    """What ``fill_cache`` did with its share of the files."""

    files: int = 0  # distinct audio files given to this process
    cached: int = 0  # already in the cache
    encoded: int = 0  # encoded now
    seconds: float = 0.0  # audio encoded now
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


def manifest_audio(manifests: Sequence[str | Path], max_seconds: float = 30.0):
    """The distinct audio files of ``manifests`` that the training recipes would read (rows
    of one encoder window at most), in order, and the rows left out by reason."""
    from whisperforge.data.manifest import load_manifest

    files: dict[str, None] = {}
    skipped: Counter = Counter()
    for manifest in manifests:
        report = load_manifest(manifest, max_duration=max_seconds)
        skipped.update(report.reasons())
        files.update((str(utt.audio), None) for utt in report.kept)
    return list(files), skipped


def fill_cache(
    encoder: SharedEncoder,
    audio: Sequence[str],
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> FillReport:
    """Encode every file of ``audio`` not yet in ``encoder``'s cache, ``batch_size`` at a
    time. A file that cannot be decoded is reported in ``failed`` and the rest go on;
    entries are written atomically, so an interrupted fill resumes where it stopped.
    ``progress`` gets the number of files each batch settled (cached, encoded or failed)."""
    from whisperforge.audio import SAMPLE_RATE, AudioError, load_audio

    if encoder.cache is None:
        raise ValueError("fill_cache needs a SharedEncoder with a cache")
    report = FillReport(files=len(audio))
    todo = []
    for a in audio:
        if encoder.cache.has(a):
            report.cached += 1
        else:
            todo.append(a)
    if progress is not None and report.cached:
        progress(report.cached)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        names, waves = [], []
        for a in batch:
            try:
                waves.append(load_audio(a))
                names.append(a)
            except (AudioError, OSError) as error:
                report.failed.append((a, str(error)))
        if waves:
            for name, hidden in zip(names, encoder.encode(encoder.mel(waves))):
                encoder.cache.put(name, hidden)
            report.encoded += len(waves)
            report.seconds += sum(len(w) for w in waves) / SAMPLE_RATE
        if progress is not None:
            progress(len(batch))
    return report
