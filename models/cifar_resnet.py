"""CIFAR ResNets of mdistiller, with its names and state-dict keys.

* ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4`` follow
  ``mdistiller/models/cifar/resnet.py`` (He et al.'s three-stage CIFAR ResNet,
  as in CRD/RepDistiller): ``conv1``, ``bn1``, ``layer{1,2,3}.N.{conv1,bn1,
  conv2,bn2,downsample.{0,1}}``, ``fc``.
* ``ResNet18`` / ``ResNet50`` (CIFAR variants) follow
  ``mdistiller/models/cifar/resnetv2.py`` (the four-stage ResNet with a 3x3
  stem and no max-pool): ``conv1``, ``bn1``, ``layer{1..4}.N.{conv*,bn*,
  shortcut.{0,1}}``, ``linear``.

mdistiller's forward returns ``(logits, features)``; here ``forward`` returns the
logits only and ``forward_features`` returns both, as mdistiller's does
(``models/features.py``): ``feats`` = [stem after its ReLU, each stage's output],
``preact_feats`` = [the same stem tensor, each stage's output before its final
ReLU (``out + residual`` of its last block)], ``pooled_feat`` = the globally
averaged last stage.  No input normalisation is applied inside: mdistiller's
teachers were trained on CIFAR-100-normalised inputs, which the data pipeline
provides.
"""

from typing import List

import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict, relu_stage
from .init import init_he_fan_out
from .registry import register_model


class CifarBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        return F.relu(self.forward_preact(x))

    def forward_preact(self, x):
        """The block's output before its final ReLU (mdistiller's ``preact``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class CifarResNet(nn.Module):
    """Three-stage CIFAR ResNet of depth 6n+2 (mdistiller ``resnet.py``).

    ``forward_features``: ``feats`` = [stem, layer1, layer2, layer3] outputs (after their ReLUs),
    ``preact_feats`` = [stem (post-ReLU, as mdistiller), the three stages before their final ReLU];
    ``get_stage_channels()`` = ``num_filters`` (e.g. [16, 16, 32, 64]); ``get_bn_before_relu()`` =
    the ``bn2`` of each stage's last block.
    """

    def __init__(self, depth: int, num_filters=(16, 16, 32, 64), num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n, 1)
        self.layer2 = self._make_layer(num_filters[2], n, 2)
        self.layer3 = self._make_layer(num_filters[3], n, 2)
        self.fc = nn.Linear(num_filters[3], num_classes)
        self.stage_channels = list(num_filters)
        init_he_fan_out(self, zero_linear_bias=False)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.fc(out)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``ResNet.forward``."""
        out = self.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out, preact = relu_stage(layer, out)
            feats.append(out)
            preacts.append(preact)
        pooled = out.mean(dim=(2, 3))
        return self.fc(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3)]


class BasicBlockV2(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x):
        return F.relu(self.forward_preact(x))

    def forward_preact(self, x):
        """The block's output before its final ReLU (mdistiller's ``preact``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)


class BottleneckV2(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _projection(in_planes, planes * 4, stride)

    def forward(self, x):
        return F.relu(self.forward_preact(x))

    def forward_preact(self, x):
        """The block's output before its final ReLU (mdistiller's ``preact``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity and adds no keys, as in mdistiller.
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class CifarResNetV2(nn.Module):
    """Four-stage ResNet for 32x32 inputs (mdistiller ``resnetv2.py``).

    ``forward_features``: ``feats`` = [stem, layer1..layer4] outputs (after their ReLUs),
    ``preact_feats`` = [stem (post-ReLU, as mdistiller), the four stages before their final ReLU].
    ``get_stage_channels()`` lists the four stages only, no stem (as mdistiller): [256, 512, 1024,
    2048] for ResNet50. mdistiller returns that same list for ResNet18 too, whose stages have
    [64, 128, 256, 512] channels; here it is the true [64, 128, 256, 512]. ``get_bn_before_relu()``
    = the last BN (``bn2``/``bn3``) of each stage's last block.
    """

    def __init__(self, block, num_blocks, num_classes: int = 100, strides=(1, 2, 2, 2)):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], strides[0])
        self.layer2 = self._make_layer(block, 128, num_blocks[1], strides[1])
        self.layer3 = self._make_layer(block, 256, num_blocks[2], strides[2])
        self.layer4 = self._make_layer(block, 512, num_blocks[3], strides[3])
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_he_fan_out(self, zero_linear_bias=False)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.linear(out)

    def _stages(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``resnetv2.ResNet.forward``."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for layer in self._stages():
            out, preact = relu_stage(layer, out)
            feats.append(out)
            preacts.append(preact)
        pooled = out.mean(dim=(2, 3))
        return self.linear(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return [bn.num_features for bn in self.get_bn_before_relu()]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [layer[-1].bn3 if hasattr(layer[-1], "bn3") else layer[-1].bn2 for layer in self._stages()]


_TEACHER = "mdistiller `{}_vanilla/ckpt_epoch_240.pth`"
_TEACHERS = {"resnet56", "resnet110", "resnet32x4"}


def _register_cifar_resnet(name: str, depth: int, filters):
    @register_model(
        name,
        family="cifar-kd",
        default_num_classes=100,
        checkpoints=_TEACHER.format(name) if name in _TEACHERS else "",
    )
    def builder(num_classes=100):
        return CifarResNet(depth, filters, num_classes)

    builder.__name__ = name
    return builder


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register_cifar_resnet("resnet8x4", 8, (32, 64, 128, 256))
_register_cifar_resnet("resnet32x4", 32, (32, 64, 128, 256))


@register_model("ResNet18", family="cifar-kd", default_num_classes=100)
def resnet18_cifar(num_classes=100):
    return CifarResNetV2(BasicBlockV2, (2, 2, 2, 2), num_classes)


@register_model("ResNet50", family="cifar-kd", default_num_classes=100, checkpoints=_TEACHER.format("ResNet50"))
def resnet50_cifar(num_classes=100):
    return CifarResNetV2(BottleneckV2, (3, 4, 6, 3), num_classes)


@register_model("ResNet18_cifar", family="cifar-at", default_num_classes=10)
def resnet18_lbgat(num_classes=10):
    """LBGAT's natural classifier (jiequancui/LBGAT ``models/resnetcifar.py``): ResNet-18 whose second
    stage keeps the resolution (strides 1, 1, 2, 2: 32, 32, 16, 8), pooled over the last 8x8 map."""
    return CifarResNetV2(BasicBlockV2, (2, 2, 2, 2), num_classes, strides=(1, 1, 2, 2))
