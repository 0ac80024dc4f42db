"""PGD with pluggable objectives: constraints, single steps by hand, modes and side effects."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adv_training.attacks import attack_mode, keyed_uniform, natural_logits, parameters_frozen, pgd
from adv_training.methods import ikl_objective
from losses import ikl_loss

CLASSES = 3


@pytest.fixture
def trained_model(small_model, image_batch):
    """``trained_model(seed=0)``: `small_model` with dropout after a few SGD steps, so that the
    logits are not near-constant and the BatchNorm statistics are not trivial."""

    def make(seed=0):
        model = small_model(seed, dropout=True)
        x, y = image_batch(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return model

    return make


def ce_objective(targets):
    """The objective of these tests: PGD itself knows no loss."""
    return lambda logits: F.cross_entropy(logits, targets)


def per_sample_l2(tensor):
    return tensor.flatten(1).norm(dim=1)


@pytest.mark.parametrize("random_start", ["normal", "uniform", "none"])
def test_linf_stays_in_ball_and_box(random_start, trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    eps = 8 / 255
    x_adv = pgd(model, x, ce_objective(y), eps=eps, step_size=2 / 255, steps=5, random_start=random_start)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("random_start", ["normal", "uniform", "none"])
def test_l2_stays_in_ball_and_box(random_start, trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    eps = 0.5
    x_adv = pgd(model, x, ce_objective(y), eps=eps, step_size=0.3, steps=5, norm="l2", random_start=random_start)
    assert per_sample_l2(x_adv - x).max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # Big steps: the ball's boundary must actually be reached for some sample.
    assert per_sample_l2(x_adv - x).max() > 0.9 * eps


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.03), ("l2", 1.0, 0.3)])
def test_attack_increases_objective(norm, eps, step, trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    model.eval()
    objective = ce_objective(y)
    with torch.no_grad():
        before = objective(model(x))
    x_adv = pgd(model, x, objective, eps=eps, step_size=step, steps=10, norm=norm, random_start="none")
    with torch.no_grad():
        after = objective(model(x_adv))
    assert after > before + 0.05


def gradient_at(model, x, objective):
    """Independent gradient of the objective w.r.t. the input, in eval mode, via .backward()."""
    model.eval()
    x = x.clone().requires_grad_(True)
    objective(model(x)).backward()
    model.zero_grad(set_to_none=True)
    return x.grad


def test_linf_single_step_by_hand(trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    eps, step = 0.05, 0.08  # step > eps so the projection matters
    objective = ce_objective(y)
    x_adv = pgd(model, x, objective, eps=eps, step_size=step, steps=1, random_start="none")
    grad = gradient_at(model, x, objective)
    expected = torch.max(torch.min(x + step * torch.sign(grad), x + eps), x - eps).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)


def test_l2_single_step_by_hand(trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    objective = ce_objective(y)
    grad = gradient_at(model, x, objective)
    for eps, step in [(10.0, 0.2), (0.1, 0.2)]:  # inside the ball, then cut back to it
        x_adv = pgd(model, x, objective, eps=eps, step_size=step, steps=1, norm="l2", random_start="none")
        expected = x.clone()
        for b in range(len(x)):
            delta = step * grad[b] / grad[b].norm()
            delta = (x[b] + delta).clamp(0, 1) - x[b]
            if delta.norm() > eps:
                delta = delta * eps / delta.norm()
            expected[b] = x[b] + delta
        torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-5)


def test_l2_zero_gradient_gives_no_nan(trained_model, image_batch):
    model = trained_model()
    x, _ = image_batch()

    def zero_objective(logits):
        return 0 * logits.sum()

    for start in ["none", "normal", "uniform"]:
        x_adv = pgd(model, x, zero_objective, eps=0.5, step_size=0.1, steps=3, norm="l2", random_start=start)
        assert torch.isfinite(x_adv).all()
    x_adv = pgd(model, x, zero_objective, eps=0.5, step_size=0.1, steps=3, norm="l2", random_start="none")
    assert torch.equal(x_adv, x)


def test_attack_mode_restores_mixed_flags_even_on_error(trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    model.train()
    model[1].eval()  # BatchNorm frozen by the user
    flags = [m.training for m in model.modules()]
    seen = []

    def failing(logits):
        seen.append([m.training for m in model.modules()])
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError, match="objective failed"):
        pgd(model, x, failing, eps=0.1, step_size=0.01, steps=2)
    assert seen == [[False] * len(flags)]
    assert [m.training for m in model.modules()] == flags

    with pytest.raises(KeyError):
        with attack_mode(model):
            raise KeyError("inside")
    assert [m.training for m in model.modules()] == flags
    with attack_mode(model, eval_mode=False):
        assert [m.training for m in model.modules()] == flags


def test_no_side_effects_on_batchnorm_or_parameter_grads(trained_model, image_batch):
    model = trained_model()
    model.train()
    x, y = image_batch()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = pgd(model, x, ce_objective(y), eps=0.1, step_size=0.02, steps=3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert x_adv.shape == x.shape


def test_works_under_no_grad_and_eps_zero_returns_input(trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    with torch.no_grad():
        x_adv = pgd(model, x, ce_objective(y), eps=0.1, step_size=0.02, steps=2, random_start="none")
    assert not torch.equal(x_adv, x)
    for eps, steps in [(0.0, 3), (0.1, 0)]:
        same = pgd(model, x, ce_objective(y), eps=eps, step_size=0.02, steps=steps)
        assert torch.equal(same, x) and same is not x


def reference_loop(model, x, rows, eps, step, steps):
    """The authors' loop: model(x_natural) recomputed inside every step, eval mode."""
    model.eval()
    x_adv = x + 0.001 * torch.randn(x.shape)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = ikl_loss(model(x_adv), model(x), alpha=1.0, beta=1.0, weights=rows)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


