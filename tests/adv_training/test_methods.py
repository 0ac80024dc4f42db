"""Each adversarial-training method: its flags, attack objective, training loss and AWP's proxy
loss, against hand computations written from the papers' formulas."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adv_training.config import ATConfig
from adv_training.methods import MART, METHODS, Method, available_methods, build_method, register
from adv_training.train import BatchLoss
from engine.config import ConfigError, load_config
from losses.pairwise_oracle import wmse_loss_pairwise

NUM_CLASSES = 5
BASIC = 6  # images per view


def soft_ce(logits_student, logits_teacher):
    return -(F.softmax(logits_teacher.detach(), dim=1) * F.log_softmax(logits_student, dim=1)).sum(1).mean()


def ikl_by_hand(logits_adv, logits_nat, rows, alpha, beta):
    """The reference's per-view IKL: beta * pairwise wMSE (no stop-gradient) + alpha * soft CE."""
    return beta * wmse_loss_pairwise(logits_adv, logits_nat, rows) + alpha * soft_ce(logits_adv, logits_nat)


def trades_by_hand(logits_adv, logits_nat, beta):
    return beta * F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")


def mart_by_hand(logits_adv, logits_nat, targets, beta):
    """MART (Wang et al., 2020, eq. 7), one sample at a time with Python loops over classes."""
    total = 0.0
    for b, y in enumerate(targets.tolist()):
        p_adv, p_nat = F.softmax(logits_adv[b], dim=0), F.softmax(logits_nat[b], dim=0)
        wrong = max(p_adv[k] for k in range(NUM_CLASSES) if k != y)
        bce = -torch.log(p_adv[y]) - torch.log(1 - wrong)
        kl = sum(p_nat[k] * (torch.log(p_nat[k]) - torch.log(p_adv[k])) for k in range(NUM_CLASSES))
        total = total + bce + beta * kl * (1 - p_nat[y])
    return total / len(targets)


@pytest.fixture
def dual_view_batch():
    """A linear model on 3 features, float64; two views of BASIC images sharing their labels."""
    generator = torch.Generator().manual_seed(0)
    x_natural = torch.rand(2 * BASIC, 3, generator=generator, dtype=torch.float64)
    x_adv = x_natural + 0.1 * torch.randn(2 * BASIC, 3, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, NUM_CLASSES, (BASIC,), generator=generator).repeat(2)
    prior = torch.softmax(torch.randn(NUM_CLASSES, NUM_CLASSES, generator=generator, dtype=torch.float64), dim=1)
    model = nn.Linear(3, NUM_CLASSES).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(NUM_CLASSES, 3, generator=generator, dtype=torch.float64))
    return model, x_natural, x_adv, targets, prior[targets]


def method(name, **overrides):
    cfg = ATConfig(method=name)
    cfg.awp.enabled = name != "lbgat"  # LBGAT refuses AWP (its AWP recipe is not published)
    for key, value in overrides.items():
        section, knob = key.split(".")
        setattr(getattr(cfg, section), knob, value)
    return build_method(cfg)


def test_the_registry_holds_every_method_and_the_config_accepts_exactly_those():
    assert available_methods() == ["ikl", "lbgat", "mart", "pgd", "standard", "trades"]
    for name in available_methods():
        assert load_config(ATConfig, None, [f"method={name}"]).method == name
        assert type(method(name)) is METHODS[name] and METHODS[name].name == name
    with pytest.raises(
        ConfigError,
        match="'method' must be one of ikl, lbgat, mart, pgd, standard, trades, got 'ilk'; did you mean 'ikl'",
    ):
        build_method(load_config(ATConfig, None, ["method=ilk"]))  # the registry lookup raises the config error


