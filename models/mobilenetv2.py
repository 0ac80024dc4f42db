"""Half-width CIFAR MobileNetV2 of mdistiller (``mobile_half`` in
``mdistiller/models/cifar/mobilenetv2.py``, registered as ``MobileNetV2``).

Expansion 6, width 0.5, a stride-2 3x3 stem, seven inverted-residual stages
(``blocks.S.N.conv.{0..7}``), a 1x1 conv to 1280 channels (``conv2``) and
``classifier.0``.  Unlike torchvision's, the expansion-1 first block still
has its 1x1 expansion conv, which mdistiller's checkpoints contain.
``forward`` returns logits only; no input normalisation inside.

``forward_features`` follows mdistiller's ``MobileNetV2.forward``
(``models/features.py``): ``feats`` = [the stem ``conv1`` (after its ReLU), the
outputs of ``blocks[1]``, ``blocks[2]``, ``blocks[4]`` and ``blocks[6]``] (not
of every stage: mdistiller's choice), ``pooled_feat`` = the pooled ``conv2``
output.  mdistiller returns no ``preact_feats`` at all; here it is the same
list as ``feats``, since those stage ends are linear bottlenecks (a BatchNorm,
plus the residual where there is one; no ReLU).  ``get_stage_channels()`` =
[16, 12, 16, 48, 160] (mdistiller's [32, 24, 32, 96, 320] times the width 0.5);
``get_bn_before_relu()`` = the last BatchNorm of those four stages.
"""

from typing import List

import torch.nn as nn

from .features import features_dict
from .init import init_he_fan_out
from .registry import register_model


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2Cifar(nn.Module):
    # (expansion, channels, repeats, first stride); expansion None -> T
    STAGES = [
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    ]
    # The stages whose outputs mdistiller returns as features.
    FEATURE_STAGES = (1, 2, 4, 6)

    def __init__(self, num_classes: int = 100, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.STAGES:
            out_channels = int(c * width_mult)
            stage = []
            for stride in [s] + [1] * (n - 1):
                stage.append(InvertedResidual(channels, out_channels, stride, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        # mdistiller pools 32x32 inputs (2x2 maps) with a fixed 2x2 window.
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        init_he_fan_out(self, linear_std=0.01)

    def forward(self, x):
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.avgpool(self.conv2(out))
        return self.classifier(out.flatten(1))

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``MobileNetV2.forward``
        (which has no ``preact_feats``: here they are ``feats``, see the module docstring)."""
        out = self.conv1(x)
        feats = [out]
        for index, stage in enumerate(self.blocks):
            out = stage(out)
            if index in self.FEATURE_STAGES:
                feats.append(out)
        pooled = self.avgpool(self.conv2(out)).flatten(1)
        return self.classifier(pooled), features_dict(feats, list(feats), pooled)

    def get_stage_channels(self) -> List[int]:
        return [self.conv1[1].num_features] + [bn.num_features for bn in self.get_bn_before_relu()]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.blocks[index][-1].conv[-1] for index in self.FEATURE_STAGES]


@register_model("MobileNetV2", family="cifar-kd", default_num_classes=100)
def mobilenetv2_half(num_classes=100):
    return MobileNetV2Cifar(num_classes, expansion=6, width_mult=0.5)
