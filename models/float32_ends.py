"""Under bf16 autocast the stem convolution and the classifier head still run in float32.

Under ``torch.autocast(dtype=torch.bfloat16)`` a convolution rounds its input to bf16,
whose steps are 1/256 on [0.5, 1): the image itself. Adversarial training ramps its budget
up from eps = 8/255 / 200 per epoch, far below that step for the first epochs, so the stem
would see most perturbed pixels rounded back to their clean values. The classifier head
would likewise hand the losses bf16 logits (steps of 1/16 at |z| in [8, 16)), noise that
the beta-weighted wMSE of the logit gaps multiplies. Both layers are cheap (three input
channels; one matrix product), so `build_model` gives every architecture a float32 stem
and head (`keep_ends_in_float32`); the layers between them keep bf16. "float32" is the
process's float32 setting: a bf16 run of the trainers turns TF32 on for what runs outside
autocast, so on an Ampere or later GPU these two layers take TF32 operands (10 mantissa
bits: 8 times finer than bf16's; measured in the README's "Precision").

The swapped layers are subclasses of ``nn.Conv2d`` and ``nn.Linear`` holding the very same
parameters under the same names, so state dicts, checkpoints and published weights are
unchanged. Only under autocast (enabled for the input's device type) do they cast to float32
(and return float32); without autocast they run the plain layers' own forward, in the model's
dtype, so a model turned to float64, float16 or bfloat16 computes exactly what the plain
architecture computes in that dtype.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for device types, such as meta, that have none)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


class Float32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes in float32 under autocast (the network's stem); the plain
    ``nn.Conv2d`` in the module's own dtype otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _autocast_on(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return self._conv_forward(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


class Float32Linear(nn.Linear):
    """``nn.Linear`` that computes in float32 under autocast (the classifier head); the plain
    ``nn.Linear`` in the module's own dtype otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _autocast_on(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


def _float32_like(layer: nn.Module) -> nn.Module:
    """A float32 twin of ``layer`` that holds ``layer``'s own parameters (nothing is copied)."""
    if isinstance(layer, nn.Conv2d):
        twin = Float32Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device="meta",
        )
    else:
        twin = Float32Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    twin.weight = layer.weight
    twin.bias = layer.bias
    twin.train(layer.training)
    return twin


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def stem_and_head(model: nn.Module) -> Tuple[Optional[str], Optional[str]]:
    """Names of the first ``nn.Conv2d`` and the last ``nn.Linear`` in registration order,
    which is the order of the forward pass in every architecture of the zoo (a test runs
    each one to check it): the layer that sees the image and the one that gives the logits."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def keep_ends_in_float32(model: nn.Module) -> nn.Module:
    """Swap ``model``'s stem convolution and classifier head for their float32 twins, in place."""
    for name in stem_and_head(model):
        if name is not None and type(model.get_submodule(name)) in (nn.Conv2d, nn.Linear):
            _replace(model, name, _float32_like(model.get_submodule(name)))
    return model
