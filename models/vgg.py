"""CIFAR VGG with BatchNorm in mdistiller's layout
(``mdistiller/models/cifar/vgg.py``, ``vgg*_bn``; registered under
mdistiller's model names ``vgg8`` ... ``vgg19``).

Five conv stages ``block0..block4`` (each ``Conv(bias) -> BN -> ReLU`` repeated,
minus the final ReLU, which ``forward`` applies so the stage output is the
pre-activation), max-pooling between stages, global average pooling and a
single ``classifier`` Linear(512, num_classes).  At 32x32 the pool after
``block3`` is skipped, as in mdistiller, so ``block4`` runs at 4x4.
``forward`` returns logits only; no input normalisation inside.

``forward_features`` follows mdistiller's ``VGG.forward`` (``models/features.py``):
``feats`` = the five stage outputs after their ReLU and before their pooling
(``block0`` .. ``block4``), ``preact_feats`` = [the same ``block0`` tensor
(post-ReLU, as mdistiller), then ``block1`` .. ``block4`` before their ReLU],
``pooled_feat`` = the averaged ``block4`` output.  ``get_stage_channels()`` =
the five stages' widths, [64, 128, 256, 512, 512]; ``get_bn_before_relu()`` =
the last BatchNorm of ``block1`` .. ``block4`` (four, not five, as mdistiller).
"""

from typing import List

import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict
from .init import init_he_fan_out
from .registry import register_model

# Output channels of each conv in the five stages.
CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _stage(channels, in_channels: int) -> nn.Sequential:
    layers = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        in_channels = c
    # Drop the trailing ReLU: keeps mdistiller's module indices and lets the
    # caller see the pre-activation.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg, num_classes: int = 100):
        super().__init__()
        in_channels = [3] + [stage[-1] for stage in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _stage(c, i) for c, i in zip(cfg, in_channels)
        )
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        self.stage_channels = [stage[-1] for stage in cfg]
        init_he_fan_out(self, linear_std=0.01)

    def forward(self, x):
        height = x.shape[2]
        out = self.pool0(F.relu(self.block0(x)))
        out = self.pool1(F.relu(self.block1(out)))
        out = self.pool2(F.relu(self.block2(out)))
        out = F.relu(self.block3(out))
        # mdistiller pools here only for 64x64 (Tiny-ImageNet) inputs.
        if height == 64:
            out = self.pool3(out)
        out = F.relu(self.block4(out))
        return self.classifier(self.pool4(out).flatten(1))

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``VGG.forward``."""
        # mdistiller pools after block3 only for 64x64 (Tiny-ImageNet) inputs, as forward.
        pools = (self.pool1, self.pool2, self.pool3 if x.shape[2] == 64 else None, self.pool4)
        f0 = F.relu(self.block0(x))
        feats, preacts = [f0], [f0]
        out = self.pool0(f0)
        for block, pool in zip((self.block1, self.block2, self.block3, self.block4), pools):
            preact = block(out)
            out = F.relu(preact)
            feats.append(out)
            preacts.append(preact)
            if pool is not None:
                out = pool(out)
        pooled = out.flatten(1)
        return self.classifier(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]


def _register_vgg(name: str, checkpoints: str = ""):
    @register_model(name, family="cifar-kd", default_num_classes=100, checkpoints=checkpoints)
    def builder(num_classes=100):
        return VGG(CONFIGS[name], num_classes)

    builder.__name__ = name
    return builder


for _name in CONFIGS:
    _register_vgg(_name, "mdistiller `vgg13_vanilla/ckpt_epoch_240.pth`" if _name == "vgg13" else "")
