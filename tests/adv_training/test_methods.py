"""Each adversarial-training method: its flags, attack objective, training loss and AWP's proxy
loss, against hand computations written from the papers' formulas."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adv_training.config import ATConfig
from adv_training.methods import MART, METHODS, Method, available_methods, build_method, check_method, register
from adv_training.train import BatchLoss
from engine.config import ConfigError, load_config
from losses.pairwise_oracle import wmse_loss_pairwise

NUM_CLASSES = 5
BASIC = 6  # images per view


def soft_ce(logits_student, logits_teacher):
    return -(F.softmax(logits_teacher.detach(), dim=1) * F.log_softmax(logits_student, dim=1)).sum(1).mean()


def ikl_by_hand(logits_adv, logits_natural, rows, alpha, beta):
    """The reference's per-view IKL: beta * pairwise wMSE (no stop-gradient) + alpha * soft CE."""
    return beta * wmse_loss_pairwise(logits_adv, logits_natural, rows) + alpha * soft_ce(logits_adv, logits_natural)


def trades_by_hand(logits_adv, logits_natural, beta):
    return beta * F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="batchmean")


def mart_by_hand(logits_adv, logits_natural, targets, beta):
    """MART (Wang et al., 2020, eq. 7), one sample at a time with Python loops over classes."""
    total = 0.0
    for b, y in enumerate(targets.tolist()):
        p_adv, p_nat = F.softmax(logits_adv[b], dim=0), F.softmax(logits_natural[b], dim=0)
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
    if name == "dajat":  # DAJAT trains on augmented views
        cfg.data.augment = "autoaug"
    if name == "las_at":  # LAS-AT's strategy draws every budget: no schedule to ramp
        cfg.attack.eps_ramp = False
    for key, value in overrides.items():
        section, knob = key.split(".")
        setattr(getattr(cfg, section), knob, value)
    return build_method(cfg, NUM_CLASSES)


def test_the_registry_holds_every_method_and_the_config_accepts_exactly_those():
    assert available_methods() == ["dajat", "ikl", "las_at", "lbgat", "mart", "pgd", "standard", "trades"]
    for name in available_methods():
        assert load_config(ATConfig, None, [f"method={name}"]).method == name
        assert type(method(name)) is METHODS[name] and METHODS[name].name == name
    with pytest.raises(
        ConfigError,
        match="'method' must be one of dajat, ikl, las_at, lbgat, mart, pgd, standard, trades, got 'ilk'; did you mean 'ikl'",
    ):
        check_method(load_config(ATConfig, None, ["method=ilk"]))  # the registry lookup raises the config error


