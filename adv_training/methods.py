"""The training objectives: IKL-AT, TRADES, Madry PGD-AT, and standard training.

Each method is two small functions: the objective its attack maximises, and the loss
the model minimises. The same loss function is used for the training step and for the
AWP proxy step, so "the method's own loss" means exactly one piece of code.

Dual-view batches (data.augment = autoaug | cutout) hold the basic view in the first
``basic_size`` rows and the augmented view after it. The natural CE always covers both
views. The training step weights the augmented view's robust term by data.aug_weight;
AWP's proxy step takes one robust term over the whole doubled batch, i.e. its batch mean
(basic + augmented) / 2, and no aug_weight, as the reference's AWP code does.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from losses import ikl_loss, trades_kl_loss

from .attacks import ce_objective, ikl_objective, kl_objective
from .config import ATConfig


def attacks(method: str) -> bool:
    """Standard training is the one method without an inner maximisation (its x_adv is x)."""
    return method != "standard"


def needs_natural_logits(method: str) -> bool:
    """IKL and TRADES attack the distance to the natural prediction; PGD-AT attacks the label."""
    return method in ("ikl", "trades")


def attack_objective(
    cfg: ATConfig, logits_natural: Optional[torch.Tensor], targets: torch.Tensor, prior_rows: Optional[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    if cfg.method == "ikl":
        # The reference attacks with gamma = 1 whatever the training gamma is.
        return ikl_objective(logits_natural, alpha=cfg.attack.alpha, beta=cfg.attack.beta, weights=prior_rows)
    if cfg.method == "trades":
        return kl_objective(logits_natural)
    return ce_objective(targets)


def _robust_term(cfg: ATConfig, logits_adv, logits_nat, targets, prior_rows) -> torch.Tensor:
    if cfg.method == "ikl":
        return ikl_loss(
            logits_adv,
            logits_nat,
            alpha=cfg.ikl.alpha,
            beta=cfg.ikl.beta,
            gamma=cfg.ikl.gamma,
            temperature=cfg.ikl.temperature,
            weights=prior_rows,
        )
    if cfg.method == "trades":
        return cfg.trades.beta * trades_kl_loss(logits_adv, logits_nat)
    return F.cross_entropy(logits_adv, targets)  # PGD-AT; standard training, where x_adv is x


def training_loss(
    cfg: ATConfig,
    model: torch.nn.Module,
    x_natural: torch.Tensor,
    x_adv: torch.Tensor,
    targets: torch.Tensor,
    prior_rows: Optional[torch.Tensor],
    basic_size: int,
    *,
    split_views: bool = True,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss to minimise and its parts (detached), from two forwards as the reference does.

    ``split_views=False`` is AWP's proxy loss: on dual-view batches, one robust term over
    both views instead of basic + aug_weight * augmented (the same on single-view batches).

    Returns ``loss`` and ``parts`` with ``natural`` (CE on clean inputs; 0 for PGD-AT),
    ``robust`` (the method's robust term), ``logits_adv`` and ``logits_nat`` (None for PGD-AT).
    """
    logits_adv = model(x_adv)
    logits_nat = model(x_natural) if needs_natural_logits(cfg.method) else None

    def robust_term(rows: slice) -> torch.Tensor:
        def part(tensor):
            return None if tensor is None else tensor[rows]

        return _robust_term(cfg, logits_adv[rows], part(logits_nat), targets[rows], part(prior_rows))

    if split_views and basic_size < len(targets):
        robust = robust_term(slice(0, basic_size)) + cfg.data.aug_weight * robust_term(slice(basic_size, None))
    else:
        robust = robust_term(slice(None))
    natural = F.cross_entropy(logits_nat, targets) if logits_nat is not None else robust.new_zeros(())
    loss = natural + robust
    parts = {
        "natural": natural.detach(),
        "robust": robust.detach(),
        "logits_adv": logits_adv.detach(),
        "logits_nat": logits_nat.detach() if logits_nat is not None else None,
    }
    return loss, parts
