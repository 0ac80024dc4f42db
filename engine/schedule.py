"""Learning-rate (and momentum) schedules as pure functions of the (1-based) epoch."""

import math
from typing import Optional, Sequence, Tuple

# Wang et al.'s ``cosinew`` (DM-Improves-AT, core/utils/train.py): torch's OneCycleLR with
# pct_start 0.025 over the epochs, stepped once per epoch, with OneCycleLR's defaults.
COSINEW_PCT_START = 0.025
ONE_CYCLE_DIV_FACTOR, ONE_CYCLE_FINAL_DIV_FACTOR = 25.0, 1e4
ONE_CYCLE_MOMENTUM = (0.85, 0.95)  # (base, max): momentum falls to base at the peak rate and rises back


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


def _one_cycle(step: int, total_steps: int, values: Tuple[float, float, float]) -> float:
    """OneCycleLR's two cosine phases at 0-based ``step``: values[0] -> values[1] until step
    ``pct_start * total - 1``, then values[1] -> values[2] at step ``total - 1``."""
    peak_step = COSINEW_PCT_START * total_steps - 1
    if step <= peak_step:
        return _cos_anneal(values[0], values[1], step / peak_step if peak_step > 0 else 1.0)
    return _cos_anneal(values[1], values[2], (step - peak_step) / (total_steps - 1 - peak_step))


def momentum(epoch: int, *, base_momentum: float, epochs: int, schedule: str) -> float:
    """SGD momentum of ``epoch``: ``base_momentum`` except for ``cosinew``, whose OneCycleLR cycles
    it from 0.95 down to 0.85 at the peak learning rate and back (it overrides the optimiser's)."""
    if schedule != "cosinew":
        return base_momentum
    low, high = ONE_CYCLE_MOMENTUM
    return _one_cycle(epoch - 1, epochs, (high, low, high))


def learning_rate(
    epoch: int,
    *,
    base_lr: float,
    epochs: int,
    schedule: str,
    warmup_epochs: int = 0,
    milestones: Sequence[int] = (),
    decay: float = 0.1,
    first_epoch_lr: Optional[float] = None,
) -> float:
    """The learning rate of ``epoch`` (1, 2, ..., epochs), set once at the start of the epoch.

    * warmup: ``base_lr * epoch / warmup_epochs`` while ``epoch < warmup_epochs``;
    * ``cosine`` (the IKL-AT reference): ``base_lr * (1 + cos(pi * (epoch - w) / (epochs - w + 1))) / 2``,
      so the last epoch keeps a small positive rate;
    * ``cosine_trades`` (the reference's TRADES script): ``base_lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2``,
      the full rate at epoch 1 (warmup as above);
    * ``step`` (mdistiller's ``LR_DECAY_STAGES``): ``base_lr * decay ** k`` where k counts the
      milestones strictly below ``epoch``;
    * ``cosinew`` (Wang et al.'s generated-data runs): torch's OneCycleLR stepped once per
      epoch (epoch e is step e - 1 of ``epochs``): a cosine rise from ``base_lr / 25`` to
      ``base_lr`` at step ``0.025 * epochs - 1`` (epoch 10 of 400), then a cosine fall to
      ``base_lr / 25 / 1e4`` at the last epoch; `momentum` cycles with it. No extra warm-up;
    * ``first_epoch_lr``, when given, is the rate of epoch 1 alone, whatever the schedule (LBGAT's
      one-epoch warm-up: 0.02, then 0.1).
    """
    if first_epoch_lr is not None and epoch == 1:
        return first_epoch_lr
    if schedule == "cosinew":
        start = base_lr / ONE_CYCLE_DIV_FACTOR
        return _one_cycle(epoch - 1, epochs, (start, base_lr, start / ONE_CYCLE_FINAL_DIV_FACTOR))
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / (epochs - warmup_epochs + 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "cosine_trades":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "step":
        return base_lr * decay ** sum(epoch > m for m in milestones)
    raise ValueError(f"unknown schedule '{schedule}'; use cosine, cosine_trades, step or cosinew")
