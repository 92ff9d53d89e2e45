"""Resolve a model reference to a Hugging Face folder and load it.

A reference is one of: a short name (``whisperforge models`` lists them), a local Hugging
Face folder, a local CTranslate2 folder (converted once into the cache), or a hub id such as
``openai/whisper-small`` (used when the hub is reachable or the model is already cached).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from whisperforge.models.convert import cache_dir, cache_entry_ready, convert_ct2_to_hf
from whisperforge.models.presets import PRESETS, preset_files
from whisperforge.models.zoo import zoo_models, zoo_path
from whisperforge.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    """A model reference that names no known model, folder or reachable hub repository."""


def available_models() -> list[str]:
    return sorted(PRESETS) + sorted(zoo_models())


def _is_hf_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.exists() or not any(path.glob("*.safetensors")):
        return False
    return json.loads(config.read_text()).get("model_type") == "whisper"


def _is_ct2_folder(path: Path) -> bool:
    return (path / "model.bin").exists() and (path / "tokenizer.json").exists()


def _convert_preset(name: str) -> Path:
    preset = PRESETS[name]
    dest = cache_dir() / "models" / f"{name}-{preset.sha256[:12]}"
    if cache_entry_ready(dest):
        return dest
    parts, meta = preset_files(preset)
    return convert_ct2_to_hf(
        parts, meta, dest, multilingual=preset.multilingual, expected_sha256=preset.sha256
    )


def _convert_local_ct2(folder: Path) -> Path:
    stat = (folder / "model.bin").stat()
    key = f"{folder.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    dest = cache_dir() / "models" / f"ct2-{folder.name}-{hashlib.sha256(key).hexdigest()[:12]}"
    if cache_entry_ready(dest):
        return dest
    vocab = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").exists()
        else {}
    )
    multilingual = len(vocab.get("lang_ids", [])) > 0 and _vocab_size(folder) >= 51865
    return convert_ct2_to_hf([folder / "model.bin"], folder, dest, multilingual=multilingual)


def _vocab_size(folder: Path) -> int:
    vocabulary = folder / "vocabulary.txt"
    if vocabulary.exists():
        return sum(1 for _ in vocabulary.open(encoding="utf-8"))
    return len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])


def _from_hub(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns, local_files_only=True))
    except Exception as cached_error:  # noqa: BLE001 - any miss means "not cached"
        logger.debug("%s not in the hub cache: %s", ref, cached_error)
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types for "offline"/"not found"
        raise ModelNotFoundError(
            f"model '{ref}' is not a local folder and could not be fetched from the Hugging "
            f"Face Hub ({type(error).__name__}); the hub may be unreachable from here. "
            f"Use a short name ({', '.join(available_models())}) or a local folder."
        ) from error


def resolve_model(ref: str | Path) -> Path:
    """Return a local Hugging Face folder for ``ref``, converting or fetching once if needed."""
    ref_str = str(ref)
    if ref_str in PRESETS:
        return _convert_preset(ref_str)
    path = zoo_path(ref_str) or Path(ref_str).expanduser()
    if path.is_dir():
        from whisperforge.models.student import is_student_folder, materialize_student

        if is_student_folder(path):
            return materialize_student(path, cache_dir() / "models")
        if _is_hf_folder(path):
            return path
        if _is_ct2_folder(path):
            return _convert_local_ct2(path)
        raise ModelNotFoundError(
            f"'{ref_str}' is a folder but holds neither a Hugging Face Whisper model "
            "(config.json + *.safetensors) nor a CTranslate2 one (model.bin + tokenizer.json)"
        )
    if "/" in ref_str and not path.exists() and not ref_str.startswith((".", "/", "~")):
        return _from_hub(ref_str)
    raise ModelNotFoundError(
        f"unknown model '{ref_str}'; available: {', '.join(available_models())} "
        "(or a local model folder, or a Hugging Face hub id like openai/whisper-small)"
    )


@dataclass
class ModelBundle:
    """A loaded Whisper model with what decoding needs beside the network."""

    name: str
    path: Path
    model: torch.nn.Module  # transformers WhisperForConditionalGeneration, in eval mode
    tokenizer: Tokenizer
    suppress_tokens: list[int] = field(default_factory=list)

    @property
    def multilingual(self) -> bool:
        return self.tokenizer.multilingual

    @property
    def languages(self) -> tuple[str, ...] | None:
        """The languages the model was trained to transcribe where its config names them
        (``config.languages``, which ``distill train`` sets from its training rows: a student
        distilled on English speech transcribes English only, whatever its tokenizer holds);
        None: every language of its tokenizer."""
        languages = getattr(self.model.config, "languages", None)
        return tuple(languages) if languages else None

    @property
    def audio_context(self) -> str:
        """``full`` (every window padded to 30 s, as Whisper) or ``dynamic`` (a batch's
        windows padded to the longest + 1 s): the model's ``config.audio_context``, set on
        students distilled for the shorter context."""
        return getattr(self.model.config, "audio_context", None) or "full"

    @property
    def chunk_length(self) -> float:
        """Chunked long-form's window length (s) unless told otherwise: the model's
        ``config.chunk_length``, else Whisper's 30 s."""
        return float(getattr(self.model.config, "chunk_length", None) or 30.0)

    @property
    def stride_length(self) -> float | None:
        """Context each chunked window shares with each neighbour (s): the model's
        ``config.stride_length``, else None (a sixth of the chunk length)."""
        stride = getattr(self.model.config, "stride_length", None)
        return None if stride is None else float(stride)

    @property
    def vad(self) -> bool:
        """Whether the model transcribes with voice activity detection unless told otherwise
        (``TranscribeOptions.vad=None``): the model's ``config.vad``, set on students trained
        on clips that start on their first word (docs/distill.md, *Speech after silence*)."""
        return bool(getattr(self.model.config, "vad", False))

    @property
    def condition_on_previous_text(self) -> bool:
        """Whether sequential long-form prompts each window with the text before it unless
        told otherwise (``TranscribeOptions.condition_on_previous_text=None``): the model's
        ``config.condition_on_previous_text``, else on, as Whisper. Distilled students turn
        it off: a 2-layer decoder prompted with its own text skips speech (docs/distill.md)."""
        condition = getattr(self.model.config, "condition_on_previous_text", None)
        return True if condition is None else bool(condition)

    @cached_property
    def alignment_heads(self) -> list[tuple[int, int]]:
        """``(layer, head)`` cross-attention heads that follow the audio's timing (word
        timestamps; exports write them for faster-whisper): ``alignment_heads`` of the
        folder's ``generation_config.json`` fitted to this decoder. A student rebuilt from a
        delta carries its teacher's, renumbered to the layers it kept
        (``materialize_student``); where none fit, every head of the upper half of the
        decoder layers (openai-whisper's default). Read from the folder once."""
        config = self.model.config
        generation = self.path / "generation_config.json"
        heads = None
        if generation.exists():
            heads = json.loads(generation.read_text()).get("alignment_heads")
        stamp = self.path / "whisperforge.json"
        if stamp.exists():
            meta = json.loads(stamp.read_text())
            if meta.get("student_of") and "decoder_layers" not in meta:
                heads = None  # the teacher's heads, not fitted to the student's layers
        pairs = remap_alignment_heads(
            heads or [], config.decoder_layers, config.decoder_attention_heads
        )
        return [(layer, head) for layer, head in pairs]

    @property
    def n_mels(self) -> int:
        return self.model.config.num_mel_bins

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def wrap(cls, name: str, path: Path, model: torch.nn.Module, tokenizer: Tokenizer):
        """A bundle around an in-memory model (a student being trained, say) that reads
        ``tokenizer``'s vocabulary; ``path`` is where its tokenizer files live."""
        suppress = list(model.config.suppress_tokens or []) + tokenizer.non_speech_suppression()
        return cls(name, Path(path), model, tokenizer, sorted(set(suppress)))


