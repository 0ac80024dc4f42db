"""CIFAR ShuffleNets of mdistiller (``mdistiller/models/cifar/ShuffleNetv1.py``
and ``ShuffleNetv2.py``, as in CRD/RepDistiller), with their names and keys.

* ``ShuffleV1``: groups 3, stages of 240/480/960 channels with 4/8/4 units;
  a 1x1 stem (``conv1``/``bn1``) and no max-pool, since inputs are 32x32.
* ``ShuffleV2``: net size 1x, stages of 116/232/464 channels with a
  down-sampling unit followed by 3/7/3 basic units, then ``conv2``/``bn2``
  to 1024 channels.

``forward`` returns logits only; no input normalisation inside.

``forward_features`` follows mdistiller's (``models/features.py``): ``feats`` =
[the stem after its ReLU, ``layer1``, ``layer2``, ``layer3`` outputs],
``preact_feats`` = [the same stem tensor, then each stage's last unit before
its final ReLU], ``pooled_feat`` = the averaged input of ``linear`` (for
ShuffleV2 after ``conv2``/``bn2``/ReLU, which no feature entry shows).  In
ShuffleV2 a basic unit's "preact" is mdistiller's ``cat([x1, bn3(conv3(.))])``
*before* the channel shuffle, so its channels are in another order than those
of the unit's output, and its first half is ``x1`` itself.
``get_stage_channels()``: ShuffleV2 [24, 116, 232, 464] (mdistiller's);
ShuffleV1 [24, 240, 480, 960] (mdistiller's ShuffleV1 has no such method).
``get_bn_before_relu()`` raises ``NotImplementedError`` for both, as in
mdistiller (its OFD does not support ShuffleNet teachers).
"""

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict, relu_stage
from .registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The stem has only 24 channels, too few to split into groups.
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()

    def forward(self, x):
        return F.relu(self.forward_preact(x))

    def forward_preact(self, x):
        """The unit's output before its final ReLU (mdistiller's ``preact``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        # Down-sampling units concatenate the pooled input instead of adding.
        return torch.cat([out, res], 1) if self.stride == 2 else out + res


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for planes, n in zip(out_planes, num_blocks):
            units = []
            for i in range(n):
                # The first unit's output is concatenated with its pooled
                # input, so its own branch only produces the difference.
                branch = planes - in_planes if i == 0 else planes
                units.append(ShuffleV1Unit(in_planes, branch, 2 if i == 0 else 1, groups))
                in_planes = planes
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.stage_channels = [24, *out_planes]

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.linear(out)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``ShuffleNet.forward``."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out, preact = relu_stage(layer, out)
            feats.append(out)
            preacts.append(preact)
        pooled = out.mean(dim=(2, 3))
        return self.linear(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        raise NotImplementedError("ShuffleV1 has no BatchNorm before its stages' ReLUs (not supported by OFD)")


class ShuffleV2BasicUnit(nn.Module):
    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        x1, out = self._branches(x)
        return channel_shuffle(torch.cat([x1, F.relu(out)], 1), 2)

    def forward_with_preact(self, x):
        """``(forward(x), preact)`` with mdistiller's ``preact``: ``cat([x1, bn3(conv3(.))])``, unshuffled."""
        x1, out = self._branches(x)
        return channel_shuffle(torch.cat([x1, F.relu(out)], 1), 2), torch.cat([x1, out], 1)

    def _branches(self, x):
        """The untouched half ``x1`` and the other half's branch up to ``bn3`` (before its ReLU)."""
        c = int(x.shape[1] * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        return x1, self.bn3(self.conv3(out))


class ShuffleV2DownUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch: depthwise stride-2 conv then 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1, depthwise stride-2, 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3), num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        stages = []
        for channels, n in zip(out_channels[:3], num_blocks):
            units = [ShuffleV2DownUnit(in_channels, channels)]
            units += [ShuffleV2BasicUnit(channels) for _ in range(n)]
            stages.append(nn.Sequential(*units))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.stage_channels = [24, *out_channels[:3]]

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.linear(out)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``ShuffleNetV2.forward``."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for layer in (self.layer1, self.layer2, self.layer3):
            out, preact = layer[-1].forward_with_preact(layer[:-1](out))
            feats.append(out)
            preacts.append(preact)
        pooled = F.relu(self.bn2(self.conv2(out))).mean(dim=(2, 3))
        return self.linear(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        raise NotImplementedError("ShuffleV2 has no BatchNorm before its stages' ReLUs (not supported by OFD)")


@register_model("ShuffleV1", family="cifar-kd", default_num_classes=100)
def shufflev1(num_classes=100):
    return ShuffleNetV1(num_classes=num_classes)


@register_model("ShuffleV2", family="cifar-kd", default_num_classes=100)
def shufflev2(num_classes=100):
    return ShuffleNetV2(num_classes=num_classes)
