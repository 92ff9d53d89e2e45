"""CTranslate2 Whisper checkpoints: read and write ``model.bin``, map it to Hugging Face names.

The binary layout (version 6, little-endian) is documented in ``docs/models.md``. Attention
projections are fused in CTranslate2: self-attention ``linear_0`` holds q, k, v stacked by rows
(the k bias is stored as zeros; Whisper has none), cross-attention ``linear_0`` is q and
``linear_1`` holds k, v stacked; the output projection is the last linear of each block.
``weight_layout`` lists every fusion once; reading splits along it and writing stacks along it.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CT2_BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
WHISPER_SPEC_REVISION = 3  # ctranslate2.specs.WhisperSpec.revision
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: np.uint16,  # bfloat16 bits; widened to float32 in `_to_tensor`
}
_DTYPE_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if k != 5}
QUANTIZATIONS = ("float16", "float32", "int8")
_GELU = 3  # ctranslate2 common_spec.Activation.GELU
EMBEDDINGS, PROJECTION = "decoder/embeddings/weight", "decoder/projection/weight"
_TOKEN_EMBEDDING = "model.decoder.embed_tokens.weight"


class CT2FormatError(ValueError):
    """A CTranslate2 file that cannot be read as a Whisper model."""


@dataclass
class CT2Model:
    """Variables of a CTranslate2 model: name -> numpy array (aliases resolved)."""

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]


# -- the layout: which Hugging Face tensors each CTranslate2 variable holds ----------------

Layout = list[tuple[str, tuple[str | None, ...]]]


def _norm(ct2: str, hf: str) -> Layout:
    return [(f"{ct2}/gamma", (f"{hf}.weight",)), (f"{ct2}/beta", (f"{hf}.bias",))]


def _linear(ct2: str, *hf: str) -> Layout:
    """``hf`` modules stacked by rows into one; ``k_proj`` has no bias (stored as zeros)."""
    biases = tuple(None if m.endswith("k_proj") else f"{m}.bias" for m in hf)
    return [(f"{ct2}/weight", tuple(f"{m}.weight" for m in hf)), (f"{ct2}/bias", biases)]


def _layer(ct2: str, hf: str, cross_attention: bool) -> Layout:
    a, c = f"{hf}.self_attn", f"{hf}.encoder_attn"
    out = _norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
    out += _linear(f"{ct2}/self_attention/linear_0", f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj")
    out += _linear(f"{ct2}/self_attention/linear_1", f"{a}.out_proj")
    if cross_attention:
        out += _norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        out += _linear(f"{ct2}/attention/linear_0", f"{c}.q_proj")
        out += _linear(f"{ct2}/attention/linear_1", f"{c}.k_proj", f"{c}.v_proj")
        out += _linear(f"{ct2}/attention/linear_2", f"{c}.out_proj")
    out += _norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    return (
        out
        + _linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        + _linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    )


def weight_layout(encoder_layers: int, decoder_layers: int) -> Layout:
    """Every CTranslate2 weight with the ``WhisperForConditionalGeneration`` tensors stacked
    (by rows, in order) into it; ``None`` marks rows stored as zeros (the k bias)."""
    enc, dec = "model.encoder", "model.decoder"
    out = _linear("encoder/conv1", f"{enc}.conv1") + _linear("encoder/conv2", f"{enc}.conv2")
    out.append(("encoder/position_encodings/encodings", (f"{enc}.embed_positions.weight",)))
    for i in range(encoder_layers):
        out += _layer(f"encoder/layer_{i}", f"{enc}.layers.{i}", cross_attention=False)
    out += _norm("encoder/layer_norm", f"{enc}.layer_norm")
    out.append((EMBEDDINGS, (_TOKEN_EMBEDDING,)))
    out.append(("decoder/position_encodings/encodings", (f"{dec}.embed_positions.weight",)))
    for i in range(decoder_layers):
        out += _layer(f"decoder/layer_{i}", f"{dec}.layers.{i}", cross_attention=True)
    return out + _norm("decoder/layer_norm", f"{dec}.layer_norm")


# -- reading ------------------------------------------------------------------------------


def _read(f: io.BufferedIOBase, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise CT2FormatError("unexpected end of file (truncated model.bin?)")
    return struct.unpack("<" + fmt, data)


def _read_str(f: io.BufferedIOBase) -> str:
    (length,) = _read(f, "H")
    raw = f.read(length)
    if len(raw) != length:
        raise CT2FormatError("unexpected end of file (truncated model.bin?)")
    return raw[:-1].decode("utf-8")


def _iter_variables(f: io.BufferedIOBase, n_vars: int) -> Iterator[tuple[str, np.ndarray]]:
    for _ in range(n_vars):
        name = _read_str(f)
        (rank,) = _read(f, "B")
        dims = _read(f, "I" * rank) if rank else ()
        (dtype_code,) = _read(f, "B")
        (n_bytes,) = _read(f, "I")
        if dtype_code not in _DTYPES:
            raise CT2FormatError(f"variable {name!r} has unknown dtype code {dtype_code}")
        raw = f.read(n_bytes)
        if len(raw) != n_bytes:
            raise CT2FormatError(f"variable {name!r} is truncated")
        yield name, np.frombuffer(raw, dtype=_DTYPES[dtype_code]).reshape(dims)


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read every variable of a CTranslate2 ``model.bin`` (binary version 6)."""
    path = Path(path)
    with open(path, "rb") as f:
        (version,) = _read(f, "I")
        if version != CT2_BINARY_VERSION:
            raise CT2FormatError(
                f"{path}: CTranslate2 binary version {version} is not supported "
                f"(expected {CT2_BINARY_VERSION})"
            )
        spec_name = _read_str(f)
        (revision,) = _read(f, "I")
        (n_vars,) = _read(f, "I")
        variables = dict(_iter_variables(f, n_vars))
        (n_aliases,) = _read(f, "I")
        for _ in range(n_aliases):
            alias, target = _read_str(f), _read_str(f)
            variables[alias] = variables[target]
            if f"{target}_scale" in variables:  # ctranslate2 aliases the int8 scale along
                variables[f"{alias}_scale"] = variables[f"{target}_scale"]
    if spec_name != WHISPER_SPEC:
        raise CT2FormatError(f"{path}: a {spec_name} checkpoint, not a Whisper model")
    return CT2Model(spec_name, revision, variables)


