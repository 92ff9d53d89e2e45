"""Students: a teacher's encoder and a few of its decoder layers (Distil-Whisper, section 3).

A student is initialised by copying the teacher's embeddings, norms, encoder and the decoder
layers "spread from first to last": for 2 of 32 layers, 0 and 31; evenly spaced in between, the
last always the teacher's last (Gandhi et al., 2023, Distil-Whisper, 3.2).

On disk a student is stored as a *delta*: ``student.json`` (the teacher reference, the layers
kept) and ``delta.safetensors`` holding only the tensors that differ from the teacher's, so a
shipped student stays small. ``materialize_student`` rebuilds a full Hugging Face folder (in the
cache, atomically) that loads anywhere a model folder does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from whisperforge.fileio import atomic_folder
from whisperforge.models.convert import cache_entry_ready, file_lock, save_model_files

STUDENT_FILE = "student.json"
DELTA_FILE = "delta.safetensors"


def select_layers(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer indices a student of ``n_student`` layers keeps (first..last, spread)."""
    if not 1 <= n_student <= n_teacher:
        raise ValueError(f"a student needs between 1 and {n_teacher} layers, not {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return [int(i) for i in np.linspace(0, n_teacher - 1, n_student).round()]


def create_student(
    teacher: torch.nn.Module, decoder_layers: int, encoder_layers: int | None = None
) -> tuple[torch.nn.Module, dict]:
    """A new ``WhisperForConditionalGeneration`` initialised from ``teacher``.

    Returns the student and its layer map ``{"decoder": [...], "encoder": [...]}`` (teacher
    indices). ``encoder_layers=None`` keeps the whole encoder.
    """
    from transformers import WhisperForConditionalGeneration

    tcfg = teacher.config
    layer_map = {
        "decoder": select_layers(tcfg.decoder_layers, decoder_layers),
        "encoder": select_layers(tcfg.encoder_layers, encoder_layers or tcfg.encoder_layers),
    }
    config = tcfg.__class__.from_dict(tcfg.to_dict())
    config.decoder_layers = len(layer_map["decoder"])
    config.encoder_layers = len(layer_map["encoder"])
    student = WhisperForConditionalGeneration(config).to(teacher.dtype)
    state = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k}
    for part in ("encoder", "decoder"):
        for new, old in enumerate(layer_map[part]):
            prefix = f"model.{part}.layers.{old}."
            for key, value in teacher.state_dict().items():
                if key.startswith(prefix):
                    state[f"model.{part}.layers.{new}.{key[len(prefix) :]}"] = value
    student.load_state_dict(state, strict=False)
    student.tie_weights()
    return student, layer_map


def _teacher_key(key: str, layer_map: dict) -> str | None:
    """The teacher tensor a student tensor started from (None if it has none)."""
    for part in ("encoder", "decoder"):
        prefix = f"model.{part}.layers."
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            return f"{prefix}{layer_map[part][int(index)]}.{rest}"
    return key


