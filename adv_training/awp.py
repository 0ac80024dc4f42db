r"""Adversarial Weight Perturbation (AWP, Wu et al., NeurIPS 2020), as the reference's TradesAWP.

Each training step perturbs the weights in the direction that increases the training
loss, takes the optimiser step at the perturbed point, and removes the perturbation:

.. math::

    v_l = \frac{\|w_l\|}{\|\tilde w_l - w_l\| + 10^{-20}} (\tilde w_l - w_l), \qquad
    \tilde w = w + \eta\, \nabla_w L(w)

where :math:`\tilde w` is one plain SGD step of a proxy copy of the model on :math:`-L`
(ascent on the method's own training loss ``L``), and ``l`` runs over the parameters
whose name contains ``weight`` and that have more than one dimension (convolution and
linear weights; BatchNorm's affine weights and all biases are not perturbed). The model
is then trained at :math:`w + \gamma v` and the step is applied to :math:`w`.

Since :math:`\tilde w_l - w_l = \eta\, g_l`, the proxy learning rate cancels:
:math:`v_l = \|w_l\|\, g_l / \|g_l\|` for any :math:`\eta > 0` (up to the 1e-20 guard).
It only matters when it is 0, which gives no perturbation. A proxy is used, rather than
the model itself, so that the extra forward pass in train mode does not touch the
model's BatchNorm running statistics, parameters or gradients.

Pass the plain module (not a DistributedDataParallel wrapper), after moving it to its
device: the proxy is a deep copy made at construction.

Usage (``loss_fn`` computes the method's training loss with whatever model it is given)::

    awp = AdversarialWeightPerturbation(model, gamma=0.005)
    diff = awp.compute(lambda net: training_loss(net, x_natural, x_adv, targets))
    with awp.perturbed(diff):
        loss = training_loss(model, x_natural, x_adv, targets)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

import contextlib
import copy
from typing import Callable, Dict, Iterator

import torch
import torch.nn as nn

from engine.distributed import all_reduce_mean_

# The reference's guard against a zero proxy step (0/0).
_EPS = 1e-20


def _is_perturbed(name: str, parameter: torch.Tensor) -> bool:
    """The reference's rule: a 'weight' with more than one dimension."""
    return "weight" in name and parameter.dim() > 1


class AdversarialWeightPerturbation:
    """Computes AWP's per-layer weight perturbation with a proxy model and applies it."""

    def __init__(self, model: nn.Module, gamma: float, proxy_lr: float = 0.01):
        """
        Args:
            model: the model being trained; its parameters are perturbed in place.
            gamma: the perturbation size relative to each layer's weight norm (the
                reference's ``--awp-gamma``, 0.005).
            proxy_lr: learning rate of the proxy's single SGD step. It cancels out of
                the perturbation (see the module docstring); any positive value works.
        """
        if not gamma >= 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        if not proxy_lr >= 0:
            raise ValueError(f"proxy_lr must be non-negative, got {proxy_lr}")
        self.model = model
        self.gamma = gamma
        self.proxy = copy.deepcopy(model)
        # Plain SGD (no momentum, no weight decay): one step from the model's weights is
        # exactly w + proxy_lr * grad of the loss, as in the reference.
        self.proxy_optimizer = torch.optim.SGD(self.proxy.parameters(), lr=proxy_lr)

    def compute(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One ascent step of the proxy on ``loss_fn(proxy)``; returns the perturbation.

        The proxy is reloaded from the model and put in train mode (as the reference does),
        ``loss_fn(proxy)`` must return the scalar training loss computed with the proxy,
        and the result maps parameter names of the model to :math:`v_l` (detached, same
        shape, dtype and device as the parameter).
        """
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        with torch.enable_grad():
            loss = loss_fn(self.proxy)
            if loss.dim() != 0:
                raise ValueError(f"the AWP loss must be a scalar, got shape {tuple(loss.shape)}")
            self.proxy_optimizer.zero_grad(set_to_none=True)
            (-loss).backward()
        # Under several processes every one applies the perturbation of the global batch's
        # gradient (the proxy is a plain module, so nothing else averages it).
        all_reduce_mean_(p.grad for p in self.proxy.parameters() if p.grad is not None)
        self.proxy_optimizer.step()
        # The proxy's gradients are not needed until the next compute(): free them.
        self.proxy_optimizer.zero_grad(set_to_none=True)

        proxy_parameters = dict(self.proxy.named_parameters())
        diff = {}
        with torch.no_grad():
            for name, weight in self.model.named_parameters():
                if not _is_perturbed(name, weight):
                    continue
                step = proxy_parameters[name] - weight
                diff[name] = step * (weight.norm() / (step.norm() + _EPS))
        return diff

    @contextlib.contextmanager
    def perturbed(self, diff: Dict[str, torch.Tensor]) -> Iterator[None]:
        """Add ``gamma * diff`` to the model's parameters for the body, then subtract it.

        The subtraction is in a ``finally`` block so that an exception inside (a NaN check,
        an interrupted step) never leaves the model perturbed. Subtracting, rather than
        restoring saved copies, keeps the optimiser step taken inside the body, which is
        how AWP trains: the gradient is taken at w + gamma*v and applied to w.
        """
        parameters = dict(self.model.named_parameters())
        unknown = sorted(set(diff) - set(parameters))
        if unknown:
            raise KeyError(f"the perturbation names parameters the model does not have: {unknown[:5]}")
        self._add(parameters, diff, self.gamma)
        try:
            yield
        finally:
            self._add(parameters, diff, -self.gamma)

    @staticmethod
    def _add(parameters: Dict[str, nn.Parameter], diff: Dict[str, torch.Tensor], coefficient: float) -> None:
        with torch.no_grad():
            for name, delta in diff.items():
                parameters[name].add_(delta, alpha=coefficient)

    def state_dict(self) -> dict:
        """The proxy optimiser's state, for resuming.

        The proxy's weights need no saving: `compute` reloads them from the model every time.
        """
        return {"proxy_optimizer": self.proxy_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.proxy_optimizer.load_state_dict(state["proxy_optimizer"])
