"""Input normalisation in front of a network that expects normalised images.

Adversarial training and AutoAttack keep images in [0, 1] pixel space (their budgets and clips
are in pixels), so a network trained on normalised inputs normalises them itself:

* `preprocessing` is the module the authors' AutoAttack eval.py puts in front of a checkpoint
  (``--preprocess 01 | meanstd | +-1``): ``nn.Sequential(preprocessing(...), net)``;
* `attach_preprocessing` gives a model that same normalisation without changing its state
  dict, for training (``model.preprocess`` of adversarial training): the `Normalize` module
  becomes a submodule whose buffers are not persistent, and a forward pre-hook passes the
  model's input through it. The hook holds no reference to the model, so ``copy.deepcopy``
  (AWP's proxy, the EMA, the epoch average's evaluation) copies it along, and it runs under
  torch.compile and DistributedDataParallel, which call the module. Its checkpoints are plain
  architecture state dicts, which eval.py loads with ``--preprocess meanstd``.

Only ``model(x)`` normalises: ``forward_features`` and other methods called directly do not.

The statistics are those of the authors' AT-AWP training scripts and eval.py (csdongxian/AWP
``AT_AWP/utils.py`` and ``train_cifar100.py``; ``auto_attacks/eval.py``).
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from engine.errors import UserError

MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": (
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    ),
}
PREPROCESSING = ("01", "meanstd", "+-1")
ATTRIBUTE = "preprocess"  # the submodule `attach_preprocessing` adds


class Normalize(nn.Module):
    """(x - mean) / std per channel, in front of a model that expects normalised images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def preprocessing(name: str, dataset: str) -> nn.Module:
    """The authors' --preprocess: ``01`` images as they are, ``meanstd`` CIFAR statistics, ``+-1`` 2x - 1."""
    if name == "01":
        return nn.Identity()
    if name == "meanstd":
        if dataset not in MEAN_STD:
            raise UserError(f"preprocess meanstd has no statistics for {dataset} (only {', '.join(MEAN_STD)}); use 01")
        return Normalize(*MEAN_STD[dataset])
    if name == "+-1":
        return Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    raise UserError(f"unknown preprocess {name!r}; choose one of: {', '.join(PREPROCESSING)}")


class _PreprocessInput:
    """The forward pre-hook: the module's first input through its `ATTRIBUTE` submodule. It keeps
    no reference to the module (the hook receives it), so a deep copy of the module works alike."""

    def __call__(self, module: nn.Module, args: tuple) -> Optional[tuple]:
        if not args:
            return None
        return (getattr(module, ATTRIBUTE)(args[0]), *args[1:])


def attach_preprocessing(model: nn.Module, name: str, dataset: str) -> nn.Module:
    """Make ``model(x)`` compute ``model(preprocessing(name, dataset)(x))``; returns ``model``.

    ``01`` leaves the model untouched. Otherwise the normalisation becomes the submodule
    ``model.preprocess`` (buffers not persistent: ``state_dict()`` keeps its keys) on the
    device and dtype of the model's first parameter, run by a forward pre-hook.
    """
    module = preprocessing(name, dataset)
    if isinstance(module, nn.Identity):
        return model
    if hasattr(model, ATTRIBUTE):
        raise ValueError(f"{type(model).__name__} already has an attribute {ATTRIBUTE!r}; attach preprocessing once")
    reference = next(model.parameters(), None)
    if reference is not None:
        module = module.to(device=reference.device, dtype=reference.dtype)
    model.add_module(ATTRIBUTE, module)
    model.register_forward_pre_hook(_PreprocessInput())
    return model


def attached_preprocessing(model: nn.Module) -> Optional[nn.Module]:
    """The normalisation `attach_preprocessing` gave ``model`` (None if none)."""
    module = getattr(model, ATTRIBUTE, None)
    return module if isinstance(module, Normalize) else None
