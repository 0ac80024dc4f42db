"""ImageNet networks (224x224 inputs).

* ``ResNet18`` / ``ResNet34`` / ``ResNet50`` (with ``dataset="imagenet"``) are
  torchvision's own networks built with ``weights=None``, so torchvision's
  released state dicts load unchanged; nothing is ever downloaded.  Their class
  is `TorchvisionResNet`, a subclass of ``torchvision.models.ResNet`` that adds
  only mdistiller's feature methods (no module, parameter or buffer; the same
  ``forward``).  It is made on first use, so importing this module does not
  import torchvision.
* ``MobileNetV1`` follows the student of ReviewKD / mdistiller
  (``mdistiller/models/imagenet/mobilenetv1.py``): ``model.0`` a stride-2
  conv-BN-ReLU, ``model.1..13`` depthwise-separable conv-BN-ReLU pairs,
  global average pooling and ``fc``.

Inputs are expected ImageNet-normalised, as the released weights were
trained that way; there is no normalisation inside.

``forward_features`` (``models/features.py``) follows
``mdistiller/models/imagenet/{resnet,mobilenetv1}.py``, whose networks compute
what torchvision's do but return features:

* ResNets: ``feats`` = [the stem ``relu(bn1(conv1(x)))`` *before* the max-pool,
  then ``layer1`` .. ``layer4`` outputs]; ``preact_feats`` = [the same stem
  tensor, then each stage before its final ReLU]; ``pooled_feat`` = the pooled
  ``layer4`` output.  (mdistiller's code keeps ``bn1(conv1(x))`` as the stem's
  preact, but its in-place ``self.relu`` then overwrites that tensor, so what it
  returns is the post-ReLU stem, as in its CIFAR models; so here.)
  ``get_stage_channels()`` lists the four stages only (no stem), as mdistiller:
  [256, 512, 1024, 2048] for ResNet50; mdistiller returns that same list for
  ResNet18/34 too, whose stages have [64, 128, 256, 512] channels, which is
  what is returned here.  ``get_bn_before_relu()`` = the last BatchNorm of
  ``layer2`` .. ``layer4``'s last blocks (three, no ``layer1``: mdistiller's).
* MobileNetV1: no stem entry; ``feats`` = the outputs of ``model[3]``,
  ``model[5]``, ``model[11]``, ``model[13]`` (after their ReLU),
  ``preact_feats`` = the same before their final ReLU, ``pooled_feat`` = the
  pooled ``model[13]`` output.  ``get_stage_channels()`` = [128, 256, 512,
  1024]; ``get_bn_before_relu()`` = the last BatchNorm of those four layers.
  mdistiller pools with ``AvgPool2d(7)`` (224x224 inputs only); here as in
  ``forward``, globally, for any input size.
"""

import functools
from typing import List

import torch.nn as nn
import torch.nn.functional as F

from .features import features_dict
from .registry import register_model

_TV = "torchvision `{}` ImageNet weights (e.g. IMAGENET1K_V1 .pth files)"


def _torchvision_block_preact(block, x):
    """torchvision's ``BasicBlock``/``Bottleneck.forward`` without its final ReLU."""
    out = block.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):  # Bottleneck
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return out + (x if block.downsample is None else block.downsample(x))


@functools.lru_cache(maxsize=None)
def _torchvision_resnet_class():
    from torchvision.models import ResNet  # here: torchvision's import is slow

    class TorchvisionResNet(ResNet):
        """``torchvision.models.ResNet`` with mdistiller's feature methods (module docstring)."""

        def _stages(self):
            return (self.layer1, self.layer2, self.layer3, self.layer4)

        def forward_features(self, x):
            """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's imagenet ``ResNet.forward``."""
            out = self.relu(self.bn1(self.conv1(x)))
            feats, preacts = [out], [out]  # mdistiller's preact stem is post-ReLU too (module docstring)
            out = self.maxpool(out)
            for layer in self._stages():
                preact = _torchvision_block_preact(layer[-1], layer[:-1](out))
                out = F.relu(preact)
                feats.append(out)
                preacts.append(preact)
            pooled = self.avgpool(out).flatten(1)
            return self.fc(pooled), features_dict(feats, preacts, pooled)

        def get_stage_channels(self) -> List[int]:
            last = [layer[-1] for layer in self._stages()]
            return [(block.bn3 if hasattr(block, "bn3") else block.bn2).num_features for block in last]

        def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
            return [layer[-1].bn3 if hasattr(layer[-1], "bn3") else layer[-1].bn2 for layer in self._stages()[1:]]

    # Pickle finds the class as models.imagenet.TorchvisionResNet (the module's __getattr__).
    TorchvisionResNet.__module__ = __name__
    TorchvisionResNet.__qualname__ = "TorchvisionResNet"
    return TorchvisionResNet


