"""Distillation losses on random tensors: masking, temperature scaling, direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from whisperforge.losses import ce_loss, distillation_loss, kd_loss


def _logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def _direct_kl(student, teacher, temperature):
    """sum_v p_t (log p_t - log p_s) per position, by hand."""
    p_t = torch.softmax(teacher / temperature, -1)
    return (p_t * (p_t.log() - torch.log_softmax(student / temperature, -1))).sum(-1)


def test_kd_loss_equals_direct_computation_over_masked_positions():
    student, teacher = _logits(0), _logits(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    want = 4.0 * _direct_kl(student, teacher, 2.0)[mask].mean()
    torch.testing.assert_close(kd_loss(student, teacher, mask, 2.0), want)


def test_kd_loss_ignores_padded_positions_whatever_they_hold():
    student, teacher = _logits(2), _logits(3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    before = kd_loss(student, teacher, mask)
    student[~mask] = torch.randn_like(student[~mask]) * 100  # padding may hold anything,
    teacher[~mask] = float("nan")  # even NaN: padded rows never enter a softmax
    torch.testing.assert_close(kd_loss(student, teacher, mask), before)


def test_kd_loss_scales_with_temperature_squared():
    student, teacher = _logits(4), _logits(5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    for temperature in (1.0, 2.0, 4.0):
        raw = _direct_kl(student, teacher, temperature).mean()
        torch.testing.assert_close(
            kd_loss(student, teacher, mask, temperature), temperature**2 * raw
        )
    assert kd_loss(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_reaches_the_student_only():
    student = _logits(6).requires_grad_()
    teacher = _logits(7).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    kd_loss(student, teacher, mask).backward()
    assert teacher.grad is None
    assert student.grad[~mask].abs().max() == 0 and student.grad[mask].abs().max() > 0


def test_combined_loss_weights_ce_and_kl():
    student, teacher = _logits(8), _logits(9)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(student[mask], labels[mask])
    torch.testing.assert_close(ce_loss(student, labels, mask), ce)
    out = distillation_loss(student, teacher, labels, mask, ce_weight=0.8, kl_weight=1.0)
    torch.testing.assert_close(out.loss, 0.8 * ce + kd_loss(student, teacher, mask, 2.0))
    only_ce = distillation_loss(student, None, labels, mask, ce_weight=1.0, kl_weight=0.0)
    assert math.isclose(only_ce.loss.item(), ce.item(), rel_tol=1e-6) and only_ce.kl.item() == 0
    with pytest.raises(ValueError, match="teacher_logits are needed"):
        distillation_loss(student, None, labels, mask, kl_weight=1.0)
    with pytest.raises(ValueError, match="labels_mask"):
        kd_loss(student, teacher, mask[:, :3])
