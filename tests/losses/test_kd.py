"""Baselines against hand-worked numbers and the identities their papers state."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import dkd_loss, kd_loss, trades_kl_loss


def softmax_list(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl_list(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kd_loss_hand_computed_two_classes():
    # T = 2: teacher logits (2, 0) -> softmax(1, 0); student (0, 0) -> uniform.
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    p1 = math.e / (math.e + 1)
    expected = 4.0 * (p1 * math.log(2 * p1) + (1 - p1) * math.log(2 * (1 - p1)))
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_kd_loss_is_t_squared_batchmean_kl():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    reference = 16.0 * F.kl_div(F.log_softmax(student / 4, 1), F.softmax(teacher / 4, 1), reduction="batchmean")
    torch.testing.assert_close(kd_loss(student, teacher), reference)


def dkd_by_hand(student, teacher, target, alpha, beta, temperature):
    """One sample, with Python floats: TCKD on [p_y, 1 - p_y], NCKD on the non-target softmax."""
    p_s, p_t = softmax_list(student, temperature), softmax_list(teacher, temperature)
    tckd = kl_list([p_t[target], 1 - p_t[target]], [p_s[target], 1 - p_s[target]])
    rest_s = softmax_list([v for i, v in enumerate(student) if i != target], temperature)
    rest_t = softmax_list([v for i, v in enumerate(teacher) if i != target], temperature)
    nckd = kl_list(rest_t, rest_s)
    return temperature**2 * (alpha * tckd + beta * nckd)


def test_dkd_loss_hand_computed_small_batch():
    student = [[1.0, 0.5, -0.5, 2.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 3.0, 0.2, 0.1]]
    teacher = [[2.0, 0.0, 1.0, -1.0], [3.0, -1.0, 0.5, 0.0], [0.0, 4.0, 1.0, 1.5]]
    targets = [0, 2, 1]
    expected = sum(dkd_by_hand(s, t, y, 1.0, 8.0, 4.0) for s, t, y in zip(student, teacher, targets)) / 3
    ours = dkd_loss(
        torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), torch.tensor(targets)
    )
    assert ours.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_reformulates_kd(temperature):
    # Zhao et al., Eq. (1): KL = TCKD + (1 - p^t_y) * NCKD, sample by sample.
    generator = torch.Generator().manual_seed(3)
    for sample in range(4):
        student = torch.randn(1, 6, generator=generator, dtype=torch.float64)
        teacher = 2 * torch.randn(1, 6, generator=generator, dtype=torch.float64)
        target = torch.tensor([sample])
        teacher_target_prob = F.softmax(teacher / temperature, 1)[0, sample].item()
        decoupled = dkd_loss(student, teacher, target, alpha=1.0, beta=1 - teacher_target_prob, temperature=temperature)
        torch.testing.assert_close(decoupled, kd_loss(student, teacher, temperature))


def test_dkd_gradients_match_mdistiller_masking_at_moderate_scale():
    # mdistiller drops the target class by subtracting 1000 from it; ours removes the
    # column. At moderate logit scales both must agree, gradients included.
    generator = torch.Generator().manual_seed(5)
    student = torch.randn(6, 10, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 10, (6,), generator=generator)
    alpha, beta, temperature = 1.0, 8.0, 4.0

    def masked_reference(s):
        gt = F.one_hot(targets, 10).double()
        p_s, p_t = F.softmax(s / temperature, 1), F.softmax(teacher / temperature, 1)
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") / 6
        nckd = (
            F.kl_div(
                F.log_softmax(s / temperature - 1000 * gt, 1),
                F.softmax(teacher / temperature - 1000 * gt, 1),
                reduction="sum",
            )
            / 6
        )
        return temperature**2 * (alpha * tckd + beta * nckd)

    ours = dkd_loss(student, teacher, targets, alpha=alpha, beta=beta, temperature=temperature)
    reference = masked_reference(student)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, student)[0], torch.autograd.grad(reference, student)[0])


def test_dkd_is_finite_for_huge_logits():
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0]])
    loss = dkd_loss(student, teacher, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_dkd_bad_targets():
    logits = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"targets must have shape \[3\]"):
        dkd_loss(logits, logits, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets must be integer class indices"):
        dkd_loss(logits, logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\]"):
        dkd_loss(logits, logits, torch.tensor([0, 1, 5]))


def test_trades_kl_term_matches_trades_formula():
    generator = torch.Generator().manual_seed(1)
    logits_adv = torch.randn(8, 10, generator=generator, requires_grad=True)
    logits_natural = torch.randn(8, 10, generator=generator, requires_grad=True)
    ours = trades_kl_loss(logits_adv, logits_natural)
    # TRADES: (1 / B) * KLDivLoss(size_average=False)(log_softmax(adv), softmax(nat))
    reference = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_natural, 1), reduction="sum") / 8
    torch.testing.assert_close(ours, reference)
    ours_grads = torch.autograd.grad(ours, [logits_adv, logits_natural])
    reference_grads = torch.autograd.grad(reference, [logits_adv, logits_natural])
    for mine, theirs in zip(ours_grads, reference_grads):
        torch.testing.assert_close(mine, theirs)


def test_dkd_takes_the_non_target_logits_by_gather_without_a_host_sync():
    """The non-target logits as a gather (a boolean mask's result size is read back from the device)."""
    from losses.kd import _non_target_logits

    logits = torch.arange(12.0).view(3, 4)
    targets = torch.tensor([0, 2, 3])
    assert _non_target_logits(logits, targets).tolist() == [[1, 2, 3], [4, 5, 7], [8, 9, 10]]
    seen = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Ops():
        dkd_loss(torch.randn(3, 4), torch.randn(3, 4), targets)
    assert torch.ops.aten.nonzero.default not in seen and torch.ops.aten.index.Tensor not in seen
