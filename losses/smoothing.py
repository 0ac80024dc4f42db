r"""Label-smoothed cross-entropy in the two forms the adversarial-training baselines use."""

import torch
import torch.nn.functional as F

from ._checks import check_logits, check_targets

SMOOTHING_FORMS = ("uniform", "off_target")


def smoothed_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float, form: str = "uniform"
) -> torch.Tensor:
    r"""Cross-entropy with a label-smoothed target distribution :math:`q`, batch mean:
    :math:`-\frac{1}{B} \sum_b \sum_k q_{bk} \log \mathrm{softmax}(o_b)_k`.

    * ``uniform`` (torch's ``label_smoothing``, Wang et al.'s smooth CE): the mass ``smoothing`` is
      spread over all C classes, :math:`q_y = 1 - s + s/C`, :math:`q_k = s/C`;
    * ``off_target`` (DAJAT's ``LabelSmoothingLoss``): the true class keeps :math:`q_y = 1 - s`
      and each of the other C - 1 classes gets :math:`q_k = s / (C - 1)` (their code divides by 99
      whatever the number of classes; this divides by C - 1, which is 99 on CIFAR-100).

    ``smoothing`` 0 is plain cross-entropy in both forms.
    """
    check_logits(logits=logits)
    check_targets(targets, logits)
    if form not in SMOOTHING_FORMS:
        raise ValueError(f"form must be one of {SMOOTHING_FORMS}, got {form!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    if form == "uniform" or smoothing == 0.0:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    log_p = F.log_softmax(logits, dim=1)
    classes = logits.shape[1]
    true = log_p.gather(1, targets[:, None]).squeeze(1)
    others = log_p.sum(dim=1) - true
    return -((1.0 - smoothing) * true + smoothing / (classes - 1) * others).mean()


def jensen_shannon_loss(*logits: torch.Tensor, clamp: float = 1e-7) -> torch.Tensor:
    r"""DAJAT's consistency term over the softmaxes :math:`p_1 .. p_n` of several views of the same images:

    .. math::

        \mathrm{JS} = \frac{1}{n} \sum_{i=1}^{n} \frac{1}{B} \sum_b \mathrm{KL}\big(p_{i,b} \,\|\, M_b\big),
        \qquad M = \mathrm{clamp}\Big(\frac{1}{n} \sum_i p_i,\ 10^{-7},\ 1\Big)

    (val-iisc/DAJAT ``train_DAJAT.py``: only the mixture is clamped before its log; gradients flow
    through every term).
    """
    if len(logits) < 2:
        raise ValueError(f"the Jensen-Shannon term needs at least two views, got {len(logits)}")
    check_logits(**{f"logits_{i}": view for i, view in enumerate(logits)})
    probabilities = [F.softmax(view, dim=1) for view in logits]
    log_mixture = (sum(probabilities) / len(probabilities)).clamp(clamp, 1.0).log()
    divergences = [F.kl_div(log_mixture, p, reduction="batchmean") for p in probabilities]
    return sum(divergences) / len(divergences)
