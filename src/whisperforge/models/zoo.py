"""Models trained by this project that ship inside the package (``whisperforge/zoo/<name>/``).

Each entry is a small folder: a distilled student stored as a delta over its teacher
(``student.json`` + ``delta.safetensors``) or a speech tokenizer (``speech_tokenizer.json`` +
its weights), with a model card ``README.md`` whose figures come from ``whisperforge evaluate``
and ``whisperforge tokenizer evaluate``. Short names resolve here after the weight presets.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
DEFAULT_TOKENIZER = "whisper-vq-base"  # the shipped speech tokenizer for whisper-base


def zoo_models() -> dict[str, Path]:
    """Short name -> folder of every shipped model (folders holding a ``README.md`` card)."""
    if not ZOO_DIR.is_dir():
        return {}
    return {
        p.name: p for p in sorted(ZOO_DIR.iterdir()) if p.is_dir() and (p / "README.md").exists()
    }


def zoo_path(name: str) -> Path | None:
    """The folder of the shipped model ``name``, or None if no such model ships."""
    return zoo_models().get(name)