def save_student(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    teacher_ref: str,
    layer_map: dict,
    out: str | Path,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``student`` as a delta over ``teacher`` into ``out`` (atomically).

    Only tensors that differ from the teacher tensor they started from are stored, in
    ``dtype`` (float16 by default: the precision the built-in teachers ship in).
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    teacher_state = teacher.state_dict()
    delta = {}
    for key, value in student.state_dict().items():
        if key == "proj_out.weight":  # tied to the token embedding
            continue
        source = _teacher_key(key, layer_map)
        if source not in teacher_state or not torch.equal(teacher_state[source], value):
            target = dtype if value.is_floating_point() else value.dtype
            delta[key] = value.detach().to(target).contiguous()
    meta = {
        "teacher": teacher_ref,
        "layers": layer_map,
        "config": student.config.to_diff_dict(),
        "format": 1,
    }
    with atomic_folder(out) as tmp:
        save_file(delta, str(tmp / DELTA_FILE))
        (tmp / STUDENT_FILE).write_text(json.dumps(meta, indent=2))
    return out


def is_student_folder(path: Path) -> bool:
    return (path / STUDENT_FILE).exists() and (path / DELTA_FILE).exists()


def read_student_meta(folder: Path) -> dict:
    """``student.json`` of a student folder: ``teacher`` reference, ``layers`` map, config."""
    if not is_student_folder(folder):
        raise FileNotFoundError(
            f"{folder} is not a student folder ({STUDENT_FILE} + {DELTA_FILE}); "
            "create one with `whisperforge distill init`"
        )
    return json.loads((folder / STUDENT_FILE).read_text())


# config keys a student's ``student.json`` may carry beside its architecture: its
# transcription defaults (``ModelBundle.audio_context``, ``vad``, ``chunk_length``,
# ``stride_length``, ``condition_on_previous_text``), set on students distilled for them,
# and the languages it was trained on (``ModelBundle.languages``)
TRANSCRIBE_DEFAULTS = ("audio_context", "vad", "chunk_length", "stride_length",
                       "condition_on_previous_text", "languages")  # fmt: skip


def student_from_delta(folder: Path, teacher: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """The student stored in ``folder`` rebuilt over its already loaded ``teacher`` model;
    returns it and its layer map."""
    from safetensors.torch import load_file

    meta = read_student_meta(folder)
    layers = meta["layers"]
    student, layer_map = create_student(teacher, len(layers["decoder"]), len(layers["encoder"]))
    if layer_map != layers:
        raise ValueError(f"{folder}: layer map does not match the teacher {meta['teacher']}")
    delta = load_file(str(folder / DELTA_FILE))
    student.load_state_dict({k: v.to(teacher.dtype) for k, v in delta.items()}, strict=False)
    student.tie_weights()
    config = meta.get("config", {})
    for key in TRANSCRIBE_DEFAULTS:  # how the student transcribes unless told otherwise
        if config.get(key) is not None:
            setattr(student.config, key, config[key])
    return student, layer_map


# what a rebuilt folder holds beside the weights; a change rebuilds cached students
_LAYOUT = b"generation_config with the student's alignment heads"


def _write_generation_config(teacher: Path, decoder_layers: list[int], config, out: Path) -> None:
    """The teacher's ``generation_config.json`` with its alignment heads renumbered to the
    decoder layers the student kept (word timestamps read them)."""
    from whisperforge.models.loading import remap_alignment_heads

    path = teacher / "generation_config.json"
    if not path.exists():
        return
    generation = json.loads(path.read_text())
    generation["alignment_heads"] = remap_alignment_heads(
        generation.get("alignment_heads") or [],
        config.decoder_layers,
        config.decoder_attention_heads,
        decoder_layers,
    )
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def materialize_student(folder: Path, cache_root: Path) -> Path:
    """A full Hugging Face folder for the student delta in ``folder`` (built once, cached)."""
    from whisperforge.models.loading import load_model

    digest = hashlib.sha256((folder / DELTA_FILE).read_bytes())
    digest.update((folder / STUDENT_FILE).read_bytes())
    digest.update(_LAYOUT)
    dest = cache_root / f"student-{folder.name}-{digest.hexdigest()[:12]}"
    if cache_entry_ready(dest):
        return dest
    with file_lock(cache_root / f".{dest.name}.lock"):  # one process builds, the rest wait
        if cache_entry_ready(dest):
            return dest
        meta = read_student_meta(folder)
        teacher = load_model(meta["teacher"])
        student, layer_map = student_from_delta(folder, teacher.model)
        with atomic_folder(dest) as tmp:
            save_model_files(student, tmp)
            for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
                if (teacher.path / name).exists():
                    shutil.copy(teacher.path / name, tmp / name)
            _write_generation_config(teacher.path, layer_map["decoder"], student.config, tmp)
            stamp = {"student_of": meta["teacher"], "decoder_layers": layer_map["decoder"]}
            (tmp / "whisperforge.json").write_text(json.dumps(stamp))
    return dest
