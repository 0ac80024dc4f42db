"""The loss library shared by adversarial training and knowledge distillation.

``dkl_loss`` and ``ikl_loss`` are the paper's losses; ``wmse_loss``, ``soft_ce_loss`` and
``kl_loss`` their parts and reference; ``ClassPrior`` the class-wise global information
IKL weights its wMSE term with; ``kd_loss``, ``dkd_loss``, ``dist_loss`` and ``trades_kl_loss`` the
baselines, ``logit_standardize`` Sun et al.'s z-score in front of them;
``mlkd_loss`` (with ``class_correlation_loss`` and ``batch_correlation_loss``) Jin et al.'s multi-level
distillation; ``smoothed_cross_entropy`` and ``jensen_shannon_loss`` the terms of ACAT and DAJAT.
"""

from .dkl import dkl_loss, ikl_loss, kl_loss, soft_ce_loss, wmse_loss
from .kd import dist_loss, dkd_loss, kd_loss, logit_standardize, trades_kl_loss
from .mlkd import batch_correlation_loss, class_correlation_loss, mlkd_loss
from .prior import ClassPrior
from .smoothing import jensen_shannon_loss, smoothed_cross_entropy

__all__ = [
    "wmse_loss",
    "soft_ce_loss",
    "kl_loss",
    "dkl_loss",
    "ikl_loss",
    "ClassPrior",
    "kd_loss",
    "dkd_loss",
    "trades_kl_loss",
    "dist_loss",
    "logit_standardize",
    "mlkd_loss",
    "class_correlation_loss",
    "batch_correlation_loss",
    "smoothed_cross_entropy",
    "jensen_shannon_loss",
]
