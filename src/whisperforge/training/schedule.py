"""Learning-rate schedule: linear warm-up, then linear, cosine or no decay to a final fraction."""

from __future__ import annotations

import math

import torch


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, decay: str = "linear", final: float = 0.0
) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Rises linearly from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` steps, then
    falls (``linear`` or ``cosine``) to ``final`` at ``total_steps``, or stays at 1
    (``constant``). Steps past ``total_steps`` keep ``final``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if decay == "linear":
        return final + (1.0 - final) * (1.0 - progress)
    if decay == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay must be 'linear', 'cosine' or 'constant', not {decay!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    decay: str = "linear",
    final: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``lr_factor``; call ``step()`` once per optimizer step."""
    lr_factor(0, total_steps, warmup_steps, decay, final)  # reject an unknown decay now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, decay, final)
    )
