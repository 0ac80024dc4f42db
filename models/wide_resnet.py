"""Pre-activation WideResNet in the TRADES / RobustBench key layout.

Follows ``WideResNet(depth, widen_factor, sub_block1=False)`` of RobustBench
(``robustbench/model_zoo/architectures/wide_resnet.py``, itself taken from
TRADES): ``conv1``, ``block{1,2,3}.layer.N.{bn1,conv1,bn2,conv2,convShortcut}``,
``bn1``, ``fc``; ReLU, dropout off by default, bias-free convolutions, a biased classifier
and no input normalisation (inputs are images in [0, 1]).

mdistiller's CIFAR-100 ``wrn_*`` networks use this same class (see
``cifar_wrn.py``), which therefore also has mdistiller's ``forward_features``
(``models/features.py``); ``forward`` is untouched by it.
"""

from typing import List

import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict
from .init import init_he_fan_out
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        # The reference decides on the channel count alone: a block that keeps
        # the width never gets a projection, even when strided.
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        return self._forward(x, self.relu1(self.bn1(x)))

    def forward_with_bn1(self, x):
        """``(forward(x), bn1(x))``: also the input after ``bn1``, before ``relu1``."""
        normed = self.bn1(x)
        return self._forward(x, F.relu(normed)), normed

    def _forward(self, x, pre):
        # When the width changes the projection reads the pre-activated input;
        # otherwise the identity path carries the raw input.
        shortcut = x if self.equalInOut else self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(num_layers)
            ]
        )

    def forward(self, x):
        return self.layer(x)

    def forward_with_bn1(self, x):
        """``(forward(x), layer[0].bn1(x))``: also the input after the first block's ``bn1``."""
        out, normed = self.layer[0].forward_with_bn1(x)
        return self.layer[1:](out), normed


class WideResNet(nn.Module):
    """Pre-activation WideResNet (TRADES / RobustBench keys; also mdistiller's ``wrn.py``).

    ``forward_features`` follows mdistiller's ``WideResNet.forward``: ``feats`` = [``conv1``'s
    output, ``block1``, ``block2``, ``block3`` outputs] (pre-activation blocks: no ReLU at a stage's
    end), ``preact_feats`` = [``conv1``'s output, then each stage's output after the BatchNorm that
    comes next: ``block2.layer[0].bn1``, ``block3.layer[0].bn1``, ``bn1``], ``pooled_feat`` = the
    average of ``relu(bn1(block3))``. mdistiller runs those BatchNorms a second time on the stage
    outputs, which in train mode updates their running statistics twice per step; here each runs
    once (the values are the same). ``get_stage_channels()`` = [16, 16k, 32k, 64k];
    ``get_bn_before_relu()`` = those three BatchNorms.
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 28, 34, 40, 70, ...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        self.stage_channels = channels
        init_he_fan_out(self)

    def forward(self, x):
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.fc(out)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``WideResNet.forward``."""
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, pre1 = self.block2.forward_with_bn1(f1)
        f3, pre2 = self.block3.forward_with_bn1(f2)
        pre3 = self.bn1(f3)
        pooled = F.relu(pre3).mean(dim=(2, 3))
        return self.fc(pooled), features_dict([f0, f1, f2, f3], [f0, pre1, pre2, pre3], pooled)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


_AT = "RobustBench/TRADES `WideResNet` checkpoints (`sub_block1.*` keys ignored)"


@register_model("WideResNet34_10", "WideResNet34", family="cifar-at", checkpoints=_AT)
def wide_resnet34_10(num_classes=10, drop_rate=0.0):
    return WideResNet(34, 10, num_classes, drop_rate)


@register_model("WideResNet34_20", family="cifar-at", checkpoints=_AT)
def wide_resnet34_20(num_classes=10, drop_rate=0.0):
    return WideResNet(34, 20, num_classes, drop_rate)


@register_model("WideResNet28_10", "WideResNet28", family="cifar-at", checkpoints=_AT)
def wide_resnet28_10(num_classes=10, drop_rate=0.0):
    return WideResNet(28, 10, num_classes, drop_rate)


@register_model("WideResNet70_16", family="cifar-at", checkpoints=_AT)
def wide_resnet70_16(num_classes=10, drop_rate=0.0):
    return WideResNet(70, 16, num_classes, drop_rate)


@register_model("WideResNet", family="cifar-at", checkpoints=_AT + " of the same depth/width")
def wide_resnet(num_classes=10, depth=34, widen_factor=10, drop_rate=0.0):
    return WideResNet(depth, widen_factor, num_classes, drop_rate)
