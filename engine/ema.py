r"""Weight averages: `ModelEMA`, updated every iteration, and `EpochAverage`, once per epoch.

`ModelEMA` is the in-training average.

This is the reference's ``exp_avgs`` (train_dkl_cifar100.py: start epoch
``150 * epochs // 200``, tau 0.9996), over the whole state dict:

.. math::

    \bar\theta \leftarrow
    \begin{cases}
        \text{unchanged} & e < e_0 \\
        \theta & e = e_0 \quad \text{(every iteration of that epoch)} \\
        (1 - \tau)\, \theta + \tau\, \bar\theta & e > e_0
    \end{cases}

for every floating-point entry (parameters and BatchNorm running statistics). Integer
buffers (``num_batches_tracked``) are counters, not weights, so they are copied.

With ``warmup_steps`` > 0 it is instead Wang et al.'s weight average (DM-Improves-AT,
``watrain.py``'s ``ema_update``), by the number ``t`` of updates so far (1, 2, ...):

.. math::

    \bar\theta \leftarrow d_t\, \bar\theta + (1 - d_t)\, \theta, \qquad
    d_t = \begin{cases} 0 & t < W \\ \min\big(\tau, \frac{1 + t - W}{10 + t - W}\big) & t \ge W \end{cases}

(a copy during the warm-up of ``W`` updates, then a decay that grows to tau), from
``start_epoch`` on. ``average_buffers=False`` averages the parameters only and copies the
buffers (BatchNorm statistics) from the model, as Wang et al.'s average shares the model's.

Copying throughout epoch ``e_0`` means the average starts from the weights at the end of
that epoch. The reference assigns the model's own tensors there (no copy), so its first
update of epoch ``e_0 + 1`` averages the current weights with themselves; here the copy
is a real one, so that update averages them with the end-of-epoch weights. Both give
weight 1 - tau to one extra step; with tau = 0.9996 the difference is negligible.
"""

import copy
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn


class ModelEMA:
    """An averaged copy of a model (``self.module``, in eval mode, without gradients)."""

    def __init__(
        self, model: nn.Module, tau: float, start_epoch: int, warmup_steps: float = 0.0, average_buffers: bool = True
    ):
        """
        Args:
            model: the model being trained (the plain module, not a DDP wrapper).
            tau: weight of the running average at each update (0.9996 in the reference).
            start_epoch: the first epoch that updates the average. Without warm-up, its
                iterations copy the model and averaging starts after it.
            warmup_steps: > 0 for Wang et al.'s schedule: copies for the first ``warmup_steps``
                updates, then the dynamic decay of the module's docstring.
            average_buffers: False copies the buffers instead of averaging them.
        """
        if not 0 <= tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        self.tau = float(tau)
        self.start_epoch = int(start_epoch)
        self.warmup_steps = float(warmup_steps)  # Wang et al.'s is 0.025 * epochs * steps per epoch, a float
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self._started = False
        self.steps = 0  # updates made, for the warm-up

        # Prepared once: which state entries are averaged and which are copied.
        state = self.module.state_dict()
        self._keys = tuple(state)
        averaged = {name for name, _ in self.module.named_parameters()} if not average_buffers else set(state)
        self._float_keys = [key for key, value in state.items() if value.is_floating_point() and key in averaged]
        self._other_keys = [key for key in state if key not in self._float_keys]

    @property
    def started(self) -> bool:
        """Whether the model has been copied at least once (the average is meaningful)."""
        return self._started

    def _states(self, model: nn.Module):
        # The state dicts are fetched at every update rather than cached: their tensors
        # share storage with the parameters and buffers, but `.to()` or assigning a
        # buffer replaces that storage and a cached list would silently go stale. Building
        # the two dicts costs far less than the training step it follows.
        current = model.state_dict()
        if tuple(current) != self._keys:
            missing = sorted(set(self._keys) - set(current))
            extra = sorted(set(current) - set(self._keys))
            raise ValueError(f"model does not match the EMA copy: missing {missing[:5]}, unexpected {extra[:5]}")
        return self.module.state_dict(), current

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        """Call once per iteration, after the optimiser step, with the current epoch."""
        if epoch < self.start_epoch:
            return
        self.steps += 1
        averaged, current = self._states(model)
        decay = self.decay(epoch)
        if decay == 0.0 or not self._started:
            # Also when no copy was ever taken (a run started or resumed later without EMA
            # state): averaging into the initial weights, as the reference would, is meaningless.
            torch._foreach_copy_(list(averaged.values()), list(current.values()))
            self._started = True
            return
        if self._float_keys:
            # lerp(avg, cur, 1 - d) = avg + (1 - d) (cur - avg) = (1 - d) cur + d avg
            torch._foreach_lerp_(
                [averaged[k] for k in self._float_keys], [current[k] for k in self._float_keys], 1.0 - decay
            )
        if self._other_keys:
            torch._foreach_copy_([averaged[k] for k in self._other_keys], [current[k] for k in self._other_keys])

    def decay(self, epoch: int) -> float:
        """The weight of the average in the update just counted (``self.steps``); 0 copies."""
        if self.warmup_steps <= 0:
            return 0.0 if epoch == self.start_epoch else self.tau
        if self.steps < self.warmup_steps:
            return 0.0
        since = self.steps - self.warmup_steps
        return min(self.tau, (1.0 + since) / (10.0 + since))

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "started": self._started, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self._started = bool(state["started"])
        self.steps = int(state.get("steps", 0))  # checkpoints written before the warm-up existed


