r"""Decoupled (DKL) and Improved (IKL) Kullback-Leibler losses.

Notation: ``s`` are the logits that are being trained towards the other ones (the
student, or the adversarial branch), ``t`` the logits that provide the target (the
teacher, or the natural branch), both of shape [B, C]. ``sg`` is stop-gradient.

Cui et al. (arXiv 2305.13948) show that KL(softmax(t) || softmax(s)) has the same
gradients as

    DKL(s, t) = beta * wMSE(sg(s), t; w = sg(softmax(t))) + alpha * CE(sg(softmax(t)), s)

with alpha = beta = 1, and propose IKL, which (1) lets the wMSE term train ``s`` too
and (2) takes the weights ``w`` from class-wise global statistics (`ClassPrior`),
optionally raised to a power gamma.

Naming follows the authors' code: ``alpha`` weights the soft-label cross-entropy and
``beta`` the weighted MSE (the paper's equation uses the opposite letters). None of
these losses multiplies by T^2 (unlike Hinton KD and DKD in `losses.kd`).

All functions return the batch mean as a 0-dim tensor, compute in at least float32
(bf16/fp16 logits are upcast) and validate their inputs.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import check_logits, check_positive, check_weights, nan_unless

# Rows whose weights sum to zero contribute nothing; the clamp only avoids 0/0.
_TINY = 1e-30


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def wmse_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Weighted mean squared error between the pairwise logit gaps of two models.

    .. math::

        \mathrm{wMSE} = \frac{1}{4} \frac{\sum_b \sum_{j,k} w_{bj} w_{bk}
            \big((t_{bj} - t_{bk}) - (s_{bj} - s_{bk})\big)^2}{\sum_b \big(\sum_j w_{bj}\big)^2}

    With d = t - s, W_b = sum_j w_bj and the weighted mean mu_b = sum_j w_bj d_bj / W_b,
    the double sum over class pairs is a weighted variance,

    .. math::

        \frac{1}{4} \sum_{j,k} w_j w_k (d_j - d_k)^2 = \frac{1}{2} W \sum_j w_j (d_j - \mu)^2,

    which is what is computed: O(B*C) time and memory, no [B, C, C] tensor. Each row of
    ``s`` and ``t`` is first shifted by its (detached) maximum and ``d`` is centred before
    squaring, so a large common offset (logits near 1e3) costs no float32 precision;
    neither shift changes the value or the gradient, because the loss is invariant to it.

    When the rows of ``weights`` sum to one (softmax outputs, class-prior rows) the
    denominator is B and this is the batch mean.

    Args:
        logits_student: [B, C]; receives gradients.
        logits_teacher: [B, C]; receives gradients (detach it yourself to stop them).
        weights: [B, C], non-negative; treated as constants (no gradient flows into them).
            Checked on the CPU (a ValueError); on an accelerator, where a check would stall
            or abort the device, negative or NaN weights make the result NaN.
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    valid = check_weights(weights, logits_student)  # None once checked; on an accelerator, NaN when invalid
    dtype = _compute_dtype(logits_student)
    student = logits_student.to(dtype)
    teacher = logits_teacher.to(dtype)
    w = weights.detach().to(dtype)

    student = student - student.detach().amax(dim=1, keepdim=True)
    teacher = teacher - teacher.detach().amax(dim=1, keepdim=True)
    gap = teacher - student
    row_weight = w.sum(dim=1, keepdim=True)
    mean_gap = (w * gap).sum(dim=1, keepdim=True) / row_weight.clamp_min(_TINY)
    centred = gap - mean_gap
    per_row = 0.5 * row_weight.squeeze(1) * (w * centred.square()).sum(dim=1)
    return nan_unless(valid, per_row.sum() / row_weight.square().sum().clamp_min(_TINY))


def soft_ce_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Cross-entropy with soft labels from the teacher (the teacher receives no gradient).

    .. math::

        \mathrm{CE} = -\frac{1}{B} \sum_b \sum_j \mathrm{sg}\big(\mathrm{softmax}(t_b / T)\big)_j
            \log \mathrm{softmax}(s_b / T)_j
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_positive(temperature=temperature)
    dtype = _compute_dtype(logits_student)
    target = F.softmax(logits_teacher.detach().to(dtype) / temperature, dim=1)
    log_prob = F.log_softmax(logits_student.to(dtype) / temperature, dim=1)
    return -(target * log_prob).sum(dim=1).mean()


def kl_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""KL divergence from the teacher's to the student's tempered softmax, batch mean.

    .. math::

        \mathrm{KL} = \frac{1}{B} \sum_b \sum_j p_{bj} (\log p_{bj} - \log q_{bj}),
        \quad p = \mathrm{softmax}(t / T),\; q = \mathrm{softmax}(s / T)

    Gradients flow into both arguments (TRADES trains both branches through it); no T^2.
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_positive(temperature=temperature)
    dtype = _compute_dtype(logits_student)
    log_p = F.log_softmax(logits_teacher.to(dtype) / temperature, dim=1)
    log_q = F.log_softmax(logits_student.to(dtype) / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def dkl_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""Decoupled KL: the form of the paper's theorem, with its stop-gradients.

    .. math::

        \mathrm{DKL} = \beta\, \mathrm{wMSE}\big(\mathrm{sg}(s/T),\, t/T;\; w = \mathrm{sg}(\mathrm{softmax}(t/T))\big)
            + \alpha\, \mathrm{CE}\big(\mathrm{sg}(\mathrm{softmax}(t/T)),\, s/T\big)

    With alpha = beta = 1 its gradients with respect to *both* arguments equal those of
    ``kl_loss(logits_student, logits_teacher, temperature)``: the CE term carries the
    student's gradient, the wMSE term the teacher's. Its value differs from KL by the
    teacher's entropy and a constant factor; only the gradients are equivalent.
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_positive(temperature=temperature)
    scaled_student = logits_student / temperature
    scaled_teacher = logits_teacher / temperature
    weights = F.softmax(scaled_teacher.detach().to(_compute_dtype(scaled_teacher)), dim=1)
    wmse = wmse_loss(scaled_student.detach(), scaled_teacher, weights)
    ce = soft_ce_loss(scaled_student, scaled_teacher)
    return beta * wmse + alpha * ce


def ikl_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 1.0,
    gamma: float = 1.0,
    weights: Optional[torch.Tensor] = None,
    weight_temperature: float = 1.0,
) -> torch.Tensor:
    r"""Improved KL (IKL): the loss used for IKL-AT and IKL-KD.

    .. math::

        \mathrm{IKL} = \beta\, \mathrm{wMSE}(s, t;\; w^\gamma)
            + \alpha\, \mathrm{CE}\big(\mathrm{sg}(\mathrm{softmax}(t/T)),\, s/T\big)

    Unlike `dkl_loss`, neither gap inside wMSE is stopped, so the wMSE term trains the
    student (the adversarial branch) as well. As in the authors' code, wMSE acts on the
    raw logits: ``temperature`` only enters the CE term, and there is no T^2 factor.

    Args:
        weights: [B, C] rows of class-wise global information, usually
            ``ClassPrior.rows(targets)``. When None, the per-sample
            ``sg(softmax(t / weight_temperature))`` is used instead.
        gamma: exponent applied to the weights (1 keeps them; GKL's smoother
            weights use values such as 0.2 or 0.4).
        alpha: weight of the soft-label CE term.
        beta: weight of the wMSE term.

    A term whose coefficient is exactly 0 is not computed at all (the CIFAR-10 attack
    uses beta = 0).
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_positive(temperature=temperature, weight_temperature=weight_temperature)
    if not gamma >= 0:
        raise ValueError(f"gamma must be non-negative, got {gamma}")
    loss = logits_student.new_zeros((), dtype=_compute_dtype(logits_student))
    valid = None  # the device-side check of given weights (see `wmse_loss`)
    if beta != 0:
        if weights is None:
            dtype = _compute_dtype(logits_teacher)
            weights = F.softmax(logits_teacher.detach().to(dtype) / weight_temperature, dim=1)
        else:
            valid = check_weights(weights, logits_student)  # before gamma: an even power hides a sign
            weights = weights.detach()
        if gamma != 1:
            weights = weights.pow(gamma)
        loss = loss + beta * wmse_loss(logits_student, logits_teacher, weights)
    if alpha != 0:
        loss = loss + alpha * soft_ce_loss(logits_student, logits_teacher, temperature)
    return nan_unless(valid, loss)
