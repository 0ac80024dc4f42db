"""PreActResNet-18 in the layout of Rice et al. (2020), "Overfitting in
adversarially robust deep learning" (``locuslab/robust_overfitting``,
``preactresnet.py``), the variant most adversarial-training papers reuse.

Keys: ``conv1``, ``layer{1..4}.N.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn``,
``linear``.  As there, the projection shortcut reads the pre-activated input
and a final BatchNorm + ReLU precedes pooling (RobustBench's
``PreActResNet(PreActBlockV2, ..., bn_before_fc=True)`` is the same network).
No input normalisation is applied inside; note that Rice et al. fed
CIFAR-normalised inputs, so their released weights need the caller to
normalise.
"""

import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            # A Sequential only so the key reads ``shortcut.0.weight``.
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))
        else:
            self.shortcut = None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.linear(out)


@register_model(
    "PreActResNet18",
    family="cifar-at",
    checkpoints="Rice et al. 2020 `PreActResNet18` checkpoints (inputs must be normalised by the caller)",
)
def preact_resnet18(num_classes=10):
    return PreActResNet((2, 2, 2, 2), num_classes)
