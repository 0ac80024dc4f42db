r"""The adversarial-training methods: one class each, in one registry.

A method (an ``nn.Module``, the contract of `engine.method.TrainingMethod`) holds everything
that differs between training objectives:

* ``has_attack``: whether it has an inner maximisation (standard training has none: x_adv = x);
* ``attack_needs_natural_logits``: whether its attack pulls away from the natural
  prediction (computed once per batch, in eval mode) rather than from the label;
* ``forwards_natural``: whether its training loss also sees the clean images;
* ``awp_on_basic_view``: whether AWP's proxy loss sees only the basic view of a multi-view batch;
* ``uses_prior`` and ``prior_temperature``: whether it reads, and updates, the class prior
  (IKL's global weights), and the temperature of the softmax that prior averages;
* `Method.check`: the settings it refuses, before anything is built;
* its own networks, as submodules run by `Method.forward` on the clean images (LBGAT's natural
  classifier; the other methods have none). The trainer optimises their parameters in groups of
  their own, keeps them in last.pt (``method``), and wraps, compiles and broadcasts them as it
  does the model, without knowing what they are;
* `Method.attack_objective`: what PGD maximises, and `Method.adversarial_examples`: the attack itself
  (PGD with the epoch's budget; LAS-AT's strategy network picks one per sample);
* `Method.natural_loss` and `Method.robust_loss`: the two parts of its training loss;
* ``awp_on_basic_view``: AWP's proxy on the basic view alone (DAJAT); ``forwards_own_networks``: its
  networks run in every step (LBGAT's natural classifier; LAS-AT's strategy network trains apart);
* `Method.epoch_start` and `Method.epoch_metrics`: told the epoch and learning rate, it adds numbers
  to metrics.jsonl.

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

import contextlib
import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from engine.config import ConfigError
from engine.distributed import gather_rows, is_distributed, rank, unwrap, world_size
from engine.method import MethodRegistry, TrainingMethod
from engine.method import check_method as engine_check_method
from losses import ikl_loss, jensen_shannon_loss, smoothed_cross_entropy, trades_kl_loss
from models import build_model
from models.registry import require_model

from . import las_at
from .attacks import Objective, attack_mode, per_sample_pgd, pgd
from .awp import AdversarialWeightPerturbation
from .config import ATConfig, AttackConfig

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
    awp_on_basic_view = False  # AWP's proxy loss on the basic view's rows only (DAJAT), not the whole batch
    forwards_own_networks = False  # its networks run on the clean images in every step (`forward`): LBGAT's

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__()
        self.aug_weight = cfg.data.aug_weight
        self.label_smoothing = cfg.label_smoothing
        self.label_smoothing_form = cfg.label_smoothing_form

    def forward(self, images: torch.Tensor):
        """The method's own networks on the clean training images (only for a method that has networks)."""
        raise NotImplementedError(f"method {self.name} has no networks of its own")

    def attack_objective(
        self, logits_natural: Optional[torch.Tensor], targets: torch.Tensor, prior_rows: Optional[torch.Tensor]
    ) -> Objective:
        return cross_entropy_objective(targets)

    def adversarial_examples(
        self,
        model: torch.nn.Module,
        x_natural: torch.Tensor,
        targets: torch.Tensor,
        objective: Objective,
        budget: Tuple[float, float, int],
        attack: AttackConfig,
    ) -> torch.Tensor:
        """The training attack's examples of the batch: PGD on ``objective`` through ``model`` (the attack's
        forward) with the epoch's ``budget`` (eps_t, step size, steps) and the ``attack`` settings. LAS-AT
        picks a budget per sample instead."""
        eps, step_size, steps = budget
        return pgd(
            model,
            x_natural,
            objective,
            eps=eps,
            step_size=step_size,
            steps=steps,
            norm=attack.norm,
            random_start=attack.random_start,
            eval_mode=attack.eval_mode,
            freeze_bn_stats=attack.freeze_bn_stats,
        )

    def epoch_start(self, epoch: int, lr: float) -> None:
        """Told by the trainer at the start of every epoch (1-based) with the model's learning rate."""

    def natural_loss(self, logits_natural: torch.Tensor, targets: torch.Tensor, smoothed: bool = True) -> torch.Tensor:
        """The clean-image term (only for methods that forward the clean images): cross-entropy,
        label-smoothed by ``label_smoothing`` in the form ``label_smoothing_form`` (`smoothed_cross_entropy`:
        Wang et al.'s uniform, DAJAT's off_target) unless ``smoothed`` is false (AWP's proxy)."""
        smoothing = self.label_smoothing if smoothed else 0.0
        return smoothed_cross_entropy(logits_natural, targets, smoothing, self.label_smoothing_form)

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

    def _natural(self, logits_natural, targets, like: torch.Tensor, smoothed: bool = True) -> torch.Tensor:
        if logits_natural is None:
            return like.new_zeros(())
        return self.natural_loss(logits_natural, targets, smoothed)

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
        dual-view batch, and no aug_weight, as the reference's AWP code); the same on one view. Its
        clean-image term is never label-smoothed (DAJAT's utils_awp.py; the other references with AWP
        smooth nothing)."""
        robust = self._robust_rows(logits_adv, logits_natural, targets, prior_rows, slice(None))
        return self._natural(logits_natural, targets, robust, smoothed=False) + robust


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

    def natural_loss(self, logits_natural, targets, smoothed=True):
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
    forwards_own_networks = True
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


@register("dajat")
class DAJAT(TRADES):
    r"""DAJAT (Addepalli et al., NeurIPS 2022): TRADES on the basic view and on each augmented view of the
    images, averaged, and a Jensen-Shannon term tying the clean predictions of all views together:

    .. math::

        \frac{1}{V} \sum_{v=1}^{V} \Big( \mathrm{CE}_{ls}(o^v_{nat}, y)
        + \beta\, \mathrm{KL}\big(\mathrm{softmax}(o^v_{nat}) \,\|\, \mathrm{softmax}(o^v_{adv})\big) \Big)
        + \lambda_{JS}\, \mathrm{JS}\big(\mathrm{softmax}(o^1_{nat}), \dots, \mathrm{softmax}(o^V_{nat})\big)

    (`jensen_shannon_loss`; val-iisc/DAJAT ``train_DAJAT.py``), with beta ``trades.beta``, lambda
    ``dajat.js_weight``, the clean CE label-smoothed as ``label_smoothing`` says. Each view is attacked by
    TRADES' KL attack with the same budget, the augmented ones through their own BatchNorms
    (``model.view_batchnorm``); AWP's proxy loss (plain CE + beta KL) sees the basic view only.
    """

    awp_on_basic_view = True

    @classmethod
    def check(cls, cfg: ATConfig) -> None:
        if cfg.data.views() < 2:
            raise ConfigError(
                f"method dajat trains on augmented views of each image, and data.augment is {cfg.data.augment} "
                "(one view): use data.augment=autoaug (DAJAT: data.augmented_views=2)"
            )
        if cfg.data.aug_weight != 1.0:
            raise ConfigError(
                f"config key 'data.aug_weight' ({cfg.data.aug_weight}) is not used by method dajat, which averages "
                "its views' TRADES terms: set data.aug_weight=1"
            )

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.js_weight = cfg.dajat.js_weight

    def loss(self, logits_adv, logits_natural, targets, prior_rows, basic_size, own_outputs=None):
        views = [slice(start, start + basic_size) for start in range(0, len(targets), basic_size)]
        natural = sum(self.natural_loss(logits_natural[rows], targets[rows]) for rows in views) / len(views)
        robust = sum(self._robust_rows(logits_adv, logits_natural, targets, None, rows) for rows in views) / len(views)
        robust = robust + self.js_weight * jensen_shannon_loss(*(logits_natural[rows] for rows in views))
        return StepLoss(
            natural + robust, natural.detach(), robust.detach(), logits_adv.detach(), logits_natural.detach()
        )


@register("las_at")
class LASAT(PGDAT):
    r"""LAS-AT (Jia et al., CVPR 2022), its LAS-AWP recipe: PGD-AT's loss :math:`\mathrm{CE}(f(x'), y)` on examples
    whose attack a strategy network picks per sample (`adv_training.las_at`: an epsilon, a number of steps and
    a step size from ``las_at.*``), the perturbation then clipped to ``attack.epsilon`` (their 8/255 clip).
    Every ``las_at.interval`` steps, before the batch's attack, the strategy network takes one REINFORCE step
    on the batch (`las_at` has the reward). The strategy network, its optimiser, the step counter and the
    sampling generator are the method's state (last.pt), and it trains with its own optimiser, not the model's.
    Under several processes every process runs the strategy on the whole global batch (gathered), with the
    same sampling numbers, so the decisions and the update are those of one process.
    """

    @classmethod
    def check(cls, cfg: ATConfig) -> None:
        if cfg.attack.norm != "linf":
            raise ConfigError(
                "method las_at attacks in l_inf (its choices are in /255 of a pixel): use attack.norm=linf"
            )
        if cfg.attack.eps_ramp:
            raise ConfigError(
                "config key 'attack.eps_ramp' ramps the schedule's budget, which method las_at does not use (its "
                "strategy draws each budget; attack.epsilon is the clip radius): set attack.eps_ramp=false"
            )
        for key in ("epsilons", "steps", "step_sizes"):
            if not getattr(cfg.las_at, key):
                raise ConfigError(f"config key 'las_at.{key}' is empty: the strategy network needs at least one choice")
        if cfg.data.views() > 1:
            raise ConfigError(
                f"method las_at takes one view of each image, and data.augment is {cfg.data.augment}: use data.augment=basic"
            )

    def __init__(self, cfg: ATConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        self.settings = cfg.las_at
        self.choices = {"epsilon": cfg.las_at.epsilons, "steps": cfg.las_at.steps, "step_size": cfg.las_at.step_sizes}
        self.strategy = las_at.StrategyNetwork(self.choices)
        self.policy_optimizer = torch.optim.SGD(
            self.strategy.parameters(),
            lr=cfg.las_at.policy_lr,
            momentum=cfg.las_at.policy_momentum,
            weight_decay=cfg.las_at.policy_weight_decay,
        )
        self.base_lr, self.lr = cfg.optim.lr, cfg.optim.lr
        self.weight_decay, self.momentum = cfg.optim.weight_decay, cfg.optim.momentum
        self.awp_gamma = cfg.awp.gamma if cfg.awp.enabled else 0.0
        self.awp_warmup, self.awp_proxy_lr = cfg.awp.warmup, cfg.awp.proxy_lr
        self.epoch, self.steps_taken = 1, 0
        self.sampling = torch.Generator().manual_seed(cfg.seed)  # the same numbers on every process
        self._sums: Dict[str, Tuple[float, int]] = {}
        self.last_actions: Dict[str, torch.Tensor] = {}

    def parameter_groups(self, weight_decay, batchnorm_weight_decay=True):
        return []  # the strategy network trains with its own optimiser, by REINFORCE

    def epoch_start(self, epoch, lr):
        """Their policy learning rate follows the model's piecewise schedule (x0.1, x0.01 with it)."""
        self.epoch, self.lr = epoch, lr
        for group in self.policy_optimizer.param_groups:
            group["lr"] = self.settings.policy_lr * lr / self.base_lr
        self._sums = {}

    def _uniforms(self, count: int) -> torch.Tensor:
        """Numbers in [0, 1) for the decisions of ``count`` samples, from the method's generator."""
        return torch.rand((count, len(las_at.HEADS)), generator=self.sampling)

    def _start_noise(self, like: torch.Tensor) -> torch.Tensor:
        """A random start (uniform in [-1, 1], shaped as ``like``) from the method's generator."""
        return (2 * torch.rand(like.shape, generator=self.sampling) - 1).to(like)

    def adversarial_examples(self, model, x_natural, targets, objective, budget, attack):
        sizes = self._shares(len(targets), targets.device)
        x_all, targets_all = gather_rows(x_natural, sizes), gather_rows(targets, sizes)  # the global batch
        offset = sum(sizes[: rank()]) if sizes else 0
        self.steps_taken += 1
        if self.steps_taken % self.settings.interval == 0:  # their curr_step counts from 1: batch N, 2N, ...
            with torch.autocast(x_natural.device.type, enabled=False):  # REINFORCE and the look-ahead in float32
                self._update_strategy(unwrap(model), x_all.float(), targets_all)
            self._broadcast_strategy()
        was_training = self.strategy.training
        self.strategy.eval()  # their target attack samples with the strategy network in eval mode
        with torch.no_grad():
            logits = self.strategy(x_all)
        self.strategy.train(was_training)
        actions = las_at.sample_actions(logits, self._uniforms(len(targets_all)).to(x_all.device))
        self.last_actions = actions  # the global batch's decisions, for inspection
        eps, step_size, steps = las_at.budgets(actions, self.choices)
        rows = slice(offset, offset + len(targets))
        x_adv = per_sample_pgd(
            model,
            x_natural,
            objective,
            eps=eps[rows],
            step_size=step_size[rows],
            steps=steps[rows],
            start_eps=self.settings.reward_epsilon,  # their start: uniform within 8/255, whatever was drawn
            start_noise=self._start_noise(x_all)[rows],
        )
        self._add(sampled_eps=float(eps.mean()) * 255, sampled_steps=float(steps.float().mean()))
        delta = (x_adv - x_natural).clamp(-attack.epsilon, attack.epsilon)  # their clip to 8/255
        return (x_natural + delta).clamp(0.0, 1.0)

    @staticmethod
    def _shares(local_rows: int, device: torch.device) -> Optional[List[int]]:
        """Every process's rows of the global batch (None in one process)."""
        if not is_distributed():
            return None
        return [int(count) for count in gather_rows(torch.tensor([local_rows], device=device), [1] * world_size())]

    def _broadcast_strategy(self) -> None:
        """Rank 0's strategy network and optimiser state on every process: each computes the same update, but
        a GPU's nondeterministic kernels would let them drift apart."""
        if not is_distributed():
            return
        momentum = [
            state["momentum_buffer"]
            for state in self.policy_optimizer.state.values()
            if state.get("momentum_buffer") is not None
        ]
        for tensor in [*self.strategy.state_dict().values(), *momentum]:
            torch.distributed.broadcast(tensor, src=0)

    def _update_strategy(self, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
        """One REINFORCE step of the strategy network on the batch (`las_at`)."""
        self.strategy.train()
        logits = self.strategy(x)
        actions = las_at.sample_actions(logits, self._uniforms(len(targets)).to(x.device))
        eps, step_size, steps = las_at.budgets(actions, self.choices)
        x_adv = per_sample_pgd(
            model,
            x,
            cross_entropy_objective(targets),
            eps=eps,
            step_size=step_size,
            steps=steps,
            start_eps=self.settings.reward_epsilon,
            start_noise=self._start_noise(x),
        )  # not clipped: the sampled budgets, as their Get_reward
        reward, parts = las_at_reward(self, model, x, x_adv, targets)
        loss = las_at.policy_loss(logits, actions, reward)
        self.policy_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.strategy.parameters(), self.settings.clip_grad_norm)
        self.policy_optimizer.step()
        self._add(reward=reward, **parts)

    def _add(self, **values: float) -> None:
        """Running means of the epoch, for `epoch_metrics`."""
        for name, value in values.items():
            total, count = self._sums.get(name, (0.0, 0))
            self._sums[name] = (total + value, count + 1)

    def epoch_metrics(self):
        return {f"las_at_{name}": total / count for name, (total, count) in self._sums.items() if count}

    def get_extra_state(self):
        return {
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "steps_taken": self.steps_taken,
            "sampling": self.sampling.get_state(),
        }

    def set_extra_state(self, state):
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self.sampling.set_state(state["sampling"])


def las_at_reward(method: LASAT, model, x, x_adv, targets) -> Tuple[float, Dict[str, float]]:
    """LAS-AT's reward of the sampled attacks (their ``Get_reward``): the target's CE on their examples, clamped
    to [0, 10], plus the robust and clean accuracy of a copy of the target after one step on them."""
    s = method.settings
    with attack_mode(model, eval_mode=True), torch.no_grad():
        attack_loss = F.cross_entropy(model(x_adv), targets).clamp(0.0, 10.0)
    ahead = copy.deepcopy(model)
    ahead.train()
    optimizer = torch.optim.SGD(
        ahead.parameters(), lr=method.lr, momentum=method.momentum, weight_decay=method.weight_decay
    )
    use_awp = method.awp_gamma > 0 and method.epoch >= method.awp_warmup
    awp = (
        AdversarialWeightPerturbation(ahead, gamma=method.awp_gamma, proxy_lr=method.awp_proxy_lr) if use_awp else None
    )
    perturbation = awp.compute(lambda proxy: F.cross_entropy(proxy(x_adv), targets)) if use_awp else None
    with awp.perturbed(perturbation) if use_awp else contextlib.nullcontext():
        loss = smoothed_cross_entropy(ahead(x_adv), targets, s.lookahead_label_smoothing, "off_target")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    best, best_loss = x, None
    for _ in range(s.reward_restarts):  # their attack_pgd: each sample's highest-loss restart, the copy in train mode
        x_pgd = per_sample_pgd(
            ahead,
            x,
            cross_entropy_objective(targets),
            eps=x.new_full((len(x),), s.reward_epsilon),
            step_size=x.new_full((len(x),), s.reward_step_size),
            steps=torch.full((len(x),), s.reward_steps, device=x.device),
            start_eps=s.reward_epsilon,
            start_noise=method._start_noise(x),
            eval_mode=False,
        )
        with torch.no_grad():
            losses = F.cross_entropy(ahead(x_pgd), targets, reduction="none")
        if best_loss is None:
            best, best_loss = x_pgd, losses
        else:
            higher = losses >= best_loss
            best = torch.where(higher.view(-1, *([1] * (x.dim() - 1))), x_pgd, best)
            best_loss = torch.where(higher, losses, best_loss)
    ahead.eval()
    with torch.no_grad():
        robust = (ahead(best).argmax(1) == targets).double().mean()
        clean = (ahead(x).argmax(1) == targets).double().mean()
    parts = {"attack_loss": float(attack_loss), "robust": float(robust), "clean": float(clean)}
    reward = parts["attack_loss"] + s.robust_weight * parts["robust"] + s.clean_weight * parts["clean"]
    return reward, parts