def test_natural_logits_once_equals_recomputing_each_step(trained_model, image_batch):
    model = trained_model()
    model.train()
    x, y = image_batch()
    rows = torch.softmax(torch.randn(len(x), CLASSES, generator=torch.Generator().manual_seed(3)), dim=1)
    eps, step, steps = 8 / 255, 2 / 255, 5

    torch.manual_seed(42)
    logits_natural = natural_logits(model, x)
    assert model.training
    objective = ikl_objective(logits_natural, alpha=1.0, beta=1.0, weights=rows)
    ours = pgd(model, x, objective, eps=eps, step_size=step, steps=steps)

    torch.manual_seed(42)
    theirs = reference_loop(model, x, rows, eps, step, steps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


def test_bad_arguments(small_model, image_batch):
    model = small_model()
    x, y = image_batch()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, ce_objective(y), eps=0.1, step_size=0.1, steps=1, norm="l1")
    with pytest.raises(ValueError, match="random_start"):
        pgd(model, x, ce_objective(y), eps=0.1, step_size=0.1, steps=1, random_start="zeros")
    with pytest.raises(ValueError, match="scalar"):
        pgd(model, x, lambda logits: logits, eps=0.1, step_size=0.1, steps=1)


def keyed_start(x, keys, seed, eps, norm="linf", random_start="uniform"):
    """pgd's start alone: one step of size 0 projects it and moves nothing."""
    return pgd(
        torch.nn.Flatten(),
        x,
        lambda logits: logits.sum(),
        eps=eps,
        step_size=0.0,
        steps=1,
        norm=norm,
        random_start=random_start,
        start_keys=keys,
        start_seed=seed,
    )


def lowbias32(value: int) -> int:
    """C. Wellons' 32-bit hash, in Python integers: the independent statement of `attacks._hash32`."""
    value ^= value >> 16
    value = (value * 0x7FEB352D) % 2**32
    value ^= value >> 15
    value = (value * 0x846CA68B) % 2**32
    return value ^ (value >> 16)


