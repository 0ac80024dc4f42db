"""Input validation shared by the loss functions.

A loss that silently broadcasts a [B, C] against a [B, 1] tensor, or accepts integer
labels where logits were meant, trains for hours on the wrong objective. Every public
loss calls these checks first, so a wrong call fails at once with the shapes in the message.
"""
from typing import Callable

import torch


def _require(condition: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ValueError(message()) unless the 0-dim bool tensor ``condition`` holds.

    Shape and dtype checks are free; value checks (signs, label ranges) need the data. On
    the CPU they are checked at once. On an accelerator a Python check would stall the
    host on every call (these run at every attack step), so the check is queued on the
    device instead (``torch._assert_async``): a violation still stops the run with the
    message, when the device reaches it.
    """
    if condition.device.type == "cpu":
        if not bool(condition):
            raise ValueError(message())
    else:
        torch._assert_async(condition, message())


def check_logits(**named_logits: torch.Tensor) -> None:
    """Each argument is a floating [B, C] tensor and all of them have the same shape."""
    shapes = {}
    for name, tensor in named_logits.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(
                f"{name} must be floating-point logits, got dtype {tensor.dtype} "
                f"(shape {tuple(tensor.shape)}); class labels go in `targets`"
            )
        if tensor.dim() != 2:
            raise ValueError(f"{name} must have shape [batch, classes], got {tuple(tensor.shape)}")
        shapes[name] = tuple(tensor.shape)
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"logit shapes differ: {listed}; they must be the same [batch, classes]")


def check_weights(weights: torch.Tensor, logits: torch.Tensor, name: str = "weights") -> None:
    """``weights`` is a non-negative floating [B, C] tensor matching ``logits``."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{name} must be floating-point, got dtype {weights.dtype}")
    if weights.dim() != 2 or weights.shape[1] != logits.shape[1]:
        raise ValueError(
            f"{name} must have shape [batch, {logits.shape[1]}] (one column per class), "
            f"got {tuple(weights.shape)} for logits of shape {tuple(logits.shape)}"
        )
    if weights.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name} has {weights.shape[0]} rows but the logits have {logits.shape[0]} samples "
            f"(weights {tuple(weights.shape)}, logits {tuple(logits.shape)})"
        )
    _require(
        (weights >= 0).all(),
        lambda: f"{name} must be non-negative" + (
            f", found a minimum of {weights.min().item():.4g}" if weights.device.type == "cpu" else ""
        ),
    )


def check_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    """``targets`` holds one integer class index per row of ``logits``."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(
            f"targets must have shape [{logits.shape[0]}], got {tuple(targets.shape)} "
            f"for logits of shape {tuple(logits.shape)}"
        )
    num_classes = logits.shape[1]
    if targets.numel():
        _require(
            ((targets >= 0) & (targets < num_classes)).all(),
            lambda: f"targets must lie in [0, {num_classes - 1}]" + (
                f", got values from {int(targets.min())} to {int(targets.max())}" if targets.device.type == "cpu" else ""
            ),
        )


def check_positive(**named_values: float) -> None:
    for name, value in named_values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
