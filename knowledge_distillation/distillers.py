"""The distillation objectives: vanilla CE, Hinton KD, DKD and IKL-KD.

One function, `distillation_loss`, maps the student's and the (frozen) teacher's logits
to the loss and its two parts; the losses themselves live in `losses` and are never
re-implemented here.

    vanilla: CE(s, y)
    kd:      ce_weight * CE(s, y) + kd_weight * KD(s, t; T)                      (T^2 inside KD)
    dkd:     ce_weight * CE(s, y) + warmup(e) * DKD(s, t, y; alpha, beta, T)     (T^2 inside DKD)
    ikl:     ce_weight * CE(s, y) + warmup(e) * IKL(s, t; alpha, beta, T, gamma, w)

with warmup(e) = min(e / warmup, 1) for the 1-based epoch e, and for IKL the wMSE weights
w = the previous epoch's class-wise mean of softmax(t / T2) (``class_prior: true``) or the
per-sample softmax(t / T2).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from losses import ClassPrior, dkd_loss, ikl_loss, kd_loss

from .config import KDConfig


def loss_warmup(epoch: int, warmup: int) -> float:
    """min(epoch / warmup, 1): the distillation term's factor in (1-based) ``epoch``; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


def uses_class_prior(cfg: KDConfig) -> bool:
    return cfg.distiller == "ikl" and cfg.ikl.class_prior


def distillation_loss(
    cfg: KDConfig,
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    targets: torch.Tensor,
    epoch: int,
    prior: Optional[ClassPrior] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss to minimise and its parts ``ce`` and ``kd`` (the weighted terms, detached).

    ``logits_teacher`` may be None for ``vanilla`` (training a model without a teacher).
    """
    ce = F.cross_entropy(logits_student, targets)
    if cfg.distiller == "vanilla":
        return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce.detach())}
    logits_teacher = logits_teacher.detach()
    if cfg.distiller == "kd":
        ce = cfg.kd.ce_weight * ce
        distill = cfg.kd.kd_weight * kd_loss(logits_student, logits_teacher, cfg.kd.temperature)
    elif cfg.distiller == "dkd":
        ce = cfg.dkd.ce_weight * ce
        distill = loss_warmup(epoch, cfg.dkd.warmup) * dkd_loss(
            logits_student, logits_teacher, targets,
            alpha=cfg.dkd.alpha, beta=cfg.dkd.beta, temperature=cfg.dkd.temperature,
        )
    else:
        ce = cfg.ikl.ce_weight * ce
        weights = prior.rows(targets) if uses_class_prior(cfg) else None
        distill = loss_warmup(epoch, cfg.ikl.warmup) * ikl_loss(
            logits_student, logits_teacher,
            alpha=cfg.ikl.alpha, beta=cfg.ikl.beta, temperature=cfg.ikl.temperature,
            gamma=cfg.ikl.gamma, weights=weights, weight_temperature=cfg.ikl.weight_temperature,
        )
    return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}