def keyed_uniform_by_hand(seed: int, key: int, index: int, stream: int = 0, count: int = 1) -> np.float32:
    key_hash = lowbias32((seed * 1_000_003 + key) % 2**32)
    return np.float32((lowbias32(lowbias32(stream * count + index) ^ key_hash) >> 8) / 2**24)


def test_keyed_uniform_numbers_are_the_hash_of_seed_key_and_counter():
    keys = torch.tensor([0, 1, 100, 2**32 - 1])
    numbers = keyed_uniform(keys, seed=3, count=5, stream=1)
    assert numbers.dtype == torch.float32 and numbers.shape == (4, 5)
    for row, key in enumerate(keys.tolist()):
        for index in range(5):
            assert numbers[row, index].item() == keyed_uniform_by_hand(3, key, index, stream=1, count=5)


def test_a_keyed_uniform_start_is_its_keys_numbers_scaled_to_the_ball(image_batch):
    x, _ = image_batch()
    keys = torch.arange(100, 100 + len(x))
    eps = 8 / 255
    before = torch.get_rng_state()
    starts = keyed_start(x, keys, seed=3, eps=eps)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    flat_x = x.flatten(1).numpy()
    for i, key in enumerate(keys.tolist()):
        for j in (0, 1, x[0].numel() - 1):
            u = keyed_uniform_by_hand(3, key, j, count=x[0].numel())
            by_hand = np.clip(flat_x[i, j] + (np.float32(2) * u - np.float32(1)) * np.float32(eps), 0, 1)
            assert starts.flatten(1)[i, j].item() == by_hand
    normal = keyed_start(x, keys, seed=3, eps=eps, random_start="normal") - x
    assert 0 < normal.abs().max() < 0.01  # the tiny Gaussian start of TRADES (std 0.001), projected


def test_keyed_numbers_are_uniform_and_unrelated_across_neighbouring_keys():
    numbers = keyed_uniform(torch.arange(2000), seed=1, count=1000).double()
    assert abs(numbers.mean().item() - 0.5) < 0.002 and abs(numbers.var().item() - 1 / 12) < 0.001
    counts = torch.histc(numbers, bins=20, min=0, max=1)
    chi_square = ((counts - numbers.numel() / 20) ** 2 / (numbers.numel() / 20)).sum().item()
    assert chi_square < 43.8  # 19 degrees of freedom, p = 0.001
    across_keys = torch.corrcoef(torch.stack([numbers[:-1].flatten(), numbers[1:].flatten()]))[0, 1]
    along_a_row = torch.corrcoef(torch.stack([numbers[:, :-1].flatten(), numbers[:, 1:].flatten()]))[0, 1]
    assert abs(across_keys.item()) < 0.005 and abs(along_a_row.item()) < 0.005  # keys k, k + 1; numbers i, i + 1


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_a_keyed_start_does_not_depend_on_the_batch(norm, eps, image_batch):
    x, _ = image_batch()
    keys = torch.tensor([7, 0, 3, 12, 5, 9, 1, 4])[: len(x)]
    whole = keyed_start(x, keys, seed=1, eps=eps, norm=norm)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert torch.equal(keyed_start(x[order], keys[order], seed=1, eps=eps, norm=norm), whole[order])
    halves = [keyed_start(x[part], keys[part], seed=1, eps=eps, norm=norm) for part in (slice(0, 3), slice(3, None))]
    assert torch.equal(torch.cat(halves), whole)
    assert not torch.equal(keyed_start(x, keys, seed=2, eps=eps, norm=norm), whole)  # the seed matters
    assert not torch.equal(whole[0], keyed_start(x[:1], keys[1:2], seed=1, eps=eps, norm=norm)[0])  # so does the key
    if norm == "l2":
        assert per_sample_l2(whole - x).max() <= eps + 1e-6 and per_sample_l2(whole - x).min() > 0


