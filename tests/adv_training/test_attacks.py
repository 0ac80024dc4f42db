"""PGD with pluggable objectives: constraints, single steps by hand, modes and side effects."""
import pytest
import torch
import torch.nn.functional as F

from adv_training.attacks import attack_mode, natural_logits, pgd
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
    zero_objective = lambda logits: 0 * logits.sum()
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
    logits_nat = natural_logits(model, x)
    assert model.training
    objective = ikl_objective(logits_nat, alpha=1.0, beta=1.0, weights=rows)
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
    return pgd(torch.nn.Flatten(), x, lambda logits: logits.sum(), eps=eps, step_size=0.0, steps=1, norm=norm,
               random_start=random_start, start_keys=keys, start_seed=seed)


def test_a_keyed_start_is_drawn_from_the_samples_own_generator(image_batch):
    x, _ = image_batch()
    keys = torch.arange(100, 100 + len(x))
    eps = 8 / 255
    before = torch.get_rng_state()
    starts = keyed_start(x, keys, seed=3, eps=eps)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    for i, key in enumerate(keys.tolist()):
        generator = torch.Generator().manual_seed(3 * 1_000_003 + key)
        by_hand = (x[i] + torch.empty_like(x[i]).uniform_(-eps, eps, generator=generator)).clamp(0, 1)
        assert torch.equal(starts[i], by_hand)
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 100)
    normal = keyed_start(x, keys, seed=3, eps=eps, random_start="normal")
    torch.testing.assert_close(normal[0], (x[0] + 0.001 * torch.empty_like(x[0]).normal_(generator=generator))
                               .clamp(x[0] - eps, x[0] + eps).clamp(0, 1), rtol=0, atol=0)


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
    assert not torch.equal(model.state_dict()[next(k for k in before if k.endswith("running_mean"))],
                           before[next(k for k in before if k.endswith("running_mean"))])


def test_a_keyed_start_does_not_depend_on_the_memory_format(image_batch):
    x, _ = image_batch()
    x = x.expand(-1, 3, -1, -1).contiguous()  # channels_last needs a 4-d image with channels
    keys = torch.arange(len(x))
    plain = keyed_start(x, keys, seed=5, eps=8 / 255)
    channels_last = keyed_start(x.contiguous(memory_format=torch.channels_last), keys, seed=5, eps=8 / 255)
    assert torch.equal(channels_last, plain)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