def __getattr__(name):
    if name == "TorchvisionResNet":  # made on first use: its base class needs torchvision
        return _torchvision_resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torchvision_resnet(block: str, layers, num_classes: int, **widths) -> nn.Module:
    """What ``torchvision.models.resnet*(weights=None, num_classes=...)`` builds, as a `TorchvisionResNet`
    (``widths``: ResNeXt's ``groups`` and ``width_per_group``)."""
    from torchvision.models import resnet  # here: torchvision's import is slow

    return _torchvision_resnet_class()(getattr(resnet, block), layers, num_classes=num_classes, **widths)


@register_model(
    "ResNet18",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet18"),
)
def resnet18_imagenet(num_classes=1000):
    return _torchvision_resnet("BasicBlock", [2, 2, 2, 2], num_classes)


@register_model(
    "ResNet34",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet34"),
)
def resnet34_imagenet(num_classes=1000):
    return _torchvision_resnet("BasicBlock", [3, 4, 6, 3], num_classes)


@register_model(
    "ResNet50",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet50"),
)
def resnet50_imagenet(num_classes=1000):
    return _torchvision_resnet("Bottleneck", [3, 4, 6, 3], num_classes)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    # (output channels, stride) of the 13 depthwise-separable layers
    LAYERS = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ]
    # Indices in ``model`` of the layers whose outputs mdistiller returns as features.
    FEATURE_LAYERS = (3, 5, 11, 13)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, channels = [_conv_bn(3, 32, 2)], 32
        for out_channels, stride in self.LAYERS:
            layers.append(_conv_dw(channels, out_channels, stride))
            channels = out_channels
        # The reference uses AvgPool2d(7), i.e. global pooling at 224x224.
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.model(x).flatten(1))

    def forward_features(self, x):
        """``(logits, {"feats", "preact_feats", "pooled_feat"})`` as mdistiller's ``MobileNetV1.forward``."""
        feats, preacts, out, start = [], [], x, 0
        for end in self.FEATURE_LAYERS:
            preact = self.model[end][:-1](self.model[start:end](out))  # all but the last ReLU
            out = F.relu(preact)
            feats.append(out)
            preacts.append(preact)
            start = end + 1
        pooled = self.model[-1](out).flatten(1)
        return self.fc(pooled), features_dict(feats, preacts, pooled)

    def get_stage_channels(self) -> List[int]:
        return [bn.num_features for bn in self.get_bn_before_relu()]

    def get_bn_before_relu(self) -> List[nn.BatchNorm2d]:
        return [self.model[index][-2] for index in self.FEATURE_LAYERS]


@register_model("MobileNetV1", family="imagenet", input_size=(3, 224, 224), default_num_classes=1000)
def mobilenet_v1(num_classes=1000):
    return MobileNetV1(num_classes)


@register_model("ResNeXt101_32x4d", family="imagenet", input_size=(3, 224, 224), default_num_classes=1000)
def resnext101_32x4d(num_classes=1000):
    """ResNeXt-101 32x4d: torchvision's ResNet with Bottleneck blocks [3, 4, 23, 3], 32 groups of width 4
    (the DKL authors' ImageNet-LT teacher, DKLv1/Imbalanced_KD-dkl ``models/resnet_imagenet.py``, whose keys are
    torchvision's; torchvision publishes 32x8d and 64x4d, not 32x4d). 44,177,704 parameters with 1000 classes."""
    return _torchvision_resnet("Bottleneck", [3, 4, 23, 3], num_classes, groups=32, width_per_group=4)
