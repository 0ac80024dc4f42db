"""mdistiller's CIFAR-100 WideResNets (``mdistiller/models/cifar/wrn.py``).

That file descends from the same code as TRADES' WideResNet and has the same
keys (``conv1``, ``block{1,2,3}.layer.N.*``, ``bn1``, ``fc``) and forward pass,
so the class of ``wide_resnet.py`` is reused under mdistiller's names.
"""

from .registry import register_model
from .wide_resnet import WideResNet

_KD = "mdistiller `{}_vanilla/ckpt_epoch_240.pth`"


@register_model("wrn_16_1", family="cifar-kd", default_num_classes=100)
def wrn_16_1(num_classes=100):
    return WideResNet(16, 1, num_classes)


@register_model("wrn_16_2", family="cifar-kd", default_num_classes=100)
def wrn_16_2(num_classes=100):
    return WideResNet(16, 2, num_classes)


@register_model("wrn_40_1", family="cifar-kd", default_num_classes=100)
def wrn_40_1(num_classes=100):
    return WideResNet(40, 1, num_classes)


@register_model("wrn_40_2", family="cifar-kd", default_num_classes=100, checkpoints=_KD.format("wrn_40_2"))
def wrn_40_2(num_classes=100):
    return WideResNet(40, 2, num_classes)
