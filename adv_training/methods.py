"""The training objectives: IKL-AT, TRADES, Madry PGD-AT, and standard training.

Each method is two small functions: the objective its attack maximises, and the loss
the model minimises. The same loss function is used for the training step and for the
AWP proxy step, so "the method's own loss" means exactly one piece of code.

Dual-view batches (data.augment = autoaug | cutout) hold the basic view in the first
``basic_size`` rows and the augmented view after it; the robust term of the augmented
view is weighted by data.aug_weight, the natural CE covers both views (as the reference).
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
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss to minimise and its parts (detached), from two forwards as the reference does.

    Returns ``loss`` and ``parts`` with ``natural`` (CE on clean inputs; 0 for PGD-AT),
    ``robust`` (the method's robust term), ``logits_adv`` and ``logits_nat`` (None for PGD-AT).
    """
    logits_adv = model(x_adv)
    logits_nat = model(x_natural) if needs_natural_logits(cfg.method) else None

    def split(tensor):
        return (None, None) if tensor is None else (tensor[:basic_size], tensor[basic_size:])

    adv_basic, adv_augmented = split(logits_adv)
    nat_basic, nat_augmented = split(logits_nat)
    targets_basic, targets_augmented = split(targets)
    rows_basic, rows_augmented = split(prior_rows)
    robust = _robust_term(cfg, adv_basic, nat_basic, targets_basic, rows_basic)
    if basic_size < len(targets):
        robust = robust + cfg.data.aug_weight * _robust_term(cfg, adv_augmented, nat_augmented, targets_augmented, rows_augmented)
    natural = F.cross_entropy(logits_nat, targets) if logits_nat is not None else robust.new_zeros(())
    loss = natural + robust
    parts = {
        "natural": natural.detach(),
        "robust": robust.detach(),
        "logits_adv": logits_adv.detach(),
        "logits_nat": logits_nat.detach() if logits_nat is not None else None,
    }
    return loss, parts
