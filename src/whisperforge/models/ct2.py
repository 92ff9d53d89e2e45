"""CTranslate2 Whisper checkpoints: read ``model.bin`` and convert it to a Hugging Face model.

The binary layout (version 6, little-endian) is documented in ``docs/models.md``. Attention
projections are fused in CTranslate2: self-attention ``linear_0`` holds q, k, v stacked by rows
(the k bias is stored as zeros; Whisper has none), cross-attention ``linear_0`` is q and
``linear_1`` holds k, v stacked; the output projection is the last linear of each block.
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
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: np.uint16,  # bfloat16 bits; widened to float32 in `_to_tensor`
}


class CT2FormatError(ValueError):
    """A CTranslate2 file that cannot be read as a Whisper model."""


@dataclass
class CT2Model:
    """Variables of a CTranslate2 model: name -> numpy array (aliases resolved)."""

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]


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
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"{path}: a {spec_name} checkpoint, not a Whisper model")
    return CT2Model(spec_name, revision, variables)


def _to_tensor(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Return variable ``name`` as a float tensor, dequantising int8 rows and bf16 bits."""
    array = variables[name]
    if array.dtype == np.int8:
        scale = variables[f"{name}_scale"].astype(np.float32)
        return torch.from_numpy(array.astype(np.float32) / scale.reshape(-1, 1))
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


def _norm(sd: dict, hf: str, v: dict, ct2: str) -> None:
    sd[f"{hf}.weight"] = _to_tensor(v, f"{ct2}/gamma")
    sd[f"{hf}.bias"] = _to_tensor(v, f"{ct2}/beta")


def _linear(sd: dict, hf: str, w: torch.Tensor, b: torch.Tensor | None) -> None:
    sd[f"{hf}.weight"] = w
    if b is not None:
        sd[f"{hf}.bias"] = b


def _self_attention(sd: dict, hf: str, v: dict, ct2: str) -> None:
    w = _to_tensor(v, f"{ct2}/linear_0/weight")
    b = _to_tensor(v, f"{ct2}/linear_0/bias")
    wq, wk, wv = w.chunk(3, dim=0)
    bq, _, bv = b.chunk(3, dim=0)
    _linear(sd, f"{hf}.q_proj", wq, bq)
    _linear(sd, f"{hf}.k_proj", wk, None)
    _linear(sd, f"{hf}.v_proj", wv, bv)
    out_w, out_b = _to_tensor(v, f"{ct2}/linear_1/weight"), _to_tensor(v, f"{ct2}/linear_1/bias")
    _linear(sd, f"{hf}.out_proj", out_w, out_b)


def _cross_attention(sd: dict, hf: str, v: dict, ct2: str) -> None:
    q_w, q_b = _to_tensor(v, f"{ct2}/linear_0/weight"), _to_tensor(v, f"{ct2}/linear_0/bias")
    kv_w = _to_tensor(v, f"{ct2}/linear_1/weight")
    kv_b = _to_tensor(v, f"{ct2}/linear_1/bias")
    wk, wv = kv_w.chunk(2, dim=0)
    _, bv = kv_b.chunk(2, dim=0)
    _linear(sd, f"{hf}.q_proj", q_w, q_b)
    _linear(sd, f"{hf}.k_proj", wk, None)
    _linear(sd, f"{hf}.v_proj", wv, bv)
    out_w, out_b = _to_tensor(v, f"{ct2}/linear_2/weight"), _to_tensor(v, f"{ct2}/linear_2/bias")
    _linear(sd, f"{hf}.out_proj", out_w, out_b)


def _ffn(sd: dict, hf: str, v: dict, ct2: str) -> None:
    _norm(sd, f"{hf}.final_layer_norm", v, f"{ct2}/layer_norm")
    for i, name in enumerate(("fc1", "fc2")):
        w = _to_tensor(v, f"{ct2}/linear_{i}/weight")
        _linear(sd, f"{hf}.{name}", w, _to_tensor(v, f"{ct2}/linear_{i}/bias"))


def ct2_to_hf_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto ``WhisperForConditionalGeneration`` names."""
    v, sd = ct2.variables, {}
    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        sd[f"{enc}.{conv}.weight"] = _to_tensor(v, f"encoder/{conv}/weight")
        sd[f"{enc}.{conv}.bias"] = _to_tensor(v, f"encoder/{conv}/bias")
    sd[f"{enc}.embed_positions.weight"] = _to_tensor(v, "encoder/position_encodings/encodings")
    for i in range(_layer_count(v, "encoder")):
        hf, c = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        _norm(sd, f"{hf}.self_attn_layer_norm", v, f"{c}/self_attention/layer_norm")
        _self_attention(sd, f"{hf}.self_attn", v, f"{c}/self_attention")
        _ffn(sd, hf, v, f"{c}/ffn")
    _norm(sd, f"{enc}.layer_norm", v, "encoder/layer_norm")
    sd[f"{dec}.embed_tokens.weight"] = _to_tensor(v, "decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = _to_tensor(v, "decoder/position_encodings/encodings")
    for i in range(_layer_count(v, "decoder")):
        hf, c = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        _norm(sd, f"{hf}.self_attn_layer_norm", v, f"{c}/self_attention/layer_norm")
        _self_attention(sd, f"{hf}.self_attn", v, f"{c}/self_attention")
        _norm(sd, f"{hf}.encoder_attn_layer_norm", v, f"{c}/attention/layer_norm")
        _cross_attention(sd, f"{hf}.encoder_attn", v, f"{c}/attention")
        _ffn(sd, hf, v, f"{c}/ffn")
    _norm(sd, f"{dec}.layer_norm", v, "decoder/layer_norm")
    return sd


def hf_config_kwargs(ct2: CT2Model, ct2_config: dict) -> dict:
    """``WhisperConfig`` keyword arguments read off the checkpoint's shapes."""
    v = ct2.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
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
