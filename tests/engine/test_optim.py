"""Optimiser parameter groups."""
import torch

from engine.optim import weight_decay_groups
from models import build_model


def test_one_group_with_decay_on_everything_by_default():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    (group,) = weight_decay_groups(model, 5e-4)
    assert group["weight_decay"] == 5e-4 and [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


def test_no_decay_on_batchnorm_is_wang_et_als_rule_on_their_model():
    """watrain.py puts every parameter whose name contains 'batchnorm' in a group without decay."""
    model = build_model("wrn-28-10-swish", 10, dataset="cifar10")
    decayed, free = weight_decay_groups(model, 5e-4, batchnorm_weight_decay=False)
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in free["params"]) == sorted(n for n in names.values() if "batchnorm" in n)
    assert len(decayed["params"]) + len(free["params"]) == len(names)
    assert "logits.bias" in {names[id(p)] for p in decayed["params"]}  # the classifier's bias keeps its decay
