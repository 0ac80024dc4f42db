"""ImageNet networks (224x224 inputs).

* ``ResNet18`` / ``ResNet34`` / ``ResNet50`` (with ``dataset="imagenet"``) are
  torchvision's own classes built with ``weights=None``, so torchvision's
  released state dicts load unchanged; nothing is ever downloaded.
* ``MobileNetV1`` follows the student of ReviewKD / mdistiller
  (``mdistiller/models/imagenet/mobilenetv1.py``): ``model.0`` a stride-2
  conv-BN-ReLU, ``model.1..13`` depthwise-separable conv-BN-ReLU pairs,
  global average pooling and ``fc``.

Inputs are expected ImageNet-normalised, as the released weights were
trained that way; there is no normalisation inside.
"""

import torch.nn as nn

from .registry import register_model

_TV = "torchvision `{}` ImageNet weights (e.g. IMAGENET1K_V1 .pth files)"


@register_model(
    "ResNet18",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet18"),
)
def resnet18_imagenet(num_classes=1000):
    from torchvision.models import resnet18  # here: torchvision's import is slow

    return resnet18(weights=None, num_classes=num_classes)


@register_model(
    "ResNet34",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet34"),
)
def resnet34_imagenet(num_classes=1000):
    from torchvision.models import resnet34  # here: torchvision's import is slow

    return resnet34(weights=None, num_classes=num_classes)


@register_model(
    "ResNet50",
    family="imagenet",
    input_size=(3, 224, 224),
    default_num_classes=1000,
    checkpoints=_TV.format("resnet50"),
)
def resnet50_imagenet(num_classes=1000):
    from torchvision.models import resnet50  # here: torchvision's import is slow

    return resnet50(weights=None, num_classes=num_classes)


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


@register_model("MobileNetV1", family="imagenet", input_size=(3, 224, 224), default_num_classes=1000)
def mobilenet_v1(num_classes=1000):
    return MobileNetV1(num_classes)