def test_bad_start_keys(image_batch):
    x, _ = image_batch()
    with pytest.raises(ValueError, match="one key per sample"):
        keyed_start(x, torch.arange(len(x) - 1), seed=0, eps=0.1)
    with pytest.raises(ValueError, match="keys must lie in"):
        keyed_start(x, torch.arange(len(x)) - 1, seed=0, eps=0.1)
    with pytest.raises(ValueError, match="start_seed"):
        keyed_start(x, torch.arange(len(x)), seed=-1, eps=0.1)


def test_a_train_mode_attack_with_frozen_bn_stats_uses_batch_statistics_and_updates_nothing(trained_model, image_batch):
    model = trained_model()
    x, y = image_batch()
    model.train()
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    frozen = natural_logits(model, x, eval_mode=False, freeze_bn_stats=True)
    pgd(model, x, ce_objective(y), eps=8 / 255, step_size=2 / 255, steps=3, eval_mode=False, freeze_bn_stats=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running statistics and counters untouched
    assert all(m.track_running_stats and m.training for m in batchnorms)  # restored
    # the batch's statistics, i.e. what a training-mode forward computes (which does update them)
    torch.manual_seed(0)
    with torch.no_grad():
        updating = model(x)
    torch.testing.assert_close(frozen, updating, rtol=0, atol=0)
    assert not torch.equal(
        model.state_dict()[next(k for k in before if k.endswith("running_mean"))],
        before[next(k for k in before if k.endswith("running_mean"))],
    )


def test_a_keyed_start_does_not_depend_on_the_memory_format(image_batch):
    x, _ = image_batch()
    x = x.expand(-1, 3, -1, -1).contiguous()  # channels_last needs a 4-d image with channels
    keys = torch.arange(len(x))
    plain = keyed_start(x, keys, seed=5, eps=8 / 255)
    channels_last = keyed_start(x.contiguous(memory_format=torch.channels_last), keys, seed=5, eps=8 / 255)
    assert torch.equal(channels_last, plain)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_no_parameter_requires_grad_during_an_attack_and_every_flag_comes_back(small_model, image_batch):
    model = small_model()
    x, y = image_batch()
    frozen_before = next(model.parameters())
    frozen_before.requires_grad_(False)  # a deliberately frozen layer stays frozen
    seen = []

    def objective(logits):
        seen.append([p.requires_grad for p in model.parameters()])
        return F.cross_entropy(logits, y)

    pgd(model, x, objective, eps=8 / 255, step_size=2 / 255, steps=2)
    assert len(seen) == 2 and not any(any(flags) for flags in seen)
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * (len(list(model.parameters())) - 1)

    def failing(logits):
        raise RuntimeError("an objective that fails")

    with pytest.raises(RuntimeError, match="fails"):
        pgd(model, x, failing, eps=8 / 255, step_size=2 / 255, steps=1)
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * (len(list(model.parameters())) - 1)
    with parameters_frozen(model):
        assert not any(p.requires_grad for p in model.parameters())


def test_a_compiled_attack_computes_no_weight_gradient(image_batch):
    """The backward graph torch.compile traces for an attack step asks convolution_backward for the
    input's gradient only (output mask T, F, F); with the weights requiring grad it asked for all three."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    masks = []

    def backward_compiler(graph, example_inputs):
        masks.extend(
            tuple(node.args[-1])
            for node in graph.graph.nodes
            if node.target is torch.ops.aten.convolution_backward.default
        )
        return make_boxed_func(graph)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 3)
    )  # 4x4 images
    x, y = image_batch()
    torch._dynamo.reset()
    compiled = torch.compile(
        model,
        backend=aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g), bw_compiler=backward_compiler),
        dynamic=False,
    )
    pgd(compiled, x, lambda logits: F.cross_entropy(logits, y), eps=8 / 255, step_size=2 / 255, steps=2)
    torch._dynamo.reset()
    assert masks == [(True, False, False)]
