"""The weight initialisation shared by the reference architectures."""

import math
from typing import Optional

import torch.nn as nn


def init_he_fan_out(model: nn.Module, *, linear_std: Optional[float] = None, zero_linear_bias: bool = True) -> None:
    """He-normal initialisation over fan-out, as TRADES' WRN, DeepMind's WRN and mdistiller use.

    Convolutions: weight ~ N(0, sqrt(2 / (k_h * k_w * out_channels))), bias 0. BatchNorm:
    weight 1, bias 0. Linear: weight ~ N(0, linear_std) when given (mdistiller's VGG and
    MobileNetV2), else PyTorch's default; bias 0 unless ``zero_linear_bias`` is False
    (mdistiller's ResNets keep the default bias). Kept so that training from scratch
    starts where the published recipes start.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if zero_linear_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