def _to_tensor(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Return variable ``name`` as a float tensor, dequantising int8 rows and bf16 bits."""
    array = variables[name]
    if array.dtype == np.int8:
        scale = variables[f"{name}_scale"].astype(np.float32)
        shape = (-1,) + (1,) * (array.ndim - 1)  # one scale per output row (conv: per channel)
        return torch.from_numpy(array.astype(np.float32) / scale.reshape(shape))
    if array.dtype == np.uint16:  # bfloat16 stored as raw bits
        return torch.from_numpy((array.astype(np.uint32) << 16).view(np.float32).copy())
    return torch.from_numpy(array.copy())


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _scalar(variables: dict[str, np.ndarray], name: str, default: int) -> int:
    return int(variables[name].reshape(-1)[0]) if name in variables else default


def ct2_to_hf_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto ``WhisperForConditionalGeneration`` names."""
    v = ct2.variables
    layout = weight_layout(_layer_count(v, "encoder"), _layer_count(v, "decoder"))
    state = {}
    for name, parts in layout:
        for key, rows in zip(parts, _to_tensor(v, name).chunk(len(parts), dim=0)):
            if key is not None:
                state[key] = rows
    return state


def hf_config_kwargs(ct2: CT2Model, ct2_config: dict) -> dict:
    """``WhisperConfig`` keyword arguments read off the checkpoint's shapes."""
    v = ct2.variables
    vocab_size, d_model = v[EMBEDDINGS].shape
    eot = 50257 if vocab_size >= 51865 else 50256  # multilingual vocabularies add one token
    return dict(
        vocab_size=int(vocab_size),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=_layer_count(v, "encoder"),
        decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=_scalar(v, "encoder/num_heads", d_model // 64),
        decoder_attention_heads=_scalar(v, "decoder/num_heads", d_model // 64),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        tie_word_embeddings=True,
    )


def load_ct2_config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


# -- writing ------------------------------------------------------------------------------


def _quantize(name: str, weight: torch.Tensor, quantization: str) -> dict[str, np.ndarray]:
    """``{name: array}`` in ``quantization``; int8 weights get ``name_scale`` (per row,
    float = int8 / scale), as ctranslate2's own converter computes them."""
    array = weight.detach().to(torch.float32).cpu().numpy()
    if quantization == "int8" and name.endswith("/weight"):
        rows = array.reshape(array.shape[0], -1)
        amax = np.abs(rows).max(axis=1)
        amax[amax == 0] = 127.0
        scale = (127.0 / amax).astype(np.float32)
        quantized = np.rint(rows * scale[:, None]).astype(np.int8).reshape(array.shape)
        return {name: quantized, f"{name}_scale": scale}
    return {name: array.astype(np.float16 if quantization == "float16" else np.float32)}


def hf_to_ct2_variables(
    state: dict[str, torch.Tensor], config, quantization: str = "float16"
) -> dict[str, np.ndarray]:
    """CTranslate2 variables for a ``WhisperForConditionalGeneration`` state dict (the
    inverse of ``ct2_to_hf_state_dict``), with the scalars ``WhisperSpec`` expects."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS}")
    variables: dict[str, np.ndarray] = {}
    for name, parts in weight_layout(config.encoder_layers, config.decoder_layers):
        known = [state[k] for k in parts if k is not None]
        rows = [state[k] if k is not None else torch.zeros_like(known[0]) for k in parts]
        variables.update(_quantize(name, torch.cat(rows, dim=0), quantization))
    projection = state.get("proj_out.weight")
    if projection is not None and not torch.equal(projection, state[_TOKEN_EMBEDDING]):
        variables.update(_quantize(PROJECTION, projection, quantization))  # untied: its own
    scalars = {
        "encoder/num_heads": np.int16(config.encoder_attention_heads),
        "decoder/num_heads": np.int16(config.decoder_attention_heads),
        "decoder/activation": np.int8(_GELU),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alibi": np.int8(0),
        "decoder/alignment_layer": np.int16(-1),  # heads come from config.json
        "decoder/alignment_heads": np.int16(1),
    }
    variables.update({k: np.asarray(v) for k, v in scalars.items()})
    return variables


def _put_str(f: io.BufferedIOBase, s: str) -> None:
    raw = s.encode("utf-8") + b"\0"
    f.write(struct.pack("<H", len(raw)) + raw)


def write_ct2_model(
    path: str | Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
) -> None:
    """Write ``variables`` (sorted by name) as a ``WhisperSpec`` ``model.bin`` (version 6).

    ``aliases`` maps a name to the variable it shares storage with; by default the output
    projection is the token embedding (tied, as in Whisper) unless ``variables`` has its own.
    """
    if aliases is None:
        aliases = {} if PROJECTION in variables else {PROJECTION: EMBEDDINGS}
    with open(path, "wb") as f:
        f.write(struct.pack("<I", CT2_BINARY_VERSION))
        _put_str(f, WHISPER_SPEC)
        f.write(struct.pack("<II", WHISPER_SPEC_REVISION, len(variables)))
        for name in sorted(variables):
            array = np.asarray(variables[name], order="C")  # keeps rank 0, unlike ascontiguousarray
            if array.dtype not in _DTYPE_CODES:
                raise ValueError(f"variable {name!r}: dtype {array.dtype} has no CTranslate2 code")
            _put_str(f, name)
            f.write(struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape))
            f.write(struct.pack("<BI", _DTYPE_CODES[array.dtype], array.nbytes))
            f.write(array.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            _put_str(f, alias)
            _put_str(f, target)
