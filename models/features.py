"""Intermediate features for knowledge distillation, in the format of mdistiller's models.

Every model that a distiller may use (the CIFAR KD zoo, the ImageNet networks, the digits CNNs)
keeps ``forward(x) -> logits`` and adds the three methods of mdistiller's models
(megvii-research/mdistiller, ``mdistiller/models/{cifar,imagenet}/*.py``), which its distillers
(FitNet, AT, OFD, ReviewKD, CRD, RKD, PKT, VID, ...) read:

``forward_features(x) -> (logits, features)``
    ``logits`` are bit-identical to ``forward(x)`` (the same operations in the same order);
    ``features`` is a dict with exactly the keys of `FEATURE_KEYS`:

    * ``"feats"``: list of tensors, the stem's output (where mdistiller has one) then every
      stage's output, as mdistiller's model of the same name returns them;
    * ``"preact_feats"``: the same list with each stage's output taken before the stage's final
      ReLU (what OFD and ReviewKD distil). The stem entry is whatever mdistiller puts there,
      mostly the post-ReLU stem output (equal to ``feats[0]``);
    * ``"pooled_feat"``: the N x C vector the classifier reads (after global pooling).

``get_stage_channels() -> List[int]``
    mdistiller's channel list. Most models list one count per ``feats`` entry, stem first;
    mdistiller's ``ResNet18``/``ResNet50`` (CIFAR and ImageNet) list only the four stages.
    Distillers such as OFD align such lists from their end.

``get_bn_before_relu() -> List[nn.BatchNorm2d]``
    The BatchNorm whose output is the pre-activation of a stage's end (OFD's margins). Models
    without one (the ShuffleNets, as in mdistiller; ``digits_cnn_plain``, which has no
    BatchNorm) raise ``NotImplementedError``.

Each model's docstring says how its entries line up with mdistiller's, including where
mdistiller's models are odd. `feature_shapes` gives the shapes that distillers need to build
their connectors.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The keys of the dict that ``forward_features`` returns, in mdistiller's spelling.
FEATURE_KEYS = ("feats", "preact_feats", "pooled_feat")

Features = Dict[str, object]


def features_dict(feats: List[torch.Tensor], preact_feats: List[torch.Tensor], pooled_feat: torch.Tensor) -> Features:
    """The ``features`` dict of ``forward_features``: ``{"feats", "preact_feats", "pooled_feat"}``."""
    return {"feats": feats, "preact_feats": preact_feats, "pooled_feat": pooled_feat}


def relu_stage(stage: nn.Sequential, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``stage`` on ``x``; return its output and the output of its last block before the final ReLU.

    The last block must have ``forward_preact(x)`` with ``forward(x) == relu(forward_preact(x))``,
    so the output is computed by the same operations as ``stage(x)``."""
    if len(stage) > 1:
        x = stage[:-1](x)
    preact = stage[-1].forward_preact(x)
    return F.relu(preact), preact


def feature_shapes(model: nn.Module, input_size) -> Tuple[List[torch.Size], int]:
    """Shapes of ``model``'s ``"feats"`` for a batch of 2 inputs of ``input_size``, and the width of ``"pooled_feat"``.

    ``input_size`` is ``(C, H, W)`` (a registry entry's ``input_size``) or ``(H, W)`` with 3 channels
    (as mdistiller's ``get_feat_shapes`` takes it). The model runs on zeros of its parameters' dtype
    and device, in eval mode (BatchNorm uses its running statistics, which stay untouched) and without
    gradients; every submodule's train/eval mode is restored afterwards.
    """
    if not hasattr(model, "forward_features"):
        raise TypeError(
            f"{type(model).__name__} has no forward_features(); the models of the KD zoo, the ImageNet "
            f"networks and the digits CNNs have it (models/features.py)"
        )
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) == 2:
        input_size = (3, *input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W) or (H, W), got {input_size}")
    parameter = next(model.parameters(), None)
    options = {} if parameter is None else {"dtype": parameter.dtype, "device": parameter.device}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            _, features = model.forward_features(torch.zeros(2, *input_size, **options))
    finally:
        for module, training in modes:
            module.training = training
    return [f.shape for f in features["feats"]], int(features["pooled_feat"].shape[1])
