"""Speech corpora: manifests and HF datasets, text pools, synthetic speech, packing to 30 s.

Pipeline (one module per stage):
``sources -> text -> pool`` (sentences), ``tts -> augment -> synth -> card`` (audio corpus),
``manifest / hf`` (read and validate any corpus), ``stats``, ``packing`` (30 s windows).
Heavy modules are imported lazily by the names below.
"""

from whisperforge.data.manifest import (
    ManifestError,
    Skipped,
    Utterance,
    ValidationReport,
    load_manifest,
    read_manifest,
    write_manifest,
)
from whisperforge.data.packing import Pack, PackResult, pack_utterances

__all__ = [
    "ManifestError",
    "Pack",
    "PackResult",
    "Skipped",
    "Utterance",
    "ValidationReport",
    "load_manifest",
    "pack_utterances",
    "read_manifest",
    "write_manifest",
]