def test_flags_say_what_each_method_needs():
    flags = {
        name: (m.attacks, m.attack_needs_natural_logits, m.forwards_natural, m.uses_prior)
        for name, m in ((name, method(name)) for name in available_methods())
    }
    assert flags == {
        "ikl": (True, True, True, True),
        "trades": (True, True, True, False),
        "pgd": (True, False, False, False),
        "mart": (True, False, True, False),
        "standard": (False, False, False, False),
        "lbgat": (True, True, True, False),
    }
    assert method("lbgat").companion_arch == "ResNet18_cifar" and method("ikl").companion_arch is None
    assert method("ikl", **{"ikl.prior_temperature": 2.5}).prior_temperature == 2.5


def test_attack_objectives_by_hand(dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    ikl = method("ikl", **{"attack.alpha": 1.0, "attack.beta": 1.0, "ikl.gamma": 0.4}).attack_objective(
        logits_nat, targets, rows
    )
    # the attack uses gamma 1 whatever the training gamma, as the reference
    assert ikl(logits_adv).item() == pytest.approx(
        ikl_by_hand(logits_adv, logits_nat, rows, 1.0, 1.0).item(), rel=1e-12
    )
    cifar10 = method("ikl", **{"attack.beta": 0.0}).attack_objective(logits_nat, targets, rows)
    assert cifar10(logits_adv).item() == pytest.approx(soft_ce(logits_adv, logits_nat).item(), rel=1e-12)
    trades = method("trades").attack_objective(logits_nat, targets, None)
    assert trades(logits_adv).item() == pytest.approx(trades_by_hand(logits_adv, logits_nat, 1.0).item(), rel=1e-12)
    for name in ("pgd", "mart"):
        ce = method(name).attack_objective(None, targets, None)
        assert ce(logits_adv).item() == pytest.approx(F.cross_entropy(logits_adv, targets).item(), rel=1e-12)


@pytest.mark.parametrize("name", ["ikl", "trades", "pgd", "standard", "mart"])
def test_single_view_training_loss_by_hand(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    x_adv = x_natural if name == "standard" else x_adv  # what the trainer passes without an attack
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    expected = {
        "ikl": lambda: F.cross_entropy(logits_nat, targets) + ikl_by_hand(logits_adv, logits_nat, rows, 4.0, 20.0),
        "trades": lambda: F.cross_entropy(logits_nat, targets) + trades_by_hand(logits_adv, logits_nat, 6.0),
        "pgd": lambda: F.cross_entropy(logits_adv, targets),
        "standard": lambda: F.cross_entropy(logits_nat, targets),
        "mart": lambda: mart_by_hand(logits_adv, logits_nat, targets, 6.0),
    }[name]()
    rows = rows if name == "ikl" else None
    loss, parts = batch_loss(method(name), x_natural, x_adv, targets, rows, len(targets))(model)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    awp_loss, _ = batch_loss(method(name), x_natural, x_adv, targets, rows, len(targets))(model, split_views=False)
    assert awp_loss.item() == loss.item()
    # gradients with respect to the weights agree with the hand formula's too
    (ours,) = torch.autograd.grad(loss, [model.weight])
    (theirs,) = torch.autograd.grad(expected, [model.weight])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert (parts["logits_nat"] is None) == (name in ("pgd", "standard"))


def batch_loss(chosen, x_natural, x_adv, targets, rows, basic_size):
    """The trainer's loss of one batch (its forwards, then the method's loss), in one process, fp32."""
    return BatchLoss(chosen, x_natural, x_adv, targets, rows, basic_size, torch.device("cpu"), "fp32", None)


def smooth_ce_by_hand(logits, targets, smoothing):
    """Wang et al.'s SmoothCrossEntropyLoss: (1 - ls) * NLL + ls * mean over classes of -log p."""
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    return ((1 - smoothing) * nll + smoothing * (-log_p.mean(dim=1))).mean()


@pytest.mark.parametrize("name", ["ikl", "trades"])
def test_label_smoothing_smooths_the_clean_term_only(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    robust = (
        ikl_by_hand(logits_adv, logits_nat, rows, 4.0, 20.0)
        if name == "ikl"
        else trades_by_hand(logits_adv, logits_nat, 6.0)
    )
    cfg = ATConfig(method=name, label_smoothing=0.1)
    loss, parts = batch_loss(
        build_method(cfg), x_natural, x_adv, targets, rows if name == "ikl" else None, len(targets)
    )(model)
    assert parts["natural"].item() == pytest.approx(smooth_ce_by_hand(logits_nat, targets, 0.1).item(), rel=1e-12)
    assert parts["robust"].item() == pytest.approx(robust.item(), rel=1e-12)
    assert parts["natural"].item() != pytest.approx(F.cross_entropy(logits_nat, targets).item(), rel=1e-3)


@pytest.mark.parametrize("name", ["ikl", "trades"])
def test_dual_view_training_loss_weights_the_augmented_view_and_awp_averages_both(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    chosen = method(name, **{"data.aug_weight": 0.3})
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    basic, augmented = slice(0, BASIC), slice(BASIC, None)

    def robust(view):
        if name == "ikl":
            return ikl_by_hand(logits_adv[view], logits_nat[view], rows[view], alpha=4.0, beta=20.0)
        return trades_by_hand(logits_adv[view], logits_nat[view], beta=6.0)

    natural = F.cross_entropy(logits_nat, targets)  # both views, unweighted
    expected_training = natural + robust(basic) + 0.3 * robust(augmented)
    expected_awp = natural + 0.5 * (robust(basic) + robust(augmented))
    # The reference's AWP loss is one robust term over the doubled batch; it equals the mean of
    # the two views because both views carry the same labels, hence the same prior rows.
    assert robust(slice(None)).item() == pytest.approx(0.5 * (robust(basic) + robust(augmented)).item(), rel=1e-12)

    rows = rows if name == "ikl" else None
    training, parts = batch_loss(chosen, x_natural, x_adv, targets, rows, BASIC)(model)
    awp, _ = batch_loss(chosen, x_natural, x_adv, targets, rows, BASIC)(model, split_views=False)
    assert training.item() == pytest.approx(expected_training.item(), rel=1e-12)
    assert awp.item() == pytest.approx(expected_awp.item(), rel=1e-12)
    assert parts["natural"].item() == pytest.approx(natural.item(), rel=1e-12)


def test_mart_matches_its_paper_on_a_hand_computed_case():
    # Two classes, one sample: p' = softmax(0, ln 3) = (1/4, 3/4), p = softmax(0, 0) = (1/2, 1/2), y = 0.
    logits_adv = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    logits_nat = torch.zeros(1, 2, dtype=torch.float64)
    targets = torch.tensor([0])
    bce = -math.log(1 / 4) - math.log(1 - 3 / 4)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expected = bce + 6.0 * kl * (1 - 0.5)
    assert method("mart").robust_loss(logits_adv, logits_nat, targets, None).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_a_new_method_is_one_registered_class():
    """What the README's "adding a method" shows, done here in a test: register, configure, run."""

    @register("ce_on_both")
    class CEOnBoth(Method):
        def robust_loss(self, logits_adv, logits_nat, targets, prior_rows):
            return F.cross_entropy(logits_adv, targets)

    try:
        cfg = load_config(ATConfig, None, ["method=ce_on_both"])
        chosen = build_method(cfg)
        assert isinstance(chosen, CEOnBoth) and chosen.name == "ce_on_both"
        with pytest.raises(ValueError, match="registered twice"):
            register("ce_on_both")(CEOnBoth)
    finally:
        del METHODS["ce_on_both"]
    assert MART.name == "mart"


def test_the_readme_example_is_the_code_of_methods_py():
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "adding_a_method.md").read_text(encoding="utf-8")
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line.strip()]
    source = iter((root / "adv_training" / "methods.py").read_text(encoding="utf-8").splitlines())
    missing = [line for line in shown if not any(line == candidate for candidate in source)]
    assert not missing, f"docs/adding_a_method.md lines not in methods.py, in order: {missing}"
    assert len(shown) >= 15