def test_flags_say_what_each_method_needs():
    flags = {
        name: (m.has_attack, m.attack_needs_natural_logits, m.forwards_natural, m.uses_prior, m.awp_on_basic_view)
        for name, m in ((name, method(name)) for name in available_methods())
    }
    assert flags == {
        "ikl": (True, True, True, True, False),
        "trades": (True, True, True, False, False),
        "pgd": (True, False, False, False, False),
        "mart": (True, False, True, False, False),
        "standard": (False, False, False, False, False),
        "lbgat": (True, True, True, False, False),
        "dajat": (True, True, True, False, True),
        "las_at": (True, False, False, False, False),
    }
    # LBGAT has a network of its own run in the step (its natural classifier), built for the run's classes;
    # LAS-AT's strategy network trains apart, with its own optimiser
    owners = [name for name in available_methods() if method(name).has_parameters()]
    assert owners == ["las_at", "lbgat"] and method("lbgat")(torch.rand(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    assert [name for name in available_methods() if method(name).forwards_own_networks] == ["lbgat"]
    assert method("las_at").parameter_groups(5e-4) == []
    assert all(not method(name).has_state() for name in available_methods() if name not in owners)
    assert method("ikl", **{"ikl.prior_temperature": 2.5}).prior_temperature == 2.5


def test_attack_objectives_by_hand(dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    logits_adv, logits_natural = model(x_adv), model(x_natural)
    ikl = method("ikl", **{"attack.alpha": 1.0, "attack.beta": 1.0, "ikl.gamma": 0.4}).attack_objective(
        logits_natural, targets, rows
    )
    # the attack uses gamma 1 whatever the training gamma, as the reference
    assert ikl(logits_adv).item() == pytest.approx(
        ikl_by_hand(logits_adv, logits_natural, rows, 1.0, 1.0).item(), rel=1e-12
    )
    cifar10 = method("ikl", **{"attack.beta": 0.0}).attack_objective(logits_natural, targets, rows)
    assert cifar10(logits_adv).item() == pytest.approx(soft_ce(logits_adv, logits_natural).item(), rel=1e-12)
    trades = method("trades").attack_objective(logits_natural, targets, None)
    assert trades(logits_adv).item() == pytest.approx(trades_by_hand(logits_adv, logits_natural, 1.0).item(), rel=1e-12)
    for name in ("pgd", "mart"):
        ce = method(name).attack_objective(None, targets, None)
        assert ce(logits_adv).item() == pytest.approx(F.cross_entropy(logits_adv, targets).item(), rel=1e-12)


@pytest.mark.parametrize("name", ["ikl", "trades", "pgd", "standard", "mart"])
def test_single_view_training_loss_by_hand(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    x_adv = x_natural if name == "standard" else x_adv  # what the trainer passes without an attack
    logits_adv, logits_natural = model(x_adv), model(x_natural)
    expected = {
        "ikl": lambda: (
            F.cross_entropy(logits_natural, targets) + ikl_by_hand(logits_adv, logits_natural, rows, 4.0, 20.0)
        ),
        "trades": lambda: F.cross_entropy(logits_natural, targets) + trades_by_hand(logits_adv, logits_natural, 6.0),
        "pgd": lambda: F.cross_entropy(logits_adv, targets),
        "standard": lambda: F.cross_entropy(logits_natural, targets),
        "mart": lambda: mart_by_hand(logits_adv, logits_natural, targets, 6.0),
    }[name]()
    rows = rows if name == "ikl" else None
    loss, step = batch_loss(method(name), x_natural, x_adv, targets, rows, len(targets))(model)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    awp_loss = batch_loss(method(name), x_natural, x_adv, targets, rows, len(targets)).awp_proxy(model)
    assert awp_loss.item() == loss.item()
    # gradients with respect to the weights agree with the hand formula's too
    (ours,) = torch.autograd.grad(loss, [model.weight])
    (theirs,) = torch.autograd.grad(expected, [model.weight])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert (step.logits_natural is None) == (name in ("pgd", "standard"))
    assert torch.equal(step.logits_adv, logits_adv.detach())  # what the trainer's accuracy reads
    if step.logits_natural is not None:
        assert torch.equal(step.logits_natural, logits_natural.detach())


def batch_loss(chosen, x_natural, x_adv, targets, rows, basic_size):
    """The trainer's loss of one batch (its forwards, then the method's loss), in one process, fp32."""
    return BatchLoss(chosen, None, x_natural, x_adv, targets, rows, basic_size, torch.device("cpu"), "fp32", None)


def smooth_ce_by_hand(logits, targets, smoothing):
    """Wang et al.'s SmoothCrossEntropyLoss: (1 - ls) * NLL + ls * mean over classes of -log p."""
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    return ((1 - smoothing) * nll + smoothing * (-log_p.mean(dim=1))).mean()


@pytest.mark.parametrize("name", ["ikl", "trades"])
def test_label_smoothing_smooths_the_clean_term_only(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    logits_adv, logits_natural = model(x_adv), model(x_natural)
    robust = (
        ikl_by_hand(logits_adv, logits_natural, rows, 4.0, 20.0)
        if name == "ikl"
        else trades_by_hand(logits_adv, logits_natural, 6.0)
    )
    cfg = ATConfig(method=name, label_smoothing=0.1)
    _, step = batch_loss(
        build_method(cfg, NUM_CLASSES), x_natural, x_adv, targets, rows if name == "ikl" else None, len(targets)
    )(model)
    assert step.natural.item() == pytest.approx(smooth_ce_by_hand(logits_natural, targets, 0.1).item(), rel=1e-12)
    assert step.robust.item() == pytest.approx(robust.item(), rel=1e-12)
    assert step.natural.item() != pytest.approx(F.cross_entropy(logits_natural, targets).item(), rel=1e-3)


@pytest.mark.parametrize("name", ["ikl", "trades"])
def test_dual_view_training_loss_weights_the_augmented_view_and_awp_averages_both(name, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    chosen = method(name, **{"data.aug_weight": 0.3})
    logits_adv, logits_natural = model(x_adv), model(x_natural)
    basic, augmented = slice(0, BASIC), slice(BASIC, None)

    def robust(view):
        if name == "ikl":
            return ikl_by_hand(logits_adv[view], logits_natural[view], rows[view], alpha=4.0, beta=20.0)
        return trades_by_hand(logits_adv[view], logits_natural[view], beta=6.0)

    natural = F.cross_entropy(logits_natural, targets)  # both views, unweighted
    expected_training = natural + robust(basic) + 0.3 * robust(augmented)
    expected_awp = natural + 0.5 * (robust(basic) + robust(augmented))
    # The reference's AWP loss is one robust term over the doubled batch; it equals the mean of
    # the two views because both views carry the same labels, hence the same prior rows.
    assert robust(slice(None)).item() == pytest.approx(0.5 * (robust(basic) + robust(augmented)).item(), rel=1e-12)

    rows = rows if name == "ikl" else None
    training, step = batch_loss(chosen, x_natural, x_adv, targets, rows, BASIC)(model)
    awp = batch_loss(chosen, x_natural, x_adv, targets, rows, BASIC).awp_proxy(model)
    assert training.item() == pytest.approx(expected_training.item(), rel=1e-12)
    assert awp.item() == pytest.approx(expected_awp.item(), rel=1e-12)
    assert step.natural.item() == pytest.approx(natural.item(), rel=1e-12)


def test_mart_matches_its_paper_on_a_hand_computed_case():
    # Two classes, one sample: p' = softmax(0, ln 3) = (1/4, 3/4), p = softmax(0, 0) = (1/2, 1/2), y = 0.
    logits_adv = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    logits_natural = torch.zeros(1, 2, dtype=torch.float64)
    targets = torch.tensor([0])
    bce = -math.log(1 / 4) - math.log(1 - 3 / 4)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expected = bce + 6.0 * kl * (1 - 0.5)
    assert method("mart").robust_loss(logits_adv, logits_natural, targets, None).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_a_new_method_is_one_registered_class():
    """What the README's "adding a method" shows, done here in a test: register, configure, run."""

    @register("ce_on_both")
    class CEOnBoth(Method):
        def robust_loss(self, logits_adv, logits_natural, targets, prior_rows):
            return F.cross_entropy(logits_adv, targets)

    try:
        cfg = load_config(ATConfig, None, ["method=ce_on_both"])
        chosen = build_method(cfg, NUM_CLASSES)
        assert isinstance(chosen, CEOnBoth) and chosen.name == "ce_on_both"
        with pytest.raises(ValueError, match="registered twice"):
            register("ce_on_both")(CEOnBoth)
    finally:
        del METHODS["ce_on_both"]
    assert MART.name == "mart"


def test_the_code_blocks_of_adding_a_method_are_the_code_they_name():
    """Each ```python block of docs/adding_a_method.md names a file on its first line (``# path``); its
    other non-empty lines are lines of that file, in order (lines may be left out between them)."""
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "adding_a_method.md").read_text(encoding="utf-8")
    blocks = [part.split("```", 1)[0] for part in page.split("```python\n")[1:]]
    assert len(blocks) >= 4  # an AT method, one with a network of its own, a logit and a feature distiller
    for block in blocks:
        first, *shown = [line for line in block.splitlines() if line.strip()]
        path = root / first.removeprefix("# ")
        source = iter(path.read_text(encoding="utf-8").splitlines())
        missing = [line for line in shown if not any(line == candidate for candidate in source)]
        assert not missing, f"docs/adding_a_method.md lines not in {first[2:]}, in order: {missing}"
        assert len(shown) >= 10
