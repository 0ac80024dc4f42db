r"""The distillation methods: vanilla CE, Hinton KD, DKD and IKL-KD, one class each, in one registry.

    vanilla: CE(s, y)
    kd:      ce_weight * CE(s, y) + kd_weight * KD(s, t; T)                      (T^2 inside KD)
    dkd:     ce_weight * CE(s, y) + warmup(e) * DKD(s, t, y; alpha, beta, T)     (T^2 inside DKD)
    dist:    ce_weight * CE(s, y) + kd_weight * DIST(s, t; beta, gamma, T)       (T^2 inside DIST)
    mlkd:    ce_weight * (CE(s_w, y) + CE(s_s, y)) + kd_weight * MLKD(s_w, s_s, t_w, t_s; T)   (weak/strong views)
    ctkd:    ce_weight * CE(s, y) + kd_weight * KD(s, t; T_e), T_e learned against the student (T^2 inside KD)
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

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.method import check_method
from losses import dist_loss, dkd_loss, ikl_loss, kd_loss, mlkd_loss

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

    takes_logit_standardization = True

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

    takes_logit_standardization = True

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

    takes_logit_standardization = True

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.dist

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = s.kd_weight * self.per_group(
            lambda student, teacher: dist_loss(student, teacher, beta=s.beta, gamma=s.gamma, temperature=s.temperature),
            self.distillation_logits(logits_student),
            self.distillation_logits(logits_teacher.detach()),
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("mlkd")
class MLKD(Distiller):
    """Jin et al.'s multi-level logit distillation (`losses.mlkd_loss`) on a weak and a strong view of each image:
    the logits arrive as [weak; strong] rows of the same images; the CE is each view's, weighted ce_weight.
    ``logit_standardization`` z-scores the KD terms' logits only, as the logit-standardization fork's MLKD."""

    takes_logit_standardization = True

    training_views = 2

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.mlkd

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        student_weak, student_strong = logits_student.chunk(2)
        teacher_weak, teacher_strong = logits_teacher.detach().chunk(2)
        ce = s.ce_weight * (F.cross_entropy(student_weak, targets) + F.cross_entropy(student_strong, targets))
        distill = s.kd_weight * self.per_group(
            lambda *views: mlkd_loss(*views, temperature=s.temperature, standardize=self.logit_standardization),
            student_weak,
            student_strong,
            teacher_weak,
            teacher_strong,
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


class _ScaledGradient(torch.autograd.Function):
    """The identity forward; the backward multiplies the gradient by ``factor`` (CTKD's gradient "reversal" layer:
    theirs multiplies by +lambda, and lambda is negative)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.factor * grad, None


@register("ctkd")
class CTKD(Distiller):
    """Li et al.'s curriculum temperature: KD at T = t_start + t_span * sigmoid(p), one learnable scalar p (from 1)
    trained by the student's optimizer (its learning rate, momentum and weight decay) through a layer that
    multiplies its gradient by -lambda_e: the temperature climbs the KD term while the student descends it, in one
    step. lambda_e = max_reversal * (1 - cos(pi * min(e, L) / L)) / 2 for the 1-based epoch e and L =
    ``ctkd.curriculum_epochs`` (their CosineDecay from 0 to -1). p is saved in last.pt with the student."""

    takes_logit_standardization = True

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.ctkd
        self.temperature_logit = nn.Parameter(torch.ones(()))
        self._last_epoch = 1

    def reversal(self, epoch: int) -> float:
        """lambda_e: 0 at epoch 0, max_reversal from epoch L on, by half a cosine."""
        s = self.settings
        progress = min(max(epoch, 0), s.curriculum_epochs) / s.curriculum_epochs
        return s.max_reversal * (1 - math.cos(math.pi * progress)) / 2

    def temperature(self, reversal: float = 0.0) -> torch.Tensor:
        s = self.settings
        logit = _ScaledGradient.apply(self.temperature_logit, -reversal)
        return s.temperature_start + s.temperature_span * torch.sigmoid(logit)

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        s = self.settings
        self._last_epoch = epoch
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        student, teacher = self.distillation_logits(logits_student), self.distillation_logits(logits_teacher.detach())
        distill = s.kd_weight * kd_loss(student, teacher, self.temperature(self.reversal(epoch)))
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}

    def epoch_metrics(self) -> Dict[str, float]:
        with torch.no_grad():
            return {"ctkd_temperature": self.temperature().item(), "ctkd_reversal": self.reversal(self._last_epoch)}


@register("ikl")
class IKL(Distiller):
    """IKL-KD, ramped in over ``ikl.warmup`` epochs; wMSE weighted by the class prior
    (``ikl.class_prior``) or by the teacher's per-sample softmax(t / T2)."""

    takes_logit_standardization = True

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