class EpochAverage:
    r"""The reference's ``swa.py`` average of end-of-epoch weights, kept as the run goes.

    .. math::

        \bar\theta_{s} = \theta_{s}, \qquad
        \bar\theta_e = (1 - \tau)\, \theta_e + \tau\, \bar\theta_{e-1} \quad (e > s)

    over every floating-point entry of the state dict (BatchNorm statistics included, as
    the reference); integer entries (``num_batches_tracked``) keep the latest value. The
    reference computes this after training from 200 saved epoch files; adding each epoch's
    weights as it ends gives the same bits without them. ``adv_training.swa`` uses the same
    `add` on saved files, so there is one formula.
    """

    def __init__(self, tau: float):
        if not 0 <= tau < 1:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        self.tau = float(tau)
        self.average: Optional[Dict[str, torch.Tensor]] = None

    @torch.no_grad()
    def add(self, state: Mapping[str, torch.Tensor]) -> None:
        """Fold one epoch's state dict into the average (the first one is copied)."""
        if self.average is None:
            self.average = {key: value.detach().clone() for key, value in state.items()}
            return
        missing = sorted(set(self.average) - set(state))
        extra = sorted(set(state) - set(self.average))
        if missing or extra:
            raise ValueError(f"state does not match the average: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, value in state.items():
            if value.shape != self.average[key].shape:
                raise ValueError(
                    f"entry {key!r} has shape {tuple(value.shape)}, the average {tuple(self.average[key].shape)}"
                )
            if value.is_floating_point() or value.is_complex():
                # The reference's exact expression (not lerp), so the result matches it bit for bit.
                # A resumed average was read onto the CPU: it follows the weights to their device.
                self.average[key] = (1 - self.tau) * value.detach() + self.tau * self.average[key].to(value.device)
            else:
                self.average[key] = value.detach().clone()

    def state_dict(self) -> dict:
        return {"tau": self.tau, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.tau = float(state["tau"])
        self.average = state["average"]

    OLDER_CHECKPOINT_KEY = "swa"  # where last.pt held the average before the config section was epoch_average

    def state_from_older_checkpoint(self, checkpoint) -> Optional[dict]:
        """The average in a last.pt that held it under ``swa``."""
        return checkpoint.get(self.OLDER_CHECKPOINT_KEY)
