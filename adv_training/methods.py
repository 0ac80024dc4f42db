r"""The adversarial-training methods: one class each, in one registry.

A method (an ``nn.Module``, the contract of `engine.method.TrainingMethod`) holds everything
that differs between training objectives:

* ``has_attack``: whether it has an inner maximisation (standard training has none: x_adv = x);
* ``attack_needs_natural_logits``: whether its attack pulls away from the natural
  prediction (computed once per batch, in eval mode) rather than from the label;
* ``forwards_natural``: whether its training loss also sees the clean images;
* ``uses_prior`` and ``prior_temperature``: whether it reads, and updates, the class prior
  (IKL's global weights), and the temperature of the softmax that prior averages;
* `Method.check`: the settings it refuses, before anything is built;
* its own networks, as submodules run by `Method.forward` on the clean images (LBGAT's natural
  classifier; the other methods have none). The trainer optimises their parameters in groups of
  their own, keeps them in last.pt (``method``), and wraps, compiles and broadcasts them as it
  does the model, without knowing what they are;
* `Method.attack_objective`: what PGD maximises;
* `Method.natural_loss` and `Method.robust_loss`: the two parts of its training loss.

`Method.loss` assembles the parts the same way for every method, from the logits of the two
forwards the trainer makes as the reference does (the trainer runs the forwards and fetches
the prior rows; the method turns logits into the loss, as a distiller does in distillation),
and returns a `StepLoss` with the logits the trainer reads for its accuracies and the prior;
`Method.proxy_loss` is AWP's proxy loss. The trainer asks the method and never tests its name.

Dual-view batches (data.augment = autoaug | cutout) hold the basic view in the first
``basic_size`` rows and the augmented view after it. The natural loss always covers both
views. The training step weights the augmented view's robust term by data.aug_weight;
AWP's proxy step takes one robust term over the whole doubled batch, i.e. its batch mean
(basic + augmented) / 2, and no aug_weight, as the reference's AWP code does.

Adding a method (see `MART` and `LBGAT` at the end, and docs/adding_a_method.md): subclass `Method`,
register it with ``@register("name")``, give its knobs a section in `ATConfig` if it has any, and add
a YAML file under configs/adv_training/.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from engine.config import ConfigError
from engine.method import MethodRegistry, TrainingMethod
from engine.method import check_method as engine_check_method
from losses import ikl_loss, trades_kl_loss
from models import build_model
from models.registry import require_model

from .attacks import Objective
from .config import ATConfig

# --- attack objectives -----------------------------------------------------------------------


def cross_entropy_objective(targets: torch.Tensor) -> Objective:
    """Cross-entropy with the true labels: the objective of PGD-AT, MART and the PGD-20 monitor."""
    return lambda logits: F.cross_entropy(logits, targets)


def kl_objective(logits_natural: torch.Tensor) -> Objective:
    """TRADES' inner maximisation: KL(softmax(logits_natural) || softmax(logits_adv)).

    `trades_kl_loss` is the batch mean where TRADES sums over the batch. The factor 1/B does
    not move the attack: an l_inf step only uses the sign of the gradient, and an l_2 step
    normalises each sample's gradient to unit norm, so both are invariant to a positive
    scale of the objective.
    """
    target = logits_natural.detach()
    return lambda logits: trades_kl_loss(logits, target)


def margin_objective(targets: torch.Tensor) -> Objective:
    """Carlini-Wagner's margin, as Wang et al.'s ``CWLoss`` (confidence 0): the sum over the batch
    of ``-max(o_y - max_{k != y} o_k, 0)``. A sample already misclassified has no gradient."""

    def objective(logits: torch.Tensor) -> torch.Tensor:
        true = logits.gather(1, targets[:, None]).squeeze(1)
        other = logits.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
        return -(true - other).clamp_min(0).sum()

    return objective


def ikl_objective(
    logits_natural: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    weights: Optional[torch.Tensor],
    gamma: float = 1.0,
) -> Objective:
    """IKL-AT's inner maximisation: ``ikl_loss(logits_adv, logits_natural, ...)``.

    ``weights`` are the class-prior rows of the batch (``ClassPrior.rows(targets)``), or
    None for per-sample softmax weights. The authors attack with alpha = beta = gamma = 1
    on CIFAR-100 and with beta = 0 on CIFAR-10.
    """
    target = logits_natural.detach()
    return lambda logits: ikl_loss(logits, target, alpha=alpha, beta=beta, gamma=gamma, weights=weights)


# --- the methods -------------------------------------------------------------------------------


@dataclass
class StepLoss:
    """The training loss of one batch (``total``, to minimise) and what the trainer reads of it:
    the natural and robust terms and the logits of the two forwards (detached; ``logits_natural``
    None for a method that does not forward the clean images), for the accuracies and the prior."""

    total: torch.Tensor
    natural: torch.Tensor
    robust: torch.Tensor
    logits_adv: torch.Tensor
    logits_natural: Optional[torch.Tensor]


class Method(TrainingMethod):
    """The base of every method; subclasses set the flags and override the losses they change.

    A method with networks of its own builds them in ``__init__`` as submodules and runs them in
    `Method.forward` (on the clean images, in train mode); the trainer optimises, saves, wraps and
    broadcasts the method like the model, and hands `Method.loss` that forward's output."""

    has_attack = True
    attack_needs_natural_logits = False
    forwards_natural = True

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__()
        self.aug_weight = cfg.data.aug_weight
        self.label_smoothing = cfg.label_smoothing

    def forward(self, images: torch.Tensor):
        """The method's own networks on the clean training images (only for a method that has networks)."""
        raise NotImplementedError(f"method {self.name} has no networks of its own")

    def attack_objective(
        self, logits_natural: Optional[torch.Tensor], targets: torch.Tensor, prior_rows: Optional[torch.Tensor]
    ) -> Objective:
        return cross_entropy_objective(targets)

    def natural_loss(self, logits_natural: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The clean-image term (only for methods that forward the clean images), label-smoothed
        by ``label_smoothing``: (1 - ls) CE + ls mean_k(-log p_k), Wang et al.'s smooth CE."""
        return F.cross_entropy(logits_natural, targets, label_smoothing=self.label_smoothing)

    def robust_loss(
        self,
        logits_adv: torch.Tensor,
        logits_natural: Optional[torch.Tensor],
        targets: torch.Tensor,
        prior_rows: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """The adversarial term of one view (batch mean)."""
        raise NotImplementedError

    def _robust_rows(self, logits_adv, logits_natural, targets, prior_rows, rows: slice) -> torch.Tensor:
        def part(tensor):
            return None if tensor is None else tensor[rows]

        return self.robust_loss(logits_adv[rows], part(logits_natural), targets[rows], part(prior_rows))

    def _natural(self, logits_natural, targets, like: torch.Tensor) -> torch.Tensor:
        return self.natural_loss(logits_natural, targets) if logits_natural is not None else like.new_zeros(())

    def loss(
        self,
        logits_adv: torch.Tensor,
        logits_natural: Optional[torch.Tensor],
        targets: torch.Tensor,
        prior_rows: Optional[torch.Tensor],
        basic_size: int,
        own_outputs=None,
    ) -> StepLoss:
        """The training loss from the logits of the trainer's two forwards (``logits_natural`` None for a
        method that does not forward the clean images), the batch's class-prior rows (None for a
        method that uses no prior) and ``own_outputs``, what `Method.forward` returned (None for a
        method without networks). On dual-view batches the robust term is basic + aug_weight *
        augmented (``basic_size`` rows of the basic view first)."""
        terms = (logits_adv, logits_natural, targets, prior_rows)
        if basic_size < len(targets):
            robust = self._robust_rows(*terms, slice(0, basic_size))
            robust = robust + self.aug_weight * self._robust_rows(*terms, slice(basic_size, None))
        else:
            robust = self._robust_rows(*terms, slice(None))
        natural = self._natural(logits_natural, targets, robust)
        return StepLoss(
            natural + robust,
            natural.detach(),
            robust.detach(),
            logits_adv.detach(),
            logits_natural.detach() if logits_natural is not None else None,
        )

    def proxy_loss(
        self,
        logits_adv: torch.Tensor,
        logits_natural: Optional[torch.Tensor],
        targets: torch.Tensor,
        prior_rows: Optional[torch.Tensor],
        own_outputs=None,
    ) -> torch.Tensor:
        """AWP's proxy loss: as `loss`, with one robust term over the whole batch (both views of a
        dual-view batch, and no aug_weight, as the reference's AWP code); the same on one view."""
        robust = self._robust_rows(logits_adv, logits_natural, targets, prior_rows, slice(None))
        return self._natural(logits_natural, targets, robust) + robust


METHODS = MethodRegistry("method")
register = METHODS.register  # class decorator: ``@register("name")`` makes ``method: name`` available


def available_methods() -> List[str]:
    return METHODS.names()


def check_method(cfg: ATConfig) -> type:
    """The class ``cfg.method`` names, after its own check of ``cfg`` (`TrainingMethod.check`); a
    `ConfigError` for a name that is not registered or a setting the method refuses. Builds nothing."""
    return engine_check_method(METHODS, cfg)


def build_method(cfg: ATConfig, num_classes: int) -> Method:
    """The method ``cfg.method`` names, with its settings from ``cfg`` and its own networks built for
    ``num_classes`` classes (`check_method`'s errors)."""
    return check_method(cfg)(cfg, num_classes)


@register("ikl")
class IKL(Method):
    r"""IKL-AT: :math:`\mathrm{CE}(o_{nat}, y) + \mathrm{IKL}(o_{adv}, o_{nat};\, w = \text{class prior})`.

    The attack maximises the IKL term with the attack's own alpha and beta (the authors' 1
    and 1 on CIFAR-100, 1 and 0 on CIFAR-10) and gamma 1 whatever the training gamma.
    """

    attack_needs_natural_logits = True
    uses_prior = True

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.settings = cfg.ikl
        self.prior_temperature = cfg.ikl.prior_temperature
        self.attack_alpha, self.attack_beta = cfg.attack.alpha, cfg.attack.beta

    def attack_objective(self, logits_natural, targets, prior_rows):
        return ikl_objective(logits_natural, alpha=self.attack_alpha, beta=self.attack_beta, weights=prior_rows)

    def robust_loss(self, logits_adv, logits_natural, targets, prior_rows):
        s = self.settings
        return ikl_loss(
            logits_adv,
            logits_natural,
            alpha=s.alpha,
            beta=s.beta,
            gamma=s.gamma,
            temperature=s.temperature,
            weights=prior_rows,
        )


@register("trades")
class TRADES(Method):
    r"""TRADES (Zhang et al., 2019): :math:`\mathrm{CE}(o_{nat}, y) + \beta\, \mathrm{KL}(o_{nat} \| o_{adv})`."""

    attack_needs_natural_logits = True

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.beta = cfg.trades.beta

    def attack_objective(self, logits_natural, targets, prior_rows):
        return kl_objective(logits_natural)

    def robust_loss(self, logits_adv, logits_natural, targets, prior_rows):
        return self.beta * trades_kl_loss(logits_adv, logits_natural)


@register("pgd")
class PGDAT(Method):
    r"""Madry et al.'s PGD-AT: :math:`\mathrm{CE}(o_{adv}, y)` on PGD examples of the CE loss."""

    forwards_natural = False

    def robust_loss(self, logits_adv, logits_natural, targets, prior_rows):
        return F.cross_entropy(logits_adv, targets)


@register("standard")
class Standard(PGDAT):
    """Standard training: CE on the clean images (no attack, so x_adv is x)."""

    has_attack = False


@register("mart")
class MART(Method):
    r"""MART (Wang et al., ICLR 2020), the worked example of adding a method:

    .. math::

        \mathrm{BCE}(p', y) + \lambda\, \mathrm{KL}(p \,\|\, p')\, (1 - p_y),
        \qquad \mathrm{BCE}(p', y) = -\log p'_y - \log\big(1 - \max_{k \ne y} p'_k\big)

    with :math:`p = \mathrm{softmax}(o_{nat})`, :math:`p' = \mathrm{softmax}(o_{adv})`, batch
    means, gradients through both branches; the attack maximises CE on the label. The clamp
    of :math:`1 - \max p'` at 1e-12 only guards the log (the authors add 1e-4 and 1e-12).
    """

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.beta = cfg.mart.beta

    def natural_loss(self, logits_natural, targets):
        return logits_natural.new_zeros(())  # MART has no separate clean-image term

    def robust_loss(self, logits_adv, logits_natural, targets, prior_rows):
        log_p_adv = F.log_softmax(logits_adv, dim=1)
        p_adv_wrong = log_p_adv.exp().scatter(1, targets[:, None], 0.0)  # the label's probability removed
        bce = F.nll_loss(log_p_adv, targets) - torch.log((1 - p_adv_wrong.amax(dim=1)).clamp_min(1e-12)).mean()
        log_p_nat = F.log_softmax(logits_natural, dim=1)
        kl = (log_p_nat.exp() * (log_p_nat - log_p_adv)).sum(dim=1)
        p_nat_true = log_p_nat.exp().gather(1, targets[:, None]).squeeze(1)
        return bce + self.beta * (kl * (1 - p_nat_true)).mean()


@register("lbgat")
class LBGAT(Method):
    r"""LBGAT (Cui et al., ICCV 2021): a natural classifier :math:`g` is trained beside the robust model
    :math:`f`, and guides :math:`f`'s adversarial logits towards its own clean logits:

    .. math::

        \underbrace{\mathrm{CE}(g(x), y)}_{\text{natural}}
        + \underbrace{\tfrac{1}{BC} \| f(x') - g(x) \|_2^2
        + \beta\, \mathrm{KL}\big(\mathrm{softmax}(f(x)) \,\|\, \mathrm{softmax}(f(x'))\big)}_{\text{robust}}

    with the mean squared error over the B x C logits and the KL a batch mean, gradients through
    every term into both networks (jiequancui/LBGAT ``lbgat.py``: nothing is detached), x' TRADES'
    attack on :math:`f` alone. :math:`g` (``lbgat.natural_arch``) runs in train mode throughout and
    is never evaluated. beta = 0 is the authors' LBGAT0, 6 their LBGAT6.
    """

    attack_needs_natural_logits = True
    OLDER_CHECKPOINT_KEY = "companion"  # last.pt held the natural classifier there, a plain state dict

    @classmethod
    def check(cls, cfg: ATConfig) -> None:
        require_model("lbgat.natural_arch", cfg.lbgat.natural_arch, cfg.data.dataset, {})
        if cfg.data.augment in ("autoaug", "cutout"):
            raise ConfigError(
                f"method lbgat takes one view of each image, and data.augment is {cfg.data.augment} (two views); "
                "use data.augment=basic"
            )
        if cfg.awp.enabled:
            raise ConfigError(
                "method lbgat runs without AWP (LBGAT-AWP's recipe is not published): set awp.enabled=false"
            )

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.beta = cfg.lbgat.beta
        self.natural_classifier = build_model(cfg.lbgat.natural_arch, num_classes, dataset=cfg.data.dataset)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.natural_classifier(images)

    def attack_objective(self, logits_natural, targets, prior_rows):
        return kl_objective(logits_natural)

    def loss(self, logits_adv, logits_natural, targets, prior_rows, basic_size, own_outputs=None):
        """``own_outputs``: the natural classifier's logits of the clean images (`LBGAT.forward`)."""
        if own_outputs is None:
            raise ValueError("LBGAT's loss needs the natural classifier's logits (own_outputs)")
        natural = F.cross_entropy(own_outputs, targets)
        robust = F.mse_loss(logits_adv, own_outputs) + self.beta * trades_kl_loss(logits_adv, logits_natural)
        return StepLoss(
            natural + robust, natural.detach(), robust.detach(), logits_adv.detach(), logits_natural.detach()
        )

    def proxy_loss(self, logits_adv, logits_natural, targets, prior_rows, own_outputs=None):
        return self.loss(logits_adv, logits_natural, targets, prior_rows, len(targets), own_outputs).total

    def state_from_older_checkpoint(self, checkpoint):
        """The natural classifier's weights in a last.pt that held them as ``companion`` (a plain state dict)."""
        older = checkpoint.get(self.OLDER_CHECKPOINT_KEY)
        if not isinstance(older, dict):
            return None
        return {f"natural_classifier.{key}": value for key, value in older.items()}