def remap_alignment_heads(
    heads: list[list[int]], n_layers: int, n_heads: int, layer_map: list[int] | None = None
) -> list[list[int]]:
    """``[layer, head]`` pairs of cross-attention heads that follow the audio timing (word
    timestamps), valid for a decoder of ``n_layers`` x ``n_heads``.

    With ``layer_map`` (student layer -> teacher layer) teacher heads in kept layers are
    renumbered and the others dropped; without it heads outside the decoder are dropped. When
    none is left: every head of the upper half of the layers (openai-whisper's default).
    """
    if layer_map is not None:
        student_of = {teacher: student for student, teacher in enumerate(layer_map)}
        kept = [[student_of[layer], head] for layer, head in heads if layer in student_of]
    else:
        kept = [[layer, head] for layer, head in heads if layer < n_layers]
    kept = [[layer, head] for layer, head in kept if head < n_heads]
    return kept or [[layer, h] for layer in range(n_layers // 2, n_layers) for h in range(n_heads)]


def _is_multilingual(folder: Path, config) -> bool:
    gen = folder / "generation_config.json"
    if gen.exists():
        flag = json.loads(gen.read_text()).get("is_multilingual")
        if flag is not None:
            return bool(flag)
    return config.vocab_size >= 51865


def load_model(
    ref: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """Load a Whisper model for inference (eval mode, no gradients needed)."""
    from transformers import WhisperForConditionalGeneration

    folder = resolve_model(ref)
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    model.to(device).eval()
    tokenizer = Tokenizer.from_file(
        folder / "tokenizer.json", _is_multilingual(folder, model.config)
    )
    return ModelBundle.wrap(str(ref), folder, model, tokenizer)
