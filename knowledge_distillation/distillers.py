r"""The distillation methods: vanilla CE, Hinton KD, DKD and IKL-KD, one class each, in one registry.

    vanilla: CE(s, y)
    kd:      ce_weight * CE(s, y) + kd_weight * KD(s, t; T)                      (T^2 inside KD)
    dkd:     ce_weight * CE(s, y) + warmup(e) * DKD(s, t, y; alpha, beta, T)     (T^2 inside DKD)
    ikl:     ce_weight * CE(s, y) + warmup(e) * IKL(s, t; alpha, beta, T, gamma, w)

with warmup(e) = min(e / warmup, 1) for the 1-based epoch e, and for IKL the wMSE weights
w = the previous epoch's class-wise mean of softmax(t / T2) (``ikl.class_prior: true``) or
the per-sample softmax(t / T2), T2 = ``ikl.prior_temperature``.

A distiller owns its loss, its warm-up and its use of the class prior; the trainer asks it
(`build_distiller`) and never tests its name. As mdistiller's ``distiller_dict``, without
wrapping the student: the trainer keeps the models, runs the forwards and fetches the prior
rows, and a distiller only maps logits (and prior rows) to a loss, as an adversarial-training
method does.
The losses themselves live in `losses` and are never re-implemented here.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from engine.config import ConfigError
from engine.registry import Registry
from losses import dkd_loss, ikl_loss, kd_loss

from .config import KDConfig

Parts = Dict[str, torch.Tensor]


def loss_warmup(epoch: int, warmup: int) -> float:
    """min(epoch / warmup, 1): the distillation term's factor in (1-based) ``epoch``; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


class Distiller:
    """The base of every distiller: its flags and ``loss``."""

    name = ""
    needs_teacher = True
    uses_prior = False
    prior_temperature = 1.0  # the temperature of the teacher softmax the class prior averages

    def __init__(self, cfg: KDConfig):
        pass

    def loss(
        self,
        logits_student: torch.Tensor,
        logits_teacher: Optional[torch.Tensor],
        targets: torch.Tensor,
        epoch: int,
        prior_rows: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Parts]:
        """The loss to minimise and its parts ``ce`` and ``kd`` (the weighted terms, detached), from
        the logits of the trainer's forwards and, for a distiller that uses the class prior, the
        batch's rows of it (``ClassPrior.rows(targets)``, fetched by the trainer)."""
        raise NotImplementedError


DISTILLERS = Registry("distiller")
register = DISTILLERS.register  # class decorator: ``@register("name")`` makes ``method: name`` available


def available_distillers() -> List[str]:
    return DISTILLERS.names()


def build_distiller(cfg: KDConfig) -> Distiller:
    """The distiller ``cfg.method`` names, with its settings from ``cfg``; a `ConfigError` for a
    name that is not registered, or for a distiller that needs a teacher the config lacks."""
    distiller = DISTILLERS.lookup(cfg.method)
    if distiller.needs_teacher and not cfg.teacher.arch:
        raise ConfigError(f"method={cfg.method} needs a teacher: set teacher.arch and teacher.checkpoint")
    return distiller(cfg)


@register("vanilla")
class Vanilla(Distiller):
    """CE with the labels only: a student (or a teacher) trained alone."""

    needs_teacher = False

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None):
        ce = F.cross_entropy(logits_student, targets)
        return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce.detach())}


@register("kd")
class KD(Distiller):
    """Hinton et al.'s KD with mdistiller's weights (T^2 inside `kd_loss`)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.kd

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = s.kd_weight * kd_loss(logits_student, logits_teacher.detach(), s.temperature)
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("dkd")
class DKD(Distiller):
    """Zhao et al.'s decoupled KD, ramped in over ``dkd.warmup`` epochs (T^2 inside `dkd_loss`)."""

    def __init__(self, cfg: KDConfig):
        super().__init__(cfg)
        self.settings = cfg.dkd

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = loss_warmup(epoch, s.warmup) * dkd_loss(
            logits_student,
            logits_teacher.detach(),
            targets,
            alpha=s.alpha,
            beta=s.beta,
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

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None):
        s = self.settings
        ce = s.ce_weight * F.cross_entropy(logits_student, targets)
        distill = loss_warmup(epoch, s.warmup) * ikl_loss(
            logits_student,
            logits_teacher.detach(),
            alpha=s.alpha,
            beta=s.beta,
            temperature=s.temperature,
            gamma=s.gamma,
            weights=prior_rows if self.uses_prior else None,
            weight_temperature=s.prior_temperature,
        )
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}
