"""RobustBench's two WideResNet layouts, written here from their architecture descriptions (the
module names, the pre-activation blocks, DeepMind's explicit 'SAME' padding and the
normalisation buffers in the state dict), independently of models/: what an export must load
into strictly.

* ``RBWideResNet(depth, widen_factor, num_classes)``: RobustBench's ``WideResNet`` with
  ``sub_block1=False``: conv1, block{1,2,3}.layer.<i>.{bn1, conv1, bn2,
  conv2, convShortcut}, bn1, fc; global average pooling of the 8x8 map.
* ``RBDMWideResNet(num_classes, depth, width, mean, std)``: RobustBench's ``DMWideResNet``
  with Swish: mean and std as persistent buffers, init_conv, layer.<g>.block.<i>.{batchnorm_0,
  conv_0, batchnorm_1, conv_1, shortcut}, batchnorm, logits.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class _PreActBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if in_planes != out_planes else None
        )

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(activated)
        return skip + self.conv2(F.relu(self.bn2(self.conv1(activated))))


class _Stage(nn.Module):
    def __init__(self, blocks, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[_PreActBlock(out_planes if i else in_planes, out_planes, 1 if i else stride) for i in range(blocks)]
        )

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    def __init__(self, depth=28, widen_factor=10, num_classes=10):
        super().__init__()
        blocks, widths = (depth - 4) // 6, [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = _Stage(blocks, widths[0], widths[1], 1)
        self.block2 = _Stage(blocks, widths[1], widths[2], 2)
        self.block3 = _Stage(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


class _DMBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if in_planes != out_planes else None

    def forward(self, x):
        activated = F.silu(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(activated)
        same = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)  # TensorFlow's 'SAME' for a 3x3 kernel
        return skip + self.conv_1(F.silu(self.batchnorm_1(self.conv_0(F.pad(activated, same)))))


class _DMGroup(nn.Module):
    def __init__(self, blocks, in_planes, out_planes, stride):
        super().__init__()
        self.block = nn.Sequential(
            *[_DMBlock(out_planes if i else in_planes, out_planes, 1 if i else stride) for i in range(blocks)]
        )

    def forward(self, x):
        return self.block(x)


class RBDMWideResNet(nn.Module):
    def __init__(self, num_classes=10, depth=28, width=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
        blocks, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            _DMGroup(blocks, widths[0], widths[1], 1),
            _DMGroup(blocks, widths[1], widths[2], 2),
            _DMGroup(blocks, widths[2], widths[3], 2),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = F.silu(self.batchnorm(self.layer(self.init_conv((x - self.mean) / self.std))))
        return self.logits(F.avg_pool2d(out, 8).flatten(1))
