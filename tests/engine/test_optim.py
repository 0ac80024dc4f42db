"""Optimiser parameter groups and the SGD kernels."""

import copy

import pytest
import torch
import torch.nn as nn

from engine.optim import sgd, use_kernel, weight_decay_groups
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


@pytest.mark.parametrize("implementation", ["fused", "foreach", "for_loop"])
def test_every_sgd_kernel_takes_torchs_plain_steps(implementation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    twin = copy.deepcopy(model)
    settings = dict(lr=0.1, momentum=0.9, nesterov=True)
    ours = sgd(
        weight_decay_groups(model, 5e-4, False), implementation=implementation, device=torch.device("cpu"), **settings
    )
    plain = torch.optim.SGD(weight_decay_groups(twin, 5e-4, False), foreach=False, **settings)
    x = torch.randn(16, 5)
    for step in range(4):
        for network, optimizer in ((model, ours), (twin, plain)):
            for group in optimizer.param_groups:
                group["lr"] = 0.1 / (step + 1)  # as the schedules set it every epoch
            optimizer.zero_grad()
            network(x).pow(2).mean().backward()  # a mean: the weights stay O(1) (a sum diverges by step 4)
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert bool(ours.defaults["fused"]) is (implementation == "fused")


def test_auto_sgd_is_torchs_default_on_the_cpu():
    optimizer = sgd(
        [{"params": [nn.Parameter(torch.ones(2))]}],
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        implementation="auto",
        device=torch.device("cpu"),
    )
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"] is None


def test_a_resumed_optimizer_takes_the_kernel_asked_for_now():
    parameter = nn.Parameter(torch.ones(3))
    saved = sgd(
        [{"params": [parameter]}],
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        implementation="for_loop",
        device=torch.device("cpu"),
    )
    parameter.grad = torch.ones(3)
    saved.step()
    resumed = sgd(
        [{"params": [parameter]}],
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        implementation="fused",
        device=torch.device("cpu"),
    )
    resumed.load_state_dict(saved.state_dict())
    assert resumed.param_groups[0]["fused"] is None  # torch brings the saved flags back
    use_kernel(resumed, "fused", torch.device("cpu"))
    assert resumed.param_groups[0]["fused"] is True and resumed.param_groups[0]["foreach"] is None
