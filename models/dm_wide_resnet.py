"""WideResNet with SiLU ("Swish") in DeepMind's key layout.

Follows the PyTorch port of Gowal et al. (2020),
``deepmind-research/adversarial_robustness/pytorch/model_zoo.py``, as used by
RobustBench's ``DMWideResNet(..., activation_fn=nn.SiLU)`` and by the
``wrn-28-10-swish`` / ``wrn-70-16-swish`` models of Wang et al. (2023,
"Better Diffusion Models Further Improve Adversarial Training"): keys
``init_conv``, ``layer.G.block.N.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``,
``batchnorm``, ``logits``.

Strided convolutions use TensorFlow's asymmetric 'SAME' padding (one pixel on
the bottom/right only), which the converted JAX weights depend on.  The
dataset mean/std are applied inside ``forward`` (inputs are images in
[0, 1]) and are non-persistent buffers: they follow ``.to(device)`` but are
not part of the state dict, as in the reference where they are plain
attributes.  BatchNorm momentum is 0.01 (eps 1e-5) as in Wang et al.'s
training code, matching the JAX decay of 0.99; it has no effect at
evaluation.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .init import init_he_fan_out
from .registry import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# DeepMind's statistics, which their WideResNets normalise with inside the model (the loaders'
# NORMALIZE_STATS in engine/data/transforms.py are mdistiller's, another fourth decimal).
DEEPMIND_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

_BN_MOMENTUM = 0.01


class Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activation=nn.SiLU):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=_BN_MOMENTUM)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=_BN_MOMENTUM)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False) if self.has_shortcut else None
        # (left, right, top, bottom): 'SAME' for a 3x3 kernel at stride 2 on
        # an even input pads only after the data.
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x):
        pre = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(pre) if self.has_shortcut else x
        out = self.conv_0(F.pad(pre, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return shortcut + out


class BlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation=nn.SiLU):
        super().__init__()
        self.block = nn.Sequential(
            *[
                Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x):
        return self.block(x)


class DMWideResNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 28,
        width: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        activation=nn.SiLU,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        num_blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, channels[0], 3, 1, padding=1, bias=False)
        self.layer = nn.Sequential(
            BlockGroup(num_blocks, channels[0], channels[1], 1, activation),
            BlockGroup(num_blocks, channels[1], channels[2], 2, activation),
            BlockGroup(num_blocks, channels[2], channels[3], 2, activation),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3], momentum=_BN_MOMENTUM)
        self.relu = activation()
        self.logits = nn.Linear(channels[3], num_classes)
        self.num_channels = channels[3]
        init_he_fan_out(self)

    def forward(self, x):
        out = (x - self.mean) / self.std
        out = self.layer(self.init_conv(out))
        out = self.relu(self.batchnorm(out))
        out = out.mean(dim=(2, 3))  # global average pooling (deterministic backward on CUDA)
        return self.logits(out)


def dataset_stats(num_classes: int, dataset: Optional[str], mean, std):
    """Pick the normalisation: explicit mean/std, else dataset=, else num_classes."""
    if (mean is None) != (std is None):
        raise ValueError("pass both mean= and std=, or neither")
    if mean is not None:
        return tuple(mean), tuple(std)
    if dataset is None:
        dataset = {10: "cifar10", 100: "cifar100"}.get(num_classes)
        if dataset is None:
            raise ValueError(
                f"cannot guess normalisation statistics for num_classes={num_classes}; "
                'pass dataset="cifar10"|"cifar100" or mean=/std='
            )
    if dataset not in DEEPMIND_STATS:
        raise ValueError(f"no statistics for dataset={dataset!r}; pass mean=/std= (known: {sorted(DEEPMIND_STATS)})")
    return DEEPMIND_STATS[dataset]


_CKPT = "RobustBench `DMWideResNet` Swish checkpoints; Wang et al. 2023 `{}` checkpoints"


@register_model("wrn-28-10-swish", family="cifar-at", checkpoints=_CKPT.format("wrn-28-10-swish"))
def wrn_28_10_swish(num_classes=10, dataset=None, mean=None, std=None):
    mean, std = dataset_stats(num_classes, dataset, mean, std)
    return DMWideResNet(num_classes, 28, 10, mean, std)


@register_model("wrn-70-16-swish", family="cifar-at", checkpoints=_CKPT.format("wrn-70-16-swish"))
def wrn_70_16_swish(num_classes=10, dataset=None, mean=None, std=None):
    mean, std = dataset_stats(num_classes, dataset, mean, std)
    return DMWideResNet(num_classes, 70, 16, mean, std)
