"""Input validation shared by the loss functions.

A loss that silently broadcasts a [B, C] against a [B, 1] tensor, or accepts integer
labels where logits were meant, trains for hours on the wrong objective. Every public
loss calls these checks first, so a wrong call fails at once with the shapes in the message.
"""

from typing import Callable, Optional

import torch

from engine import environment


def _require(condition: torch.Tensor, message: Callable[[], str]) -> Optional[torch.Tensor]:
    """Raise ValueError(message()) unless the 0-dim bool tensor ``condition`` holds, where the
    check can be made at once (`engine.environment.checks_on_host`: the CPU); else return it.

    Shape and dtype checks are free; value checks (signs, NaN) need the data. On an
    accelerator a Python check would stall the host on every call (these run at every attack
    step), and a device-side assert would kill the CUDA context with a message that surfaces
    later, leaving nothing savable. There the condition goes back to the caller, whose result
    becomes NaN when it fails (`nan_unless`); the training loops stop on a NaN loss with one
    line, last.pt intact.
    """
    if environment.checks_on_host(condition.device):
        if not bool(condition):
            raise ValueError(message())
        return None
    return condition


def nan_unless(valid: Optional[torch.Tensor], result: torch.Tensor) -> torch.Tensor:
    """``result``, or NaN where the device-side check ``valid`` (from `check_weights`) failed."""
    if valid is None:
        return result
    return torch.where(valid, result, torch.full_like(result, float("nan")))


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


def check_weights(weights: torch.Tensor, logits: torch.Tensor, name: str = "weights") -> Optional[torch.Tensor]:
    """``weights`` is a non-negative floating [B, C] tensor matching ``logits``.

    The sign (a NaN fails it too) is checked at once on the CPU; on an accelerator the 0-dim
    bool result comes back for `nan_unless` (see `_require`)."""
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
    return _require(
        (weights >= 0).all(),
        lambda: f"{name} must be non-negative, found a minimum of {weights.min().item():.4g}",
    )


def check_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    """``targets`` holds one integer class index per row of ``logits``.

    Their range is checked on the CPU only: on an accelerator it would cost a host read or a
    device-side assert at every call. There, out-of-range labels make cross entropy and
    indexing (the class prior's rows) assert on the device, while `dkd_loss` would return a
    wrong value (its masks stay in range); the training data cannot get there, as the
    datasets' labels are checked when they are opened."""
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
    if targets.numel() and environment.checks_on_host(targets.device):
        _require(
            ((targets >= 0) & (targets < num_classes)).all(),
            lambda: (
                f"targets must lie in [0, {num_classes - 1}], got values from {int(targets.min())} to "
                f"{int(targets.max())}"
            ),
        )


def check_positive(**named_values: float) -> None:
    for name, value in named_values.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            continue  # a learned temperature (CTKD's), positive by construction: a check would wait for the GPU
        if not bool(torch.as_tensor(value > 0).all()):
            raise ValueError(f"{name} must be positive, got {value}")
