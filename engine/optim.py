"""Parameter groups for the optimiser."""

from typing import Dict, List

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def weight_decay_groups(model: nn.Module, weight_decay: float, batchnorm_weight_decay: bool = True) -> List[Dict]:
    """``model``'s parameters as optimiser groups: one group with ``weight_decay`` on everything,
    or, with ``batchnorm_weight_decay=False``, the BatchNorm weights and biases in a second group
    without decay (Wang et al.'s watrain.py; every other parameter, the classifier's bias
    included, keeps it)."""
    if batchnorm_weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    batchnorm = {id(p) for module in model.modules() if isinstance(module, _BatchNorm) for p in module.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) not in batchnorm], "weight_decay": weight_decay},
        {"params": [p for p in model.parameters() if id(p) in batchnorm], "weight_decay": 0.0},
    ]


def sgd(
    groups: List[Dict], *, lr: float, momentum: float, nesterov: bool, implementation: str, device: torch.device
) -> torch.optim.SGD:
    """torch's SGD over ``groups`` with the update kernel ``implementation`` asks for.

    ``fused`` updates every parameter in one kernel, ``foreach`` in a few per group,
    ``for_loop`` one parameter at a time; all compute the same update (the fused kernel
    rounds the few multiply-adds in another order, within 1e-6 relative). ``auto`` takes
    fused on CUDA and torch's own default elsewhere, so CPU runs keep their exact numbers.
    """
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=nesterov, **kernel_options(implementation, device)
    )


def kernel_options(implementation: str, device: torch.device) -> Dict:
    """SGD's ``fused`` and ``foreach`` for ``implementation`` on ``device``."""
    if implementation == "auto":
        implementation = "fused" if device.type == "cuda" else "default"
    return {
        "fused": {"fused": True, "foreach": None},
        "foreach": {"fused": None, "foreach": True},
        "for_loop": {"fused": None, "foreach": False},
        "default": {"fused": None, "foreach": None},
    }[implementation]


def use_kernel(optimizer: torch.optim.Optimizer, implementation: str, device: torch.device) -> None:
    """Set the update kernel again after ``optimizer.load_state_dict``, which brings back the saved
    groups' ``fused``/``foreach`` (a run resumed with another optim.implementation would keep the old)."""
    for group in optimizer.param_groups:
        group.update(kernel_options(implementation, device))
