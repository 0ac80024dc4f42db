r"""The distillation methods: vanilla CE, Hinton KD, DKD and IKL-KD, one class each, in one registry.

    vanilla: CE(s, y)
    kd:      ce_weight * CE(s, y) + kd_weight * KD(s, t; T)                      (T^2 inside KD)
    dkd:     ce_weight * CE(s, y) + warmup(e) * DKD(s, t, y; alpha, beta, T)     (T^2 inside DKD)
    dist:    ce_weight * CE(s, y) + kd_weight * DIST(s, t; beta, gamma, T)       (T^2 inside DIST)
    ikl:     ce_weight * CE(s, y) + warmup(e) * IKL(s, t; alpha, beta, T, gamma, w)

with warmup(e) = min(e / warmup, 1) for the 1-based epoch e, and for IKL the wMSE weights
w = the previous epoch's class-wise mean of softmax(t / T2) (``ikl.class_prior: true``) or
the per-sample softmax(t / T2), T2 = ``ikl.prior_temperature``. With ``logit_standardization`` every
distillation term compares the z-scored logits (`Distiller.distillation_logits`); CE keeps the raw ones.

A distiller owns its loss, its warm-up and its use of the class prior; the trainer asks it
(`build_distiller`) and never tests its name. As mdistiller's ``distiller_dict``, without
wrapping the student: the trainer keeps the models, runs the forwards and fetches the prior
rows, and a distiller only maps logits (and prior rows, and for the feature distillers of
`feature_distillers` the forwards' features) to a loss, as an adversarial-training method does.
A distiller is an ``nn.Module``: its parameters (connectors) train with the student, its
state is saved in last.pt; the logit distillers have none.
The losses themselves live in `losses` and are never re-implemented here.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.method import check_method
from losses import dist_loss, dkd_loss, ikl_loss, kd_loss

from . import feature_distillers  # noqa: F401  (registers the feature distillers)
from .config import KDConfig
from .distiller_base import DISTILLERS, Distiller, FeatureBatch, Parts, loss_warmup, register

__all__ = [
    "DISTILLERS",
    "Distiller",
    "FeatureBatch",
    "Parts",
    "available_distillers",
    "build_distiller",
    "check_distiller",
    "loss_warmup",
    "register",
]


def available_distillers() -> List[str]:
    return DISTILLERS.names()


def check_distiller(cfg: KDConfig) -> type:
    """The class ``cfg.method`` names, after its own check of ``cfg`` (`Distiller.check`); a
    `ConfigError` for a name that is not registered, or for a distiller that needs a teacher the
    config lacks. Builds nothing."""
    return check_method(DISTILLERS, cfg)


def build_distiller(
    cfg: KDConfig,
    student: Optional[nn.Module] = None,
    teacher: Optional[nn.Module] = None,
    *,
    input_size: Tuple[int, ...] = (3, 32, 32),
    train_targets: Optional[torch.Tensor] = None,
) -> Distiller:
    """The distiller ``cfg.method`` names, with its settings from ``cfg`` (`check_distiller`'s errors).
    A feature distiller is built from the ``student`` and ``teacher`` (the shapes of their features
    at ``input_size`` size its connectors; CRD also takes the labels of the training set)."""
    distiller = check_distiller(cfg)
    if not distiller.needs_features:
        return distiller(cfg)
    if student is None or teacher is None:
        raise ValueError(f"method={cfg.method} is built from the student and the teacher: pass both")
    extra = {"train_targets": train_targets} if distiller.needs_indices else {}
    return distiller(cfg, student, teacher, input_size, **extra)


@register("vanilla")
class Vanilla(Distiller):
    """CE with the labels only: a student (or a teacher) trained alone."""

    needs_teacher = False

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        ce = F.cross_entropy(logits_student, targets)
        return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce.detach())}


@register("kd")
class KD(Distiller):
    """Hinton et al.'s KD with mdistiller's weights (T^2 inside `kd_loss`)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.kd

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        student, teacher = self.distillation_logits(logits_student), self.distillation_logits(logits_teacher.detach())
        distill = s.kd_weight * kd_loss(student, teacher, s.temperature)
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("dkd")
class DKD(Distiller):
    """Zhao et al.'s decoupled KD, ramped in over ``dkd.warmup`` epochs (T^2 inside `dkd_loss`)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.dkd

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = loss_warmup(epoch, s.warmup) * dkd_loss(
            self.distillation_logits(logits_student),
            self.distillation_logits(logits_teacher.detach()),
            targets,
            alpha=s.alpha,
            beta=s.beta,
            temperature=s.temperature,
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("dist")
class DIST(Distiller):
    """Huang et al.'s DIST: ce_weight * CE + kd_weight * DIST(s, t; beta, gamma, tau) (`losses.dist_loss`)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.dist

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = s.kd_weight * dist_loss(
            self.distillation_logits(logits_student),
            self.distillation_logits(logits_teacher.detach()),
            beta=s.beta,
            gamma=s.gamma,
            temperature=s.temperature,
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("ikl")
class IKL(Distiller):
    """IKL-KD, ramped in over ``ikl.warmup`` epochs; wMSE weighted by the class prior
    (``ikl.class_prior``) or by the teacher's per-sample softmax(t / T2)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.ikl
        self.uses_prior = cfg.ikl.class_prior
        self.prior_temperature = cfg.ikl.prior_temperature

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = loss_warmup(epoch, s.warmup) * ikl_loss(
            self.distillation_logits(logits_student),
            self.distillation_logits(logits_teacher.detach()),
            alpha=s.alpha,
            beta=s.beta,
            temperature=s.temperature,
            gamma=s.gamma,
            weights=prior_rows if self.uses_prior else None,
            weight_temperature=s.prior_temperature,
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}
