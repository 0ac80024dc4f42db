r"""Baseline losses the paper compares against: Hinton KD, DKD and TRADES' KL term."""

import torch

from ._checks import check_logits, check_positive, check_targets
from .dkl import kl_loss


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    r"""Hinton et al. (2015) knowledge distillation, with the customary T^2 factor.

    .. math::

        \mathrm{KD} = T^2 \cdot \frac{1}{B} \sum_b \mathrm{KL}\big(\mathrm{softmax}(t_b/T)
            \,\|\, \mathrm{softmax}(s_b/T)\big)

    T^2 keeps the gradient's scale independent of T. Gradients flow into both arguments;
    a frozen teacher is the caller's business (its logits come from ``torch.no_grad``).
    """
    return temperature**2 * kl_loss(logits_student, logits_teacher, temperature)


def _binary_log_probs(logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log [p_target, p_rest] of softmax(logits), computed with logsumexp (no log(0))."""
    log_total = torch.logsumexp(logits, dim=1)
    log_target = logits.masked_fill(~target_mask, float("-inf")).logsumexp(dim=1)
    log_rest = logits.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([log_target, log_rest], dim=1) - log_total.unsqueeze(1)


def _non_target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The C-1 non-target logits of each row, in class order.

    A gather of the columns 0..C-2 shifted by one from the target on: a boolean mask would
    size its result by counting on the device, which makes the host wait for the GPU."""
    columns = torch.arange(logits.shape[1] - 1, device=logits.device).expand(logits.shape[0], -1)
    return logits.gather(1, columns + (columns >= targets.unsqueeze(1)).long())


def dkd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), with T^2.

    .. math::

        \mathrm{DKD} = T^2 \big(\alpha\, \mathrm{KL}(b^t \| b^s) + \beta\, \mathrm{KL}(\hat p^t \| \hat p^s)\big)

    where b = [p_y, 1 - p_y] are the binary target/non-target probabilities of
    softmax(logits / T) (TCKD) and \hat p is the softmax over the C - 1 non-target logits
    / T (NCKD), both averaged over the batch. Per sample,
    KL = TCKD + (1 - p^t_y) NCKD (Zhao et al., Eq. 1), which the tests check.

    The non-target distribution drops the target column outright (mdistiller subtracts
    1000 from it instead), so the value is exact for logits of any scale.
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_targets(targets, logits_student)
    check_positive(temperature=temperature)
    if logits_student.shape[1] < 2:
        raise ValueError("dkd_loss needs at least two classes")
    dtype = torch.promote_types(logits_student.dtype, torch.float32)
    student = logits_student.to(dtype) / temperature
    teacher = logits_teacher.to(dtype) / temperature
    target_mask = targets.unsqueeze(1) == torch.arange(student.shape[1], device=targets.device)  # one_hot, as a mask

    log_b_student = _binary_log_probs(student, target_mask)
    log_b_teacher = _binary_log_probs(teacher, target_mask)
    tckd = (log_b_teacher.exp() * (log_b_teacher - log_b_student)).sum(dim=1).mean()
    nckd = kl_loss(_non_target_logits(student, targets), _non_target_logits(teacher, targets))
    return temperature**2 * (alpha * tckd + beta * nckd)


def trades_kl_loss(logits_adv: torch.Tensor, logits_natural: torch.Tensor) -> torch.Tensor:
    r"""TRADES' robust regulariser (Zhang et al., 2019): KL(softmax(o_nat) || softmax(o_adv)).

    Batch mean, gradients into both branches, as in TRADES' training loss
    ``(1/B) * KLDivLoss(sum)(log_softmax(o_adv), softmax(o_nat))``. IKL-AT replaces
    exactly this term by ``ikl_loss(logits_adv, logits_natural, ...)``.
    """
    return kl_loss(logits_adv, logits_natural)
