"""Trained networks loaded for use as fixed teachers: from a checkpoint file or torchvision's
published weights (fetched by name, their hash checked), frozen.

    teacher = load_frozen("ResNet34", 1000, dataset="imagenet", source="torchvision:IMAGENET1K_V1")
    teacher = load_frozen("resnet32x4", 100, dataset="cifar100", source="ckpt_epoch_240.pth")
    path = torchvision_weights_file("ResNet34", "IMAGENET1K_V1")   # in torch's hub cache, sha256 checked
"""

import re
from pathlib import Path

import torch
import torch.nn as nn

from engine.distributed import is_main_process
from engine.errors import UserError
from engine.file_io import sha256_file

from .registry import build_model
from .weights import load_weights


def torchvision_weights_file(arch: str, weights_name: str, key: str = "teacher.checkpoint") -> Path:
    """torchvision's published ``arch`` weights as a file in torch's hub cache, its hash checked.

    The file is fetched when missing, and its sha256 is compared with the prefix torchvision
    publishes in the file name whether or not it was just fetched, so that a replaced file in
    the cache is refused. It is then read like every checkpoint, by the safe reader
    (``weights_only``), never by torchvision's own loader (which unpickles freely). ``key`` is the
    config key that named the weights, for the messages.
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch.lower())[weights_name]
    except (ValueError, KeyError):
        raise UserError(
            f"{key}=torchvision:{weights_name} is not a torchvision weight of {arch}; "
            f"use e.g. torchvision:IMAGENET1K_V1 with ResNet18/34/50"
        ) from None
    filename = weights.url.rsplit("/", 1)[-1]
    published = re.search(r"-([a-f0-9]{8,})\.", filename)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                weights.url, str(path), hash_prefix=published and published.group(1), progress=is_main_process()
            )
        except Exception as error:  # no network, proxy, disk full, wrong hash: all end the same way
            raise UserError(
                f"could not fetch torchvision's {arch} {weights_name} weights ({type(error).__name__}: {error}); "
                f"download {weights.url} yourself and set {key}=<that file>"
            ) from None
    if published is not None:
        require_sha256_prefix(path, published.group(1))
    return path


def require_sha256_prefix(path: Path, prefix: str) -> None:
    """A `UserError` unless ``path``'s sha256 starts with ``prefix`` (what torchvision publishes)."""
    if not sha256_file(path).startswith(prefix):
        raise UserError(
            f"{path} does not match its published sha256 (which starts with {prefix}): the file "
            f"was replaced or damaged; delete it and run again to fetch it anew"
        )


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's gradient off (a fixed teacher); returns it."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_frozen(
    arch: str,
    num_classes: int,
    *,
    dataset: str,
    source: str,
    role: str = "teacher",
    key: str = "teacher.checkpoint",
    missing_hint: str = "",
) -> nn.Module:
    """``arch`` with the weights of ``source`` (a checkpoint file, or ``torchvision:WEIGHTS``), loaded
    strictly (`models.load_weights`), frozen; on the CPU. A `UserError` naming the ``role`` and the
    config ``key`` when the file is missing, followed by ``missing_hint`` (where to get it)."""
    model = build_model(arch, num_classes, dataset=dataset)
    if source.startswith("torchvision:"):
        load_weights(model, torchvision_weights_file(arch, source.split(":", 1)[1], key))
    elif not source or not Path(source).is_file():
        raise UserError(f"{role} checkpoint not found: '{source}' ({key}). {missing_hint}".rstrip())
    else:
        load_weights(model, source)
    return freeze(model)
