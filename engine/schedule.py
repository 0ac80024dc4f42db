"""Learning-rate schedules as pure functions of the (1-based) epoch."""
import math
from typing import Sequence


def learning_rate(
    epoch: int,
    *,
    base_lr: float,
    epochs: int,
    schedule: str,
    warmup_epochs: int = 0,
    milestones: Sequence[int] = (),
    decay: float = 0.1,
) -> float:
    """The learning rate of ``epoch`` (1, 2, ..., epochs), set once at the start of the epoch.

    * warmup: ``base_lr * epoch / warmup_epochs`` while ``epoch < warmup_epochs``;
    * ``cosine`` (the IKL-AT reference): ``base_lr * (1 + cos(pi * (epoch - w) / (epochs - w + 1))) / 2``,
      so the last epoch keeps a small positive rate;
    * ``cosine_trades`` (the reference's TRADES script): ``base_lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2``,
      the full rate at epoch 1 (warmup as above);
    * ``step`` (mdistiller's ``LR_DECAY_STAGES``): ``base_lr * decay ** k`` where k counts the
      milestones strictly below ``epoch``.
    """
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / (epochs - warmup_epochs + 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "cosine_trades":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "step":
        return base_lr * decay ** sum(epoch > m for m in milestones)
    raise ValueError(f"unknown schedule '{schedule}'; use cosine, cosine_trades or step")
