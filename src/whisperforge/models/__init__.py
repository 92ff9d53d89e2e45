"""Model loading, conversion and presets."""

from whisperforge.models.loading import ModelBundle, ModelNotFoundError, load_model, resolve_model
from whisperforge.models.presets import DEFAULT_MODEL, PRESETS

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "ModelBundle",
    "ModelNotFoundError",
    "load_model",
    "resolve_model",
]
