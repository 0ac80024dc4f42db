"""A small CNN for scikit-learn's 8×8 grayscale digits, for quickstarts on a laptop CPU.

    conv3×3(1→32)   BN ReLU           8×8
    conv3×3(32→64)  BN ReLU maxpool2  8×8 -> 4×4
    conv3×3(64→128) BN ReLU           4×4
    global average pool, linear(128→num_classes)

``width`` scales the three channel counts: ``digits_cnn`` is width 1.0 (the
adversarial-training model and KD teacher), ``digits_cnn_small`` width 0.25
(8/16/32 channels, the KD student). ``digits_cnn_plain`` is ``digits_cnn_small``
without BatchNorm (biased convolutions instead): its outputs do not depend on the
other images of the batch, which multi-process tests on the CPU need (SyncBatchNorm
works on GPUs only). Inputs are images in [0, 1] with no
normalisation inside, as for the CIFAR adversarial-training models, so an
L∞ budget such as eps=0.2 is measured in pixel units. ``forward`` returns logits.

``forward_features`` gives mdistiller-style features (``models/features.py``; mdistiller has
no such model): ``feats`` = [``relu(bn1(conv1))``, ``pool(relu(bn2(conv2)))``,
``relu(bn3(conv3))``], ``preact_feats`` = [the same first tensor (the stem entry is post-ReLU,
as in mdistiller's CIFAR ResNets), ``pool(bn2(conv2))``, ``bn3(conv3)``] (max-pooling commutes
with the ReLU, so ``relu(preact_feats[i]) == feats[i]``), ``pooled_feat`` = the mean of
``feats[-1]`` over H, W. ``get_stage_channels()`` = the three widths (e.g. [32, 64, 128]);
``get_bn_before_relu()`` = [bn1, bn2, bn3], and ``NotImplementedError`` for ``digits_cnn_plain``,
which has no BatchNorm.
"""

from typing import List

import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict
from .init import init_he_fan_out
from .registry import register_model

BASE_CHANNELS = (32, 64, 128)


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1, batch_norm: bool = True):
        super().__init__()
        if width <= 0:
            raise ValueError(f"DigitsCNN width must be positive, got {width}")
        c1, c2, c3 = (max(1, round(c * width)) for c in BASE_CHANNELS)

        def norm(channels):
            return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

        # Bias-free convolutions when a BatchNorm follows: it has its own shift.
        self.conv1 = nn.Conv2d(in_channels, c1, 3, 1, 1, bias=not batch_norm)
        self.bn1 = norm(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(c2)
        # One 2×2 pooling only: an 8×8 image has little resolution to give away.
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, 1, 1, bias=not batch_norm)
        self.bn3 = norm(c3)
        self.fc = nn.Linear(c3, num_classes)
        self.num_features = c3
        init_he_fan_out(self)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(F.relu(self.bn2(self.conv2(out))))
        out = F.relu(self.bn3(self.conv3(out)))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.fc(out)

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` (module docstring)."""
        f1 = F.relu(self.bn1(self.conv1(x)))
        pre2 = self.bn2(self.conv2(f1))
        f2 = self.pool(F.relu(pre2))
        pre3 = self.bn3(self.conv3(f2))
        f3 = F.relu(pre3)
        pooled = f3.mean(dim=(2, 3))
        return self.fc(pooled), features_dict([f1, f2, f3], [f1, self.pool(pre2), pre3], pooled)

    def get_stage_channels(self) -> List[int]:
        return [self.conv1.out_channels, self.conv2.out_channels, self.conv3.out_channels]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        bns = [self.bn1, self.bn2, self.bn3]
        if not all(isinstance(bn, nn.BatchNorm2d) for bn in bns):
            raise NotImplementedError("this DigitsCNN has no BatchNorm (digits_cnn_plain): no BN before its ReLUs")
        return bns


@register_model("digits_cnn", family="digits", input_size=(1, 8, 8), default_num_classes=10)
def digits_cnn(num_classes=10, width=1.0):
    return DigitsCNN(num_classes, width)


@register_model("digits_cnn_small", family="digits", input_size=(1, 8, 8), default_num_classes=10)
def digits_cnn_small(num_classes=10):
    return DigitsCNN(num_classes, width=0.25)


@register_model("digits_cnn_plain", family="digits", input_size=(1, 8, 8), default_num_classes=10)
def digits_cnn_plain(num_classes=10):
    return DigitsCNN(num_classes, width=0.25, batch_norm=False)
