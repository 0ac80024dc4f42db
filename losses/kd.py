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


def logit_standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Sun et al.'s logit standardization (CVPR 2024): each row's z-score over the classes,

    .. math::

        \mathcal{Z}(z) = \frac{z - \bar z}{\epsilon + \sigma(z)}, \qquad \bar z = \frac{1}{C} \sum_k z_k,\quad
        \sigma(z) = \sqrt{\tfrac{1}{C - 1} \sum_k (z_k - \bar z)^2}

    (their ``normalize``: torch's unbiased std, ``eps`` added to it), applied to the student's and the teacher's
    logits before a distillation term divides them by its temperature (their "base temperature")."""
    check_logits(logits=logits)
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (eps + logits.std(dim=1, keepdim=True))


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's Pearson correlation: the cosine of the centred rows, ``eps`` added to the product of norms."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""DIST (Huang et al., NeurIPS 2022): the student matches the teacher's relations, not its probabilities.

    With :math:`Y = \mathrm{softmax}(z / \tau)` for student and teacher ([B, C]) and :math:`\rho` the Pearson
    correlation (the cosine of the centred vectors, :math:`\epsilon` added to the product of their norms),

    .. math::

        \mathrm{DIST} = \tau^2 \beta \Big(1 - \frac{1}{B} \sum_b \rho(Y^s_{b,:}, Y^t_{b,:})\Big)
        + \tau^2 \gamma \Big(1 - \frac{1}{C} \sum_c \rho(Y^s_{:,c}, Y^t_{:,c})\Big)

    the inter-class term (each sample over the classes) and the intra-class term (each class over the batch),
    as hunto/image_classification_sota ``lib/models/losses/dist_kd.py``. Gradients flow into both arguments.
    """
    check_logits(logits_student=logits_student, logits_teacher=logits_teacher)
    check_positive(temperature=temperature)
    y_s = torch.softmax(logits_student / temperature, dim=1)
    y_t = torch.softmax(logits_teacher / temperature, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t, eps).mean()
    intra = 1 - _pearson_rows(y_s.t(), y_t.t(), eps).mean()
    return temperature**2 * (beta * inter + gamma * intra)
