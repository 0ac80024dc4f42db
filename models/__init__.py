"""Model zoo: one ``build_model`` for every architecture, one ``load_weights``
for every published checkpoint format.

    model = build_model("WideResNet34_10", num_classes=10)
    model = build_model("ResNet50", 1000, dataset="imagenet")   # torchvision
    model = build_model("ResNet50", 100, dataset="cifar100")    # mdistiller
    load_weights(model, "ckpt_epoch_240.pth")

Every model's ``forward(x)`` returns a logits tensor.  The models a distiller
may use (the CIFAR KD zoo, the ImageNet networks, the digits CNNs) also have
mdistiller's ``forward_features(x) -> (logits, {"feats", "preact_feats",
"pooled_feat"})``, ``get_stage_channels()`` and ``get_bn_before_relu()``
(``models/features.py``; `feature_shapes` measures the features).
"""

# Importing the architecture modules fills the registry (in listing order).
from . import wide_resnet, dm_wide_resnet, preact_resnet  # noqa: F401, I001
from . import cifar_resnet, cifar_wrn, vgg, mobilenetv2, shufflenet  # noqa: F401, I001
from . import imagenet  # noqa: F401
from . import small_cnn  # noqa: F401
from engine.file_io import UnsafeCheckpointError

from .features import FEATURE_KEYS, feature_shapes
from .pretrained import freeze, load_frozen, torchvision_weights_file
from .preprocess import MEAN_STD, Normalize, attach_preprocessing, attached_preprocessing, preprocessing
from .weights import CheckpointError, CheckpointMismatchError, load_weights
from .registry import available_models, build_model, register_model

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FEATURE_KEYS",
    "MEAN_STD",
    "Normalize",
    "UnsafeCheckpointError",
    "attach_preprocessing",
    "attached_preprocessing",
    "available_models",
    "build_model",
    "feature_shapes",
    "freeze",
    "load_frozen",
    "load_weights",
    "preprocessing",
    "register_model",
    "torchvision_weights_file",
]
