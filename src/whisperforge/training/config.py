"""Recipe configs: a YAML file -> a frozen dataclass, with ``key=value`` dotted overrides.

A recipe declares its options as a frozen dataclass (nested dataclasses for groups such as
``training``); ``load_config(Cls, "run.yaml", ["training.lr=3e-4", "max_wer=5"])`` reads the
file, applies the overrides (values parsed as YAML, so ``[0.9, 0.98]``, ``null``, ``true``
work), checks every key against the dataclass and every value against its type, and builds
the object, whose ``__post_init__`` checks ranges. Any mistake is a ``ConfigError`` naming the
key, what was wrong and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe's options."""


def parse_overrides(items: Sequence[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. lr=1e-4)")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' was already given a value")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return tree


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` laid over it; nested mappings are merged, not replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (bool, int, float, str, Literal, tuple, X | None,
    nested dataclass); a ``ConfigError`` when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare `no` as false
            return "no"
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, not {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, not {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of options, not {value!r}")
        return build(hint, value, prefix=f"{key}.")
    return _coerce_scalar(value, hint, key)


def _coerce_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str and isinstance(value, str):
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{key} must be {_type_name(hint)}, not {value!r}")


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """Construct dataclass ``cls`` from a mapping; unknown keys and ill-typed values raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown option '{prefix}{key}'{hint} (known: {', '.join(prefix + n for n in names)})"
        )
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {error}") from error


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read YAML ``path`` (None: defaults only), lay ``overrides`` over it, build ``cls``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of options, not {type(data).__name__}")
    return build(cls, merge(data, parse_overrides(overrides)))


def to_dict(config: Any) -> dict:
    """A plain (YAML/JSON-ready) dict of a config dataclass; tuples become lists."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


@dataclass(frozen=True)
class TrainingConfig:
    """Options every training recipe shares: optimisation, schedule, loop, outputs.

    Steps are optimizer steps; ``batch_size`` is per process, so one step sees
    ``batch_size * processes * gradient_accumulation_steps`` examples.
    """

    output_dir: str = "runs/train"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    lr_decay: Literal["linear", "cosine", "constant"] = "linear"
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of ``lr``
    max_grad_norm: float | None = 1.0  # None: no clipping
    gradient_accumulation_steps: int = 1
    batch_size: int = 8
    max_steps: int | None = None  # None: ``epochs`` passes over the training data
    epochs: int = 1
    eval_every: int = 500  # steps; 0: only at the end
    save_every: int = 500  # steps; a checkpoint is also written at the end
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: resolve_precision
    resume: bool = True  # continue from the newest checkpoint; false: delete them, start afresh

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), not {list(self.betas)}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], not {self.final_lr_fraction}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0 (or null for no clipping)")
        for name in ("gradient_accumulation_steps", "batch_size", "epochs", "log_every",
                     "save_every", "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null), not {self.max_steps}")
        if self.eval_every < 0:
            raise ValueError("eval_every must be >= 0 (0: evaluate only at the end)")
