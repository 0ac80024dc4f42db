r"""Multi-level logit distillation (Jin et al., CVPR 2023), as its authors' code computes it.

Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/KD_ours.py`` (the logit-standardization
fork's ``MLKD.py`` is the same plus the z-score): instance-level KD, class-level and batch-level correlation
of the softened predictions, at five temperatures, on a weak and a strong view of each image.
"""

import torch

from ._checks import check_logits, check_positive
from .kd import kd_loss, logit_standardize

# The temperatures every MLKD term runs at besides the configured one, in its authors' order (hard-coded there).
MLKD_EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def class_correlation_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    r"""MLKD's class-level alignment: with :math:`P = \mathrm{softmax}(z / T)` of shape [B, C],

    .. math::

        \mathcal{L}_{cc} = \frac{1}{C} \big\| P_t^\top P_t - P_s^\top P_s \big\|_F^2

    (no :math:`T^2`; the C x C Gram matrices of the batch's predictions)."""
    p_s = torch.softmax(logits_student / temperature, dim=1)
    p_t = torch.softmax(logits_teacher / temperature, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / logits_student.shape[1]


def batch_correlation_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    r"""MLKD's batch-level alignment: with :math:`P = \mathrm{softmax}(z / T)` of shape [B, C],

    .. math::

        \mathcal{L}_{bc} = \frac{1}{B} \big\| P_t P_t^\top - P_s P_s^\top \big\|_F^2

    (no :math:`T^2`; the B x B Gram matrices, so the value depends on the batch size)."""
    p_s = torch.softmax(logits_student / temperature, dim=1)
    p_t = torch.softmax(logits_teacher / temperature, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / logits_student.shape[0]


def at_most_median_fraction(values: torch.Tensor) -> torch.Tensor:
    """The fraction of ``values`` at most their median (numpy's 50th percentile, linear interpolation; torch's
    quantile is the same): what MLKD's confidence masks weigh a reduced loss by, 1/2 unless values tie."""
    return (values <= torch.quantile(values, 0.5)).to(values.dtype).mean()


def mlkd_loss(
    student_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_weak: torch.Tensor,
    teacher_strong: torch.Tensor,
    *,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    r"""The distillation term of MLKD (its CE is the caller's) as its authors' code optimises it.

    With :math:`\mathcal{T} = (T, 3, 5, 2, 6)`, w / s the weak / strong view, kd = `kd_loss` (with
    :math:`T^2`), cc = `class_correlation_loss`, bc = `batch_correlation_loss`, and the mask factors
    :math:`m_b`, :math:`m_c` = the fraction of the batch's teacher confidences (max softmax of the weak view)
    and of the class sums of its softmax that lie at or below their median (`at_most_median_fraction`):

    .. math::

        \mathcal{L} = \sum_{\tau \in \mathcal{T}} \big(m_b\,\mathrm{kd}_w(\tau) + m_c\,\mathrm{cc}_w(\tau)
            + m_b\,\mathrm{bc}_w(\tau)\big) + \sum_{\tau \in (T, 3, 5)} \mathrm{kd}_s(\tau)
            + \sum_{\tau \in (2, 6)} \mathrm{kd}_w(\tau)

    What the code does and the paper does not say: the masks multiply losses already averaged over the batch,
    so they weigh each term by about 1/2 rather than select samples; its "strong" KD sum takes the weak view's
    logits at 2 and 6; its strong-view class and batch terms are computed and never added. ``standardize``:
    the logit-standardization fork's MLKD, the z-score (`logit_standardize`) in front of the KD terms only
    (the masks and the cc and bc terms keep the raw logits). Gradients flow into the students' logits; the
    teacher's are detached."""
    check_logits(
        student_weak=student_weak,
        student_strong=student_strong,
        teacher_weak=teacher_weak,
        teacher_strong=teacher_strong,
    )
    check_positive(temperature=temperature)
    teacher_weak, teacher_strong = teacher_weak.detach(), teacher_strong.detach()
    confidence = torch.softmax(teacher_weak, dim=1)
    sample_mask = at_most_median_fraction(confidence.max(dim=1).values)
    class_mask = at_most_median_fraction(confidence.sum(dim=0))
    z = logit_standardize if standardize else (lambda logits: logits)
    kd_student_weak, kd_teacher_weak = z(student_weak), z(teacher_weak)
    kd_student_strong, kd_teacher_strong = z(student_strong), z(teacher_strong)
    temperatures = (temperature, *MLKD_EXTRA_TEMPERATURES)
    loss = student_weak.new_zeros(())
    for tau in temperatures:
        loss = loss + sample_mask * kd_loss(kd_student_weak, kd_teacher_weak, tau)
        loss = loss + class_mask * class_correlation_loss(student_weak, teacher_weak, tau)
        loss = loss + sample_mask * batch_correlation_loss(student_weak, teacher_weak, tau)
    for tau in temperatures[:3]:
        loss = loss + kd_loss(kd_student_strong, kd_teacher_strong, tau)
    for tau in temperatures[3:]:
        loss = loss + kd_loss(kd_student_weak, kd_teacher_weak, tau)  # the authors' "strong" sum, weak logits
    return loss
