"""Parameter groups for the optimiser."""
from typing import Dict, List

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
