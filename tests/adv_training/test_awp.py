"""Adversarial weight perturbation: which weights, their size, direction, and restoring them."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adv_training.awp import AdversarialWeightPerturbation

CLASSES = 3


def ce_loss_fn(x, y):
    return lambda net: F.cross_entropy(net(x), y)


def test_diff_covers_multidim_weights_with_their_norms(small_model, image_batch):
    model = small_model(side=2)
    x, y = image_batch(size=6, side=2)
    diff = AdversarialWeightPerturbation(model, gamma=0.01).compute(ce_loss_fn(x, y))
    assert set(diff) == {"0.weight", "4.weight"}  # not BN's weight, not any bias
    parameters = dict(model.named_parameters())
    for name, delta in diff.items():
        assert delta.shape == parameters[name].shape and not delta.requires_grad
        torch.testing.assert_close(delta.norm(), parameters[name].detach().norm())


def test_compute_leaves_model_untouched(small_model, image_batch):
    model = small_model(side=2)
    model.train()
    x, y = image_batch(size=6, side=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    AdversarialWeightPerturbation(model, gamma=0.01).compute(ce_loss_fn(x, y))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running stats and weights
    assert all(p.grad is None for p in model.parameters())


def test_perturbed_adds_and_restores_even_on_error(small_model, image_batch):
    model = small_model(side=2)
    x, y = image_batch(size=6, side=2)
    gamma = 0.05
    awp = AdversarialWeightPerturbation(model, gamma=gamma)
    diff = awp.compute(ce_loss_fn(x, y))
    original = {k: v.detach().clone() for k, v in model.named_parameters()}
    with awp.perturbed(diff):
        for name, parameter in model.named_parameters():
            expected = original[name] + gamma * diff[name] if name in diff else original[name]
            torch.testing.assert_close(parameter.detach(), expected)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), original[name])

    with pytest.raises(FloatingPointError):
        with awp.perturbed(diff):
            raise FloatingPointError("NaN loss")
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), original[name])


def test_optimizer_step_inside_perturbation_is_kept(small_model, image_batch):
    model = small_model(side=2)
    x, y = image_batch(size=6, side=2)
    awp = AdversarialWeightPerturbation(model, gamma=0.05)
    diff = awp.compute(ce_loss_fn(x, y))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    original = {k: v.detach().clone() for k, v in model.named_parameters()}
    with awp.perturbed(diff):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        optimizer.step()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), original[name] - 0.1 * grads[name])


def test_proxy_lr_cancels(small_model, image_batch):
    # float64: the proxy step w + lr * g - w loses float32 digits at small lr, which is not the point
    x, y = image_batch(size=6, side=2)
    x = x.double()
    first = AdversarialWeightPerturbation(small_model(side=2).double(), gamma=0.01, proxy_lr=0.01).compute(
        ce_loss_fn(x, y)
    )
    second = AdversarialWeightPerturbation(small_model(side=2).double(), gamma=0.01, proxy_lr=1.0).compute(
        ce_loss_fn(x, y)
    )
    assert set(first) == set(second)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-9, atol=1e-12)


def test_direction_is_the_loss_gradient_on_a_linear_layer():
    torch.manual_seed(1)
    model = nn.Linear(4, CLASSES)
    x, y = torch.randn(5, 4), torch.randint(0, CLASSES, (5,))
    awp = AdversarialWeightPerturbation(model, gamma=0.01, proxy_lr=0.1)
    diff = awp.compute(lambda net: F.cross_entropy(net(x), y))

    weight = model.weight.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(x @ weight.t() + model.bias.detach(), y), [weight])
    expected = grad * weight.detach().norm() / grad.norm()
    assert set(diff) == {"weight"}
    torch.testing.assert_close(diff["weight"], expected, rtol=1e-4, atol=1e-6)


def test_zero_proxy_lr_gives_no_perturbation_and_state_round_trip(small_model, image_batch):
    x, y = image_batch(size=6, side=2)
    diff = AdversarialWeightPerturbation(small_model(side=2), gamma=0.01, proxy_lr=0.0).compute(ce_loss_fn(x, y))
    assert all(torch.equal(d, torch.zeros_like(d)) for d in diff.values())

    awp = AdversarialWeightPerturbation(small_model(side=2), gamma=0.01, proxy_lr=0.3)
    other = AdversarialWeightPerturbation(small_model(side=2), gamma=0.01, proxy_lr=0.01)
    other.load_state_dict(awp.state_dict())
    assert other.proxy_optimizer.param_groups[0]["lr"] == 0.3
