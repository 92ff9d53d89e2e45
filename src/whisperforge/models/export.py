"""Export any model reference as a Hugging Face folder or a CTranslate2 folder.

A reference is whatever ``resolve_model`` accepts: a short name, a Hugging Face or CTranslate2
folder, a student delta folder (``whisperforge distill init``; rebuilt from its teacher) or a
hub id. The exported folder is complete on its own:

- ``hf``: safetensors, ``config.json``, ``generation_config.json``, tokenizer and
  feature-extractor files; ``transformers.pipeline("automatic-speech-recognition", model=...)``
  loads it.
- ``ct2``: ``model.bin`` (binary version 6, ``WhisperSpec`` revision 3), ``config.json`` with
  the fields CTranslate2 and faster-whisper read (``alignment_heads``, ``lang_ids``,
  ``suppress_ids``, ``suppress_ids_begin``), ``tokenizer.json``, ``vocabulary.txt`` and
  ``preprocessor_config.json``; ``faster_whisper.WhisperModel(folder)`` loads it, and so does
  whisperforge itself.

The folder is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from whisperforge.fileio import atomic_folder
from whisperforge.models.convert import save_model_files, write_processor_files
from whisperforge.models.ct2 import QUANTIZATIONS, hf_to_ct2_variables, write_ct2_model
from whisperforge.models.loading import ModelBundle, load_model
from whisperforge.models.loading import remap_alignment_heads as remap_alignment_heads

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("hf", "ct2")
HF_QUANTIZATIONS = ("float16", "float32")  # safetensors hold plain floats
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "normalizer.json")  # fmt: skip
_TIMESTAMP_SECONDS = 0.02  # one timestamp token per 20 ms


class ExportError(ValueError):
    """An export that cannot be written as asked (destination taken, nothing to export)."""


@dataclass(frozen=True)
class ExportOptions:
    """What to write: ``format`` ``hf`` or ``ct2``, weights in ``quantization``.

    ``int8`` (CTranslate2 only) stores every linear, convolution and embedding weight as int8
    with one float32 scale per output row; everything else stays float32.
    """

    format: str = "ct2"
    quantization: str = "float16"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(
                f"unknown export format {self.format!r}; choose from {', '.join(EXPORT_FORMATS)}"
            )
        allowed = QUANTIZATIONS if self.format == "ct2" else HF_QUANTIZATIONS
        if self.quantization not in allowed:
            raise ValueError(
                f"quantization {self.quantization!r} is not available for {self.format} "
                f"exports; choose from {', '.join(allowed)}"
            )


def export_model(
    model: str | Path,
    out: str | Path,
    format: str = "ct2",
    quantization: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (any reference) into the folder ``out``; return ``out``.

    Raises ``ModelNotFoundError`` for a reference that names no model, ``ValueError`` for an
    unknown format or quantization, ``ExportError`` when ``out`` holds files and
    ``overwrite`` is false, or when ``out`` is the model's own folder.
    """
    options = ExportOptions(format, quantization, overwrite)
    out = Path(out).expanduser()
    _check_destination(out, options.overwrite)  # before the (slow) load
    bundle = load_model(model)
    if out.resolve() == bundle.path.resolve():
        raise ExportError(f"{out} is the model's own folder; export to another folder")
    heads = [list(pair) for pair in bundle.alignment_heads]
    writer = _write_ct2 if options.format == "ct2" else _write_hf
    with atomic_folder(out) as tmp:
        writer(bundle, heads, options.quantization, tmp)
    logger.info("exported %s as %s %s -> %s", model, format, quantization, out)
    return out


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose another folder or pass --overwrite")


def _generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


# -- writers ------------------------------------------------------------------------------


def _write_processor(source: Path, out: Path, n_mels: int, tokenizer_only: bool = False) -> None:
    """Tokenizer and feature-extractor files: copied when the source has them, else made.

    ``tokenizer_only``: just ``tokenizer.json`` (all CTranslate2 and faster-whisper read).
    """
    if not (source / "tokenizer.json").exists():
        raise ExportError(f"{source} has no tokenizer.json; a Whisper folder needs one")
    if tokenizer_only:
        shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    elif (source / "tokenizer_config.json").exists():
        for name in _TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copy(source / name, out / name)
    else:
        write_processor_files(source / "tokenizer.json", n_mels, out)
    if (source / "preprocessor_config.json").exists():
        shutil.copy(source / "preprocessor_config.json", out / "preprocessor_config.json")
    elif not (out / "preprocessor_config.json").exists():
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out)


def _write_hf(bundle: ModelBundle, heads: list[list[int]], quantization: str, out: Path) -> None:
    dtype = torch.float16 if quantization == "float16" else torch.float32
    save_model_files(bundle.model.to(dtype), out)
    generation = _generation_config(bundle.path)
    if generation:  # keep the source's (language ids, timestamps...), heads fitted
        generation["alignment_heads"] = heads
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    _write_processor(bundle.path, out, bundle.n_mels)


def ct2_config(bundle: ModelBundle, heads: list[list[int]]) -> dict:
    """The ``config.json`` CTranslate2 reads beside ``model.bin`` (what its converter writes)."""
    config = bundle.model.config
    return {
        "alignment_heads": heads,
        "lang_ids": list(bundle.tokenizer.language_tokens.values()),  # in LANGUAGES order
        "suppress_ids": list(config.suppress_tokens or []),
        "suppress_ids_begin": list(config.begin_suppress_tokens or []),
    }


def vocabulary(bundle: ModelBundle) -> list[str]:
    """Token strings in id order for every embedding row; the timestamp tokens, which the
    tokenizer file does not list, are named ``<|0.00|>`` ... ``<|30.00|>``."""
    tok = bundle.tokenizer
    first = tok.timestamp_begin
    return [
        tok.backend.id_to_token(i) if i < first else f"<|{(i - first) * _TIMESTAMP_SECONDS:.2f}|>"
        for i in range(bundle.model.config.vocab_size)
    ]


def _write_ct2(bundle: ModelBundle, heads: list[list[int]], quantization: str, out: Path) -> None:
    variables = hf_to_ct2_variables(bundle.model.state_dict(), bundle.model.config, quantization)
    write_ct2_model(out / "model.bin", variables)
    (out / "config.json").write_text(json.dumps(ct2_config(bundle, heads), indent=2))
    (out / "vocabulary.txt").write_text("\n".join(vocabulary(bundle)) + "\n", encoding="utf-8")
    _write_processor(bundle.path, out, bundle.n_mels, tokenizer_only=True)
