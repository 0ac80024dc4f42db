"""Class-wise global information for IKL: the mean tempered softmax of each class."""

from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._checks import check_positive, check_targets


class ClassPrior:
    r"""Per-class mean of softmax(logits / T) over the previous epoch.

    Row ``c`` of the prior used during epoch e is

    .. math::

        \bar p_c = \frac{1}{|\{i : y_i = c\}|} \sum_{i : y_i = c} \mathrm{softmax}(o_i / T)

    over the samples of epoch e - 1. Rows start uniform (1/C) for the first epoch. A
    class that received no sample during an epoch keeps its previous row (the reference
    divides 0 by 0 there and trains on NaN weights from then on).

    Usage, once per batch and once per epoch::

        weights = prior.rows(targets)            # [B, C], fed to ikl_loss(weights=...)
        prior.update(logits_natural.detach(), targets)
        ...
        prior.step()                             # at the end of the epoch

    Under ``torch.distributed`` the epoch's sums are all-reduced in `step`, so every
    rank ends the epoch with the same rows. `state_dict` holds the running sums too, so a
    run resumed from a mid-epoch checkpoint continues exactly.
    """

    def __init__(self, num_classes: int, temperature: float = 1.0):
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        check_positive(temperature=temperature)
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.prior = torch.full((num_classes, num_classes), 1.0 / num_classes)
        self.sums = torch.zeros(num_classes, num_classes)
        self.counts = torch.zeros(num_classes)

    @property
    def device(self) -> torch.device:
        return self.prior.device

    def to(self, device) -> "ClassPrior":
        self.prior = self.prior.to(device)
        self.sums = self.sums.to(device)
        self.counts = self.counts.to(device)
        return self

    def rows(self, targets: torch.Tensor) -> torch.Tensor:
        """The prior rows of the given classes, [B, C]; constants (no gradient)."""
        if not (isinstance(targets, torch.Tensor) and targets.dim() == 1):
            raise ValueError(f"targets must be a 1-D tensor of class indices, got {getattr(targets, 'shape', targets)}")
        return self.prior[targets.to(self.device)]

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate softmax(logits / T) of a batch into the sums of their classes."""
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] == self.num_classes):
            raise ValueError(
                f"logits must have shape [batch, {self.num_classes}], got {tuple(getattr(logits, 'shape', ()))}"
            )
        check_targets(targets, logits)
        probs = F.softmax(logits.detach().float() / self.temperature, dim=1).to(self.device)
        targets = targets.to(self.device)
        self.sums.index_add_(0, targets, probs)
        self.counts.index_add_(0, targets, torch.ones_like(targets, dtype=self.counts.dtype))

    @torch.no_grad()
    def step(self) -> None:
        """End of epoch: the accumulated means become the rows; the sums restart at zero."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            dist.all_reduce(self.counts)
        seen = self.counts > 0
        self.prior[seen] = self.sums[seen] / self.counts[seen].unsqueeze(1)
        self.sums.zero_()
        self.counts.zero_()

    def state_dict(self) -> Dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "prior": self.prior.detach().cpu().clone(),
            "sums": self.sums.detach().cpu().clone(),
            "counts": self.counts.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        expected = {"num_classes", "temperature", "prior", "sums", "counts"}
        if set(state) != expected:
            raise ValueError(f"ClassPrior state must have keys {sorted(expected)}, got {sorted(state)}")
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"ClassPrior state is for {state['num_classes']} classes, this prior has {self.num_classes}"
            )
        if state["temperature"] != self.temperature:
            raise ValueError(
                f"ClassPrior state was collected at temperature {state['temperature']}, "
                f"this prior uses {self.temperature}; resume with the same temperature"
            )
        for name in ("prior", "sums", "counts"):
            values = state[name]
            if not (torch.isfinite(values).all() and (values >= 0).all()):
                raise ValueError(
                    f"ClassPrior state holds {name} that are NaN, infinite or negative: the file is "
                    f"damaged, or was written by a run whose logits had become NaN"
                )
        device = self.device
        self.prior = state["prior"].to(device=device, dtype=self.prior.dtype).clone()
        self.sums = state["sums"].to(device=device, dtype=self.sums.dtype).clone()
        self.counts = state["counts"].to(device=device, dtype=self.counts.dtype).clone()

    def __repr__(self) -> str:
        return f"ClassPrior(num_classes={self.num_classes}, temperature={self.temperature})"
