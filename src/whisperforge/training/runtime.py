"""What every training loop needs around Accelerate: the accelerator, step counts, the
trainable state that a checkpoint holds."""

from __future__ import annotations

import math

import torch

from whisperforge.models.inference import cpu_has_bf16_matmul
from whisperforge.training.config import TrainingConfig


def resolve_precision(mixed_precision: str) -> str:
    """``auto`` -> ``bf16`` on a CUDA device that supports it or on a CPU with bf16 matrix
    instructions (``cpu_has_bf16_matmul``), else ``no`` (float32)."""
    if mixed_precision != "auto":
        return mixed_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16_matmul() else "no"


def make_accelerator(config: TrainingConfig):
    """An ``accelerate.Accelerator`` for ``config``: CPU processes when there is no CUDA
    device (one, or as many as ``torchrun`` started), else the GPUs it was launched on."""
    from accelerate import Accelerator

    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def make_optimizer(params: list[torch.nn.Parameter], config: TrainingConfig):
    """AdamW over ``params``; the fused kernel where this torch has one for their device
    (CPU since torch 2.4: several times faster than the per-tensor loop on large embeddings)."""
    kwargs = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # no fused kernel for this device in this torch
        return torch.optim.AdamW(params, **kwargs)


def total_steps(config: TrainingConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` passes over the data."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * batches_per_epoch / config.gradient_accumulation_steps))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (tied ones once), by name: what a checkpoint must hold."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``trainable_state`` back into ``model``; the names must match exactly."""
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    unknown = sorted(n for n in state if n not in params)
    if missing or unknown:
        raise ValueError(
            f"checkpoint does not fit the model (missing {missing[:3]}, unknown {unknown[:3]}); "
            "was it written with other freeze options or another student?"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
