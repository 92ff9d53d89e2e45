"""Frozen-encoder outputs on disk, so a multi-epoch run encodes each utterance once.

``EncoderCache(folder, fingerprint)`` stores one ``(n_audio_ctx, d_model)`` float16 tensor per
audio file in a safetensors file under ``folder/<fingerprint>/``. The key is the model
fingerprint (``module_fingerprint(model.model.encoder)``: a hash of every encoder tensor, so a
changed encoder never reads stale outputs) and the file's identity (resolved path, size,
modification time). Files are written to a unique temporary name and renamed, so two
processes may fill the same cache at once and a reader never sees half a file.

``SharedEncoder`` runs a frozen encoder on a batch of audio files through such a cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

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
        from whisperforge.audio import N_SAMPLES, load_audio, log_mel_spectrogram, pad_or_trim

        n_samples = n_samples or N_SAMPLES
        waves = [pad_or_trim(torch.from_numpy(load_audio(a)), n_samples) for a in audio]
        return log_mel_spectrogram(torch.stack(waves), self.n_mels, device=self.device,
                                   n_samples=n_samples)  # fmt: skip

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
            features = self.features([audio[i] for i in missing])
            dtype = next(self.encoder.parameters()).dtype
            with torch.no_grad():
                hidden = self.encoder(features.to(self.device, dtype)).last_hidden_state
            for i, h in zip(missing, hidden):
                # with a cache, fresh outputs are rounded like cached ones: same run either way
                found[i] = self.cache.put(audio[i], h) if self.cache is not None else h
        dtype = next(self.encoder.parameters()).dtype
        return torch.stack([h.to(self.device, dtype) for h in found])
