"""Each distiller: its flags, warm-up and loss, against the library losses and hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import ConfigError, load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import DISTILLERS, available_distillers, build_distiller, loss_warmup
from losses import ClassPrior, dkd_loss, ikl_loss, kd_loss
from losses.pairwise_oracle import wmse_loss_pairwise


@pytest.fixture
def logits():
    torch.manual_seed(0)
    student, teacher = (
        torch.randn(6, 10, dtype=torch.float64, requires_grad=True),
        torch.randn(6, 10, dtype=torch.float64),
    )
    return student, teacher, torch.randint(0, 10, (6,))


def distiller(name, **overrides):
    cfg = KDConfig(method=name)
    for key, value in overrides.items():
        section, knob = key.split(".")
        setattr(getattr(cfg, section), knob, value)
    return build_distiller(cfg)


def test_the_registry_and_the_config_name_the_same_distillers():
    feature = ["at", "crd", "fitnet", "kdsvd", "nst", "ofd", "pkt", "reviewkd", "rkd", "sp", "vid"]
    assert available_distillers() == sorted(["ctkd", "dist", "dkd", "ikl", "kd", "mlkd", "vanilla", *feature])
    for name in available_distillers():
        load_config(KDConfig, None, [f"method={name}"])
        if (
            name not in feature
        ):  # those are built from the models: tests/knowledge_distillation/test_feature_distillers.py
            assert type(distiller(name)) is DISTILLERS[name] and DISTILLERS[name].name == name
    with pytest.raises(ConfigError, match="'method' must be one of at, crd, ctkd, dist, dkd, .*, vid, got 'dkdd'"):
        build_distiller(load_config(KDConfig, None, ["method=dkdd"]))  # the registry lookup raises the config error


def test_old_keys_keep_working_and_name_their_new_names(capsys):
    cfg = load_config(KDConfig, None, ["distiller=kd", "ikl.weight_temperature=3.5"])
    assert (cfg.method, cfg.ikl.prior_temperature) == ("kd", 3.5)
    err = capsys.readouterr().err
    assert "'distiller' (command line 'distiller=kd') is now called 'method'" in err
    assert (
        "'ikl.weight_temperature' (command line 'ikl.weight_temperature=3.5') is now called 'ikl.prior_temperature'"
        in err
    )


def test_flags():
    assert not distiller("vanilla").needs_teacher and distiller("kd").needs_teacher
    assert [distiller(n).uses_prior for n in ("vanilla", "kd", "dkd", "ikl")] == [False, False, False, False]
    with_prior = distiller("ikl", **{"ikl.class_prior": True, "ikl.prior_temperature": 3.0})
    assert with_prior.uses_prior and with_prior.prior_temperature == 3.0


def test_warmup_factor():
    assert [loss_warmup(e, 20) for e in (1, 10, 20, 21, 240)] == [0.05, 0.5, 1.0, 1.0, 1.0]
    assert loss_warmup(1, 1) == 1.0 and loss_warmup(3, 0) == 1.0


def test_vanilla_and_kd_by_hand(logits):
    student, teacher, targets = logits
    ce = F.cross_entropy(student, targets)
    loss, parts = distiller("vanilla").loss(student, None, targets, epoch=1)
    assert loss.item() == ce.item() and parts["kd"].item() == 0.0
    # Hinton KD by hand: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, mdistiller's 0.1 / 0.9
    p, log_q = F.softmax(teacher / 4.0, dim=1), F.log_softmax(student / 4.0, dim=1)
    hinton = 16.0 * (p * (p.log() - log_q)).sum(1).mean()
    loss, parts = distiller("kd").loss(student, teacher, targets, epoch=1)
    assert loss.item() == pytest.approx((0.1 * ce + 0.9 * hinton).item(), rel=1e-12)
    assert parts["kd"].item() == pytest.approx(0.9 * hinton.item(), rel=1e-12)
    assert kd_loss(student, teacher, 4.0).item() == pytest.approx(hinton.item(), rel=1e-12)


def test_dkd_and_ikl_compose_the_library_losses_with_their_warmup(logits):
    student, teacher, targets = logits
    ce = F.cross_entropy(student, targets)
    loss, _ = distiller("dkd").loss(student, teacher, targets, epoch=5)  # warm-up 20: factor 5/20
    expected = ce + 0.25 * dkd_loss(student, teacher, targets, alpha=1.0, beta=8.0, temperature=4.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)

    loss, parts = distiller("ikl").loss(student, teacher, targets, epoch=30)
    expected = ikl_loss(student, teacher, alpha=1.0, beta=8.0, temperature=4.0, weight_temperature=100.0)
    assert loss.item() == pytest.approx((ce + expected).item(), rel=1e-12)
    assert parts["kd"].item() == pytest.approx(expected.item(), rel=1e-12)

    prior = ClassPrior(10, temperature=100.0)
    prior.update(teacher, targets)
    prior.step()
    loss, _ = distiller("ikl", **{"ikl.class_prior": True}).loss(
        student, teacher, targets, epoch=10, prior_rows=prior.rows(targets)
    )
    expected = ikl_loss(student, teacher, alpha=1.0, beta=8.0, temperature=4.0, weights=prior.rows(targets))
    assert loss.item() == pytest.approx((ce + 0.5 * expected).item(), rel=1e-12)


def test_the_teacher_gets_no_gradient(logits):
    student, teacher, targets = logits
    teacher = teacher.clone().requires_grad_(True)
    for name in ("kd", "dkd", "ikl"):
        loss, _ = distiller(name).loss(student, teacher, targets, epoch=30)
        loss.backward()
        assert teacher.grad is None and math.isfinite(loss.item())


def test_ikl_kd_by_hand_with_the_pairwise_oracle(logits):
    """CE + beta * pairwise wMSE(s, t; softmax(t / T2)) + alpha * soft CE at T, no T^2 (the authors' form)."""
    student, teacher, targets = logits
    weights = F.softmax(teacher / 100.0, dim=1)
    soft = -(F.softmax(teacher / 4.0, dim=1) * F.log_softmax(student / 4.0, dim=1)).sum(1).mean()
    expected = F.cross_entropy(student, targets) + 8.0 * wmse_loss_pairwise(student, teacher, weights) + 1.0 * soft
    loss, _ = distiller("ikl").loss(student, teacher, targets, epoch=20)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    (ours,) = torch.autograd.grad(loss, [student])
    (theirs,) = torch.autograd.grad(expected, [student])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
