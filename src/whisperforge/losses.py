"""Training losses as small functions; every weight is an argument.

Knowledge distillation (Distil-Whisper, Gandhi et al. 2023, section 3.3; Hinton et al. 2015):
the student is trained on ``ce_weight * CE(pseudo-labels) + kl_weight * T^2 * KL(teacher ||
student)``, both averaged over real label positions. Distil-Whisper uses ``ce_weight 0.8,
kl_weight 1.0, T 2.0``. Shapes: logits ``(batch, seq, vocab)``; ``labels`` ``(batch, seq)``
token ids; ``labels_mask`` ``(batch, seq)`` true where a position is a real target (not
padding, not a prompt). Positions outside the mask are selected away, never zeroed: their
logits take no part in any softmax.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _select(logits: Tensor, labels_mask: Tensor) -> Tensor:
    """``(n_real, vocab)`` float32 rows of ``logits`` at the real label positions."""
    if labels_mask.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels_mask {tuple(labels_mask.shape)} must match logits {tuple(logits.shape)}[:-1]"
        )
    return logits[labels_mask.bool()].float()


def ce_loss(student_logits: Tensor, labels: Tensor, labels_mask: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of ``labels`` under the student, over real positions."""
    rows = _select(student_logits, labels_mask)
    if rows.shape[0] == 0:
        return student_logits.sum() * 0.0
    return F.cross_entropy(rows, labels[labels_mask.bool()])


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels_mask: Tensor, temperature: float = 2.0
) -> Tensor:
    """``T^2 * KL(teacher || student)`` of the softened distributions, summed over the
    vocabulary and averaged over real label positions. The ``T^2`` keeps gradient sizes
    comparable across temperatures (Hinton et al., 2015). ``teacher_logits`` get no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    student = _select(student_logits, labels_mask)
    if student.shape[0] == 0:
        return student_logits.sum() * 0.0
    teacher = _select(teacher_logits.detach(), labels_mask)
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / student.shape[0]
    return temperature**2 * kl


class DistillationLoss(NamedTuple):
    """The combined loss (to back-propagate) and its two terms (for logging)."""

    loss: Tensor
    ce: Tensor
    kl: Tensor


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    labels_mask: Tensor,
    ce_weight: float = 0.8,
    kl_weight: float = 1.0,
    temperature: float = 2.0,
) -> DistillationLoss:
    """``ce_weight * CE + kl_weight * kd_loss``; ``teacher_logits`` may be None when
    ``kl_weight`` is 0 (no teacher pass needed)."""
    ce = ce_loss(student_logits, labels, labels_mask)
    if kl_weight == 0:
        kl = torch.zeros((), device=ce.device)
    elif teacher_logits is None:
        raise ValueError("teacher_logits are needed when kl_weight is not 0")
    else:
        kl = kd_loss(student_logits, teacher_logits, labels_mask, temperature)
    return DistillationLoss(ce_weight * ce + kl_weight * kl, ce, kl)


class TokenizerLoss(NamedTuple):
    """A speech-tokenizer step's loss (to back-propagate) and its terms (for logging);
    ``kl`` is None when the step has no KL term (phase 2)."""

    loss: Tensor
    ce: Tensor
    kl: Tensor | None
    commitment: Tensor


def tokenizer_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    labels_mask: Tensor,
    commitment: Tensor,
    kl_weight: float = 1.0,
    temperature: float = 1.0,
) -> TokenizerLoss:
    """Ichigo Whisper's VQ loss: ``CE + kl_weight * kd_loss + commitment``.

    The student is the frozen Whisper decoder fed the bottleneck's features, the teacher the
    same decoder fed the real encoder states (phase 1); ``teacher_logits`` None drops the KL
    term (phase 2). ``commitment`` is the quantizer's loss, already weighted. Ichigo uses
    ``KLDivLoss(reduction="batchmean")`` at temperature 1, which sums over positions; here the
    KL is averaged over real label positions like the CE, so ``kl_weight`` weighs the two
    per token.
    """
    ce = ce_loss(student_logits, labels, labels_mask)
    kl = None
    loss = ce + commitment
    if teacher_logits is not None:
        kl = kd_loss(student_logits, teacher_logits, labels_mask, temperature)
        loss = loss + kl_weight * kl
    return TokenizerLoss(loss, ce, kl, commitment)
