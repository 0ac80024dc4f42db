"""Each method's training loss, and AWP's proxy loss, against hand computations."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adv_training.config import ATConfig
from adv_training.methods import training_loss
from losses.reference import wmse_loss_pairwise

NUM_CLASSES = 5
BASIC = 6  # images per view


def soft_ce(logits_student, logits_teacher):
    return -(F.softmax(logits_teacher.detach(), dim=1) * F.log_softmax(logits_student, dim=1)).sum(1).mean()


def ikl_by_hand(logits_adv, logits_nat, rows, alpha, beta):
    """The reference's per-view IKL: beta * pairwise wMSE (no stop-gradient) + alpha * soft CE."""
    return beta * wmse_loss_pairwise(logits_adv, logits_nat, rows) + alpha * soft_ce(logits_adv, logits_nat)


def trades_by_hand(logits_adv, logits_nat, beta):
    return beta * F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")


@pytest.fixture
def dual_view_batch():
    generator = torch.Generator().manual_seed(0)
    x_natural = torch.rand(2 * BASIC, 3, generator=generator, dtype=torch.float64)
    x_adv = x_natural + 0.1 * torch.randn(2 * BASIC, 3, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, NUM_CLASSES, (BASIC,), generator=generator).repeat(2)
    prior = torch.softmax(torch.randn(NUM_CLASSES, NUM_CLASSES, generator=generator, dtype=torch.float64), dim=1)
    model = nn.Linear(3, NUM_CLASSES).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(NUM_CLASSES, 3, generator=generator, dtype=torch.float64))
    return model, x_natural, x_adv, targets, prior[targets]


def config(method, aug_weight):
    cfg = ATConfig(method=method)
    cfg.data.aug_weight = aug_weight
    return cfg


@pytest.mark.parametrize("method", ["ikl", "trades"])
def test_dual_view_training_loss_weights_the_augmented_view_and_awp_averages_both(method, dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    cfg = config(method, aug_weight=0.3)
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    basic, augmented = slice(0, BASIC), slice(BASIC, None)

    def robust(view):
        if method == "ikl":
            return ikl_by_hand(logits_adv[view], logits_nat[view], rows[view], alpha=4.0, beta=20.0)
        return trades_by_hand(logits_adv[view], logits_nat[view], beta=cfg.trades.beta)

    natural = F.cross_entropy(logits_nat, targets)  # both views, unweighted
    expected_training = natural + robust(basic) + 0.3 * robust(augmented)
    expected_awp = natural + 0.5 * (robust(basic) + robust(augmented))
    # The reference's AWP loss is one robust term over the doubled batch; it equals the mean of
    # the two views because both views carry the same labels, hence the same prior rows.
    assert robust(slice(None)).item() == pytest.approx(0.5 * (robust(basic) + robust(augmented)).item(), rel=1e-12)

    training, parts = training_loss(cfg, model, x_natural, x_adv, targets, rows, BASIC)
    awp, _ = training_loss(cfg, model, x_natural, x_adv, targets, rows, BASIC, split_views=False)
    assert training.item() == pytest.approx(expected_training.item(), rel=1e-12)
    assert awp.item() == pytest.approx(expected_awp.item(), rel=1e-12)
    assert parts["natural"].item() == pytest.approx(natural.item(), rel=1e-12)


def test_single_view_batches_have_one_loss_for_training_and_awp(dual_view_batch):
    model, x_natural, x_adv, targets, rows = dual_view_batch
    cfg = config("ikl", aug_weight=0.3)  # ignored without a second view
    training, _ = training_loss(cfg, model, x_natural, x_adv, targets, rows, len(targets))
    awp, _ = training_loss(cfg, model, x_natural, x_adv, targets, rows, len(targets), split_views=False)
    expected = F.cross_entropy(model(x_natural), targets) + ikl_by_hand(model(x_adv), model(x_natural), rows, 4.0, 20.0)
    assert training.item() == awp.item() == pytest.approx(expected.item(), rel=1e-12)
