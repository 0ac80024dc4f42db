"""Model zoo: one ``build_model`` for every architecture, one ``load_weights``
for every published checkpoint format.

    model = build_model("WideResNet34_10", num_classes=10)
    model = build_model("ResNet50", 1000, dataset="imagenet")   # torchvision
    model = build_model("ResNet50", 100, dataset="cifar100")    # mdistiller
    load_weights(model, "ckpt_epoch_240.pth")

Every model's ``forward(x)`` returns a logits tensor.
"""

# Importing the architecture modules fills the registry (in listing order).
from . import wide_resnet, dm_wide_resnet, preact_resnet  # noqa: F401, I001
from . import cifar_resnet, cifar_wrn, vgg, mobilenetv2, shufflenet  # noqa: F401, I001
from . import imagenet  # noqa: F401
from . import small_cnn  # noqa: F401
from engine.file_io import UnsafeCheckpointError

from .weights import CheckpointError, CheckpointMismatchError, load_weights
from .registry import available_models, build_model, register_model

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "available_models",
    "build_model",
    "load_weights",
    "register_model",
]
