"""Loading published and self-made checkpoints into registry models.

Handles the wrappers the reference code bases save: a plain state dict,
``{"model": sd}`` (mdistiller), ``{"state_dict": sd}`` (RobustBench, TRADES
derivatives), ``{"model_state_dict": sd}`` (Wang et al. 2023), and the
``module.`` / ``module.0.`` prefixes of ``nn.DataParallel`` (around an
``nn.Sequential``).  Files are read by `engine.file_io.load_file`
(``weights_only=True``): a pickle that would run code is refused, never executed.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Mapping, Union

import torch
import torch.nn as nn

from engine.file_io import CheckpointError, load_file, require_finite

_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_PREFIXES = ("module.0.", "module.encoder.", "module.")  # module.encoder.: the DKL authors' ImageNet-LT DDAModel
# RobustBench's WideResNet(sub_block1=True) carries a second copy of block1
# that forward never uses; a last.pt of a run with model.view_batchnorm (DAJAT) carries the augmented
# views' BatchNorms (engine.view_batchnorm), which the plain architecture evaluates without.
_UNUSED_KEY = re.compile(r"^sub_block\d*\.|(^|\.)augmented_view_bn\.")
_SHOW = 5


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not fit the architecture."""


def extract_state_dict(obj: object) -> Dict[str, torch.Tensor]:
    """Unwrap the container formats listed in the module docstring."""
    for _ in range(3):  # wrappers are at most nested a couple of levels
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"no state dict found in checkpoint (expected tensors, or one of {list(_WRAPPER_KEYS)}); got {found}"
    )


def _strip_prefix(state: Dict[str, torch.Tensor], model_keys) -> Dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _drop_owned_buffers(model: nn.Module, state: Dict[str, torch.Tensor], persistent, arch: str) -> None:
    """Handle checkpoint entries for the model's non-persistent buffers.

    Some ports of the DeepMind WideResNet saved the normalisation mean/std;
    ours keeps them out of the state dict.  Equal values are dropped,
    different ones mean the model was built for another dataset.
    """
    for name, buf in model.named_buffers():
        if name in persistent or name not in state:
            continue
        saved = state.pop(name)
        if saved.numel() != buf.numel() or not torch.allclose(saved.flatten().float(), buf.flatten().float()):
            raise CheckpointMismatchError(
                f"checkpoint {name!r} = {saved.flatten().tolist()} differs from {arch}'s "
                f"{buf.flatten().tolist()}; build the model with the matching dataset= or mean=/std=."
            )


def _describe(model: nn.Module) -> str:
    arch = type(model).__name__
    name = getattr(model, "arch_name", None)
    return f"{arch} (registry name {name!r})" if name else arch


def _listing(label: str, items) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")
    return f"\n  {len(items)} {label}: {shown}"


def load_weights(model: nn.Module, path_or_state: Union[str, os.PathLike, Mapping]) -> nn.Module:
    """Load a checkpoint file or state dict into ``model`` strictly; return it."""
    if isinstance(path_or_state, Mapping):
        source, obj = "the given state dict", path_or_state
    else:
        source, obj = str(path_or_state), load_file(path_or_state, map_location="cpu")
    try:
        return _load_state(model, extract_state_dict(obj), source)
    except CheckpointError as error:
        if source in str(error):
            raise
        raise type(error)(f"{source}: {error}") from None


def _load_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> nn.Module:
    arch = _describe(model)
    expected = model.state_dict()
    state = _strip_prefix(state, expected.keys())
    state = {k: v for k, v in state.items() if not (_UNUSED_KEY.search(k) and k not in expected)}
    _drop_owned_buffers(model, state, expected.keys(), arch)

    # BatchNorm fills a missing counter itself (state dicts from PyTorch<0.4.1).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in checkpoint vs {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        message = f"{source} does not fit {arch}:"
        if missing:
            message += _listing("missing key(s)", missing)
        if unexpected:
            message += _listing("unexpected key(s)", unexpected)
        if shapes:
            message += _listing("shape mismatch(es)", shapes)
        message += "\nCheck that --arch, num_classes and dataset match the checkpoint."
        raise CheckpointMismatchError(message)
    require_finite(state, source)
    model.load_state_dict(state, strict=True)
    return model
