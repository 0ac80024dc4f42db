"""DKL/IKL against independent computations: the pairwise formula, hand-worked cases, KL."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from losses import dkl_loss, ikl_loss, kl_loss, soft_ce_loss, wmse_loss
from losses.pairwise_oracle import wmse_loss_pairwise

SIZES = [(1, 2), (3, 5), (16, 10), (8, 100)]


def random_logits(batch, classes, *, seed, dtype=torch.float64, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(batch, classes, generator=generator, dtype=dtype)
    teacher = scale * torch.randn(batch, classes, generator=generator, dtype=dtype)
    return student.requires_grad_(), teacher.requires_grad_()


def value_and_grads(loss_fn, student, teacher):
    loss = loss_fn(student, teacher)
    grad_student, grad_teacher = torch.autograd.grad(loss, [student, teacher], allow_unused=True)
    zeros = torch.zeros_like(student)
    return (
        loss.detach(),
        (zeros if grad_student is None else grad_student),
        (zeros if grad_teacher is None else grad_teacher),
    )


def reference_soft_ce(student, teacher, temperature):
    """-sum_j p_j log q_j written with explicit exponentials."""
    t = teacher.detach() / temperature
    s = student / temperature
    p = torch.exp(t) / torch.exp(t).sum(1, keepdim=True)
    log_q = s - torch.log(torch.exp(s).sum(1, keepdim=True))
    return -(p * log_q).sum(1).mean()


# --- wMSE -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch,classes", SIZES)
@pytest.mark.parametrize("weight_kind", ["random", "softmax", "sparse", "gamma"])
def test_wmse_matches_pairwise_values_and_gradients(batch, classes, weight_kind):
    student, teacher = random_logits(batch, classes, seed=batch * 1000 + classes)
    generator = torch.Generator().manual_seed(7)
    if weight_kind == "random":
        weights = torch.rand(batch, classes, generator=generator, dtype=torch.float64)
    elif weight_kind == "softmax":
        weights = F.softmax(teacher.detach() / 4.0, dim=1)
    elif weight_kind == "sparse":  # zero weights, and a whole zero row when batch > 1
        weights = torch.rand(batch, classes, generator=generator, dtype=torch.float64)
        weights[weights < 0.5] = 0.0
        weights[0, 0] = 1.0
        if batch > 1:
            weights[-1] = 0.0
    else:
        weights = F.softmax(teacher.detach(), dim=1).pow(0.4)

    closed = value_and_grads(lambda s, t: wmse_loss(s, t, weights), student, teacher)
    pairwise = value_and_grads(lambda s, t: wmse_loss_pairwise(s, t, weights), student, teacher)
    for ours, reference in zip(closed, pairwise):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_wmse_two_class_hand_computed():
    # C = 2: 1/4 sum_{j,k} w_j w_k (d_j - d_k)^2 = 1/2 w_1 w_2 (d_1 - d_2)^2, d = t - s.
    student = torch.tensor([[0.5, -1.0], [2.0, 2.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.5, 0.0], [0.0, 3.0]], dtype=torch.float64)
    weights = torch.tensor([[0.25, 0.75], [2.0, 1.0]], dtype=torch.float64)
    # row 0: d = (1.0, 1.0) -> 0;  row 1: d = (-2, 1) -> 1/2 * 2 * 1 * 9 = 9
    # denominator: (0.25 + 0.75)^2 + (2 + 1)^2 = 1 + 9 = 10
    assert wmse_loss(student, teacher, weights).item() == pytest.approx(0.9, abs=1e-12)


def test_wmse_three_class_hand_computed():
    student = torch.zeros(1, 3, dtype=torch.float64)
    teacher = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    weights = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    # ordered pairs counted twice: 2 * (w1w2*1 + w1w3*9 + w2w3*4) = 2 * (0.125 + 1.125 + 0.25) = 3
    # 1/4 * 3 = 0.75, denominator 1
    assert wmse_loss(student, teacher, weights).item() == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("offset_on", ["teacher", "student", "both"])
def test_wmse_float32_stable_under_large_offsets(offset_on):
    batch, classes = 32, 100
    student, teacher = random_logits(batch, classes, seed=3)
    student, teacher = student.detach(), teacher.detach()
    if offset_on in ("teacher", "both"):
        teacher = teacher + 1e3
    if offset_on in ("student", "both"):
        student = student - 1e3
    weights = F.softmax(torch.randn(batch, classes, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), 1)
    # The float64 oracle sees exactly the float32-rounded inputs.
    s32, t32, w32 = (x.float().requires_grad_() for x in (student, teacher, weights))
    s64, t64, w64 = (x.double().requires_grad_() for x in (s32.detach(), t32.detach(), w32.detach()))

    ours = value_and_grads(lambda s, t: wmse_loss(s, t, w32), s32, t32)
    oracle = value_and_grads(lambda s, t: wmse_loss_pairwise(s, t, w64), s64, t64)
    assert ours[0].dtype == torch.float32
    for mine, reference in zip(ours, oracle):
        torch.testing.assert_close(mine.double(), reference, rtol=1e-4, atol=1e-5)


def test_wmse_never_builds_pairwise_tensors():
    batch, classes = 4, 512

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, tensor.numel())
            return out

    student, teacher = random_logits(batch, classes, seed=0, dtype=torch.float32)
    weights = torch.rand(batch, classes)
    with LargestTensor():
        loss = ikl_loss(student, teacher, weights=weights, gamma=0.5, alpha=1.0, beta=1.0)
        loss.backward()
    assert LargestTensor.largest <= batch * classes  # the pairwise form needs batch * classes**2


def test_wmse_weights_are_constants_and_gradient_depends_on_gap_only():
    student, teacher = random_logits(5, 6, seed=11)
    weights = torch.rand(5, 6, dtype=torch.float64).requires_grad_()
    loss = wmse_loss(student, teacher, weights)
    grad_student, grad_teacher, grad_weights = torch.autograd.grad(loss, [student, teacher, weights], allow_unused=True)
    assert grad_weights is None
    # wMSE is a function of t - s, so the two gradients are exact negatives of each other.
    torch.testing.assert_close(grad_student, -grad_teacher)
    # ... and invariant to a per-row shift of either argument.
    shifted = wmse_loss(student + torch.randn(5, 1, dtype=torch.float64), teacher, weights)
    torch.testing.assert_close(shifted, loss)


# --- KL, soft CE ----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_loss_matches_torch_kl_div(temperature):
    student, teacher = random_logits(6, 9, seed=5)
    reference = F.kl_div(
        F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1), reduction="batchmean"
    )
    torch.testing.assert_close(kl_loss(student, teacher, temperature), reference)
    assert kl_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_ce_hand_computed_and_teacher_gets_no_gradient():
    classes = 7
    student = torch.zeros(2, classes, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, classes, dtype=torch.float64, requires_grad=True)
    loss = soft_ce_loss(student, teacher)
    assert loss.item() == pytest.approx(math.log(classes), abs=1e-12)  # uniform student
    grad_student, grad_teacher = torch.autograd.grad(loss, [student, teacher], allow_unused=True)
    assert grad_teacher is None
    # d/ds of -sum p log softmax(s) is (softmax(s) - p) / B
    expected = (torch.full((2, classes), 1 / classes, dtype=torch.float64) - F.softmax(teacher.detach(), 1)) / 2
    torch.testing.assert_close(grad_student, expected)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_ce_matches_explicit_formula(temperature):
    student, teacher = random_logits(4, 8, seed=9)
    torch.testing.assert_close(
        soft_ce_loss(student, teacher, temperature), reference_soft_ce(student, teacher, temperature)
    )


# --- DKL: the paper's theorem ---------------------------------------------------------


@pytest.mark.parametrize(("batch", "classes"), SIZES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkl_gradients_equal_kl_gradients_for_both_arguments(batch, classes, temperature):
    student, teacher = random_logits(batch, classes, seed=batch + classes)
    _, dkl_grad_s, dkl_grad_t = value_and_grads(lambda s, t: dkl_loss(s, t, temperature=temperature), student, teacher)
    _, kl_grad_s, kl_grad_t = value_and_grads(lambda s, t: kl_loss(s, t, temperature), student, teacher)
    torch.testing.assert_close(dkl_grad_s, kl_grad_s, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dkl_grad_t, kl_grad_t, rtol=1e-9, atol=1e-12)
    assert kl_grad_t.abs().max() > 1e-3  # the teacher's gradient is not trivially zero


def test_dkl_value_is_beta_wmse_plus_alpha_ce():
    student, teacher = random_logits(4, 6, seed=21)
    temperature = 2.0
    weights = F.softmax(teacher.detach() / temperature, 1)
    expected = 3.0 * wmse_loss_pairwise(
        student / temperature, teacher / temperature, weights
    ) + 0.5 * reference_soft_ce(student, teacher, temperature)
    torch.testing.assert_close(dkl_loss(student, teacher, alpha=0.5, beta=3.0, temperature=temperature), expected)


# --- IKL ------------------------------------------------------------------------------


def reference_ikl(student, teacher, *, alpha, beta, temperature, gamma, weights, weight_temperature):
    if weights is None:
        weights = F.softmax(teacher.detach() / weight_temperature, 1)
    weights = weights.detach() ** gamma
    return beta * wmse_loss_pairwise(student, teacher, weights) + alpha * reference_soft_ce(
        student, teacher, temperature
    )


@pytest.mark.parametrize(
    "alpha,beta,temperature,gamma,weight_temperature,with_prior",
    [
        (1.0, 1.0, 1.0, 1.0, 1.0, False),
        (4.0, 20.0, 1.0, 1.0, 1.0, True),  # IKL-AT
        (4.0, 20.0, 1.0, 0.4, 1.0, True),  # IKL-AT with GKL's smoother weights
        (1.0, 8.0, 4.0, 1.0, 100.0, False),  # IKL-KD on CIFAR-100
        (3.0, 12.0, 4.0, 0.2, 2.0, False),
    ],
)
def test_ikl_matches_pairwise_reference(alpha, beta, temperature, gamma, weight_temperature, with_prior):
    batch, classes = 12, 10
    student, teacher = random_logits(batch, classes, seed=int(beta))
    prior_rows = F.softmax(torch.randn(classes, classes, dtype=torch.float64), 1)[torch.arange(batch) % classes]
    weights = prior_rows if with_prior else None
    kwargs = dict(alpha=alpha, beta=beta, temperature=temperature, gamma=gamma, weight_temperature=weight_temperature)
    ours = value_and_grads(lambda s, t: ikl_loss(s, t, weights=weights, **kwargs), student, teacher)
    oracle = value_and_grads(lambda s, t: reference_ikl(s, t, weights=weights, **kwargs), student, teacher)
    for mine, reference in zip(ours, oracle):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


def test_ikl_wmse_trains_the_student_dkl_does_not():
    student, teacher = random_logits(8, 10, seed=2)
    _, ikl_grad_s, ikl_grad_t = value_and_grads(lambda s, t: ikl_loss(s, t, alpha=0.0, beta=1.0), student, teacher)
    _, dkl_grad_s, _ = value_and_grads(lambda s, t: dkl_loss(s, t, alpha=0.0, beta=1.0), student, teacher)
    assert ikl_grad_s.abs().max() > 1e-3
    torch.testing.assert_close(ikl_grad_s, -ikl_grad_t)
    assert torch.count_nonzero(dkl_grad_s) == 0


def test_ikl_gamma_and_default_weights():
    student, teacher = random_logits(5, 4, seed=8)
    rows = torch.rand(5, 4, dtype=torch.float64)
    torch.testing.assert_close(
        ikl_loss(student, teacher, weights=rows, gamma=0.3), ikl_loss(student, teacher, weights=rows**0.3)
    )
    torch.testing.assert_close(
        ikl_loss(student, teacher, weight_temperature=5.0),
        ikl_loss(student, teacher, weights=F.softmax(teacher.detach() / 5.0, 1)),
    )


def test_ikl_skips_a_zero_weighted_term():
    student, teacher = random_logits(5, 4, seed=1)
    torch.testing.assert_close(ikl_loss(student, teacher, alpha=1.0, beta=0.0), soft_ce_loss(student, teacher))
    torch.testing.assert_close(
        ikl_loss(student, teacher, alpha=0.0, beta=2.0),
        2.0 * wmse_loss(student, teacher, F.softmax(teacher.detach(), 1)),
    )


def test_low_precision_logits_are_computed_in_float32():
    student, teacher = random_logits(4, 10, seed=3, dtype=torch.float32)
    reference = ikl_loss(student, teacher, alpha=4.0, beta=20.0)
    low = ikl_loss(student.bfloat16(), teacher.bfloat16(), alpha=4.0, beta=20.0)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=3e-2, atol=3e-2)
    low.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


# --- bad input ------------------------------------------------------------------------

LOSSES_WITH_TWO_LOGITS = [wmse_loss, soft_ce_loss, kl_loss, dkl_loss, ikl_loss]


def call(loss_fn, student, teacher):
    if loss_fn is wmse_loss:
        return loss_fn(student, teacher, torch.ones_like(student, dtype=torch.float32))
    return loss_fn(student, teacher)


@pytest.mark.parametrize("loss_fn", LOSSES_WITH_TWO_LOGITS)
def test_shape_mismatch_names_both_shapes(loss_fn):
    with pytest.raises(ValueError, match=r"logits_student \(4, 10\).*logits_teacher \(4, 9\)"):
        call(loss_fn, torch.randn(4, 10), torch.randn(4, 9))


@pytest.mark.parametrize("loss_fn", LOSSES_WITH_TWO_LOGITS)
def test_integer_logits_are_a_type_error(loss_fn):
    with pytest.raises(TypeError, match="logits_student must be floating-point"):
        call(loss_fn, torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))


@pytest.mark.parametrize("loss_fn", LOSSES_WITH_TWO_LOGITS)
def test_one_dimensional_logits_are_refused(loss_fn):
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        call(loss_fn, torch.randn(10), torch.randn(10))


@pytest.mark.parametrize("loss_fn", [wmse_loss, lambda s, t, w: ikl_loss(s, t, weights=w)])
def test_bad_weights(loss_fn):
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"weights must have shape \[batch, 10\].*got \(4, 9\)"):
        loss_fn(student, teacher, torch.rand(4, 9))
    with pytest.raises(ValueError, match="weights has 3 rows but the logits have 4 samples"):
        loss_fn(student, teacher, torch.rand(3, 10))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        loss_fn(student, teacher, torch.rand(4, 10) - 0.5)
    with pytest.raises(TypeError, match="weights must be floating-point"):
        loss_fn(student, teacher, torch.ones(4, 10, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(weight_temperature=-1.0), "weight_temperature must be positive"),
        (dict(gamma=-0.5), "gamma must be non-negative"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ikl_loss(torch.randn(2, 3), torch.randn(2, 3), **kwargs)


def test_closed_form_and_oracle_match_an_explicit_double_loop():
    # Cross-check the pairwise oracle itself against an explicit Python double loop.
    student, teacher = (x.detach() for x in random_logits(2, 4, seed=13))
    weights = torch.rand(2, 4, dtype=torch.float64)
    total = 0.0
    for b in range(2):
        for j, k in itertools.product(range(4), repeat=2):
            gap = (teacher[b, j] - teacher[b, k]) - (student[b, j] - student[b, k])
            total += 0.25 * float(weights[b, j] * weights[b, k] * gap**2)
    total /= float(weights.sum(1).square().sum())
    assert wmse_loss(student, teacher, weights).item() == pytest.approx(total, rel=1e-12)
    assert wmse_loss_pairwise(student, teacher, weights).item() == pytest.approx(total, rel=1e-12)


def test_on_an_accelerator_bad_weights_make_the_loss_nan_instead_of_a_device_assert(accelerator_checks):
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    weights = torch.rand(4, 10)
    weights[2, 3] = -0.1
    assert torch.isnan(wmse_loss(student, teacher, weights))
    assert torch.isnan(ikl_loss(student, teacher, weights=weights))
    assert torch.isnan(ikl_loss(student, teacher, weights=weights, gamma=2.0))  # the square would hide the sign
    weights[2, 3] = float("nan")  # a class prior gone NaN
    assert torch.isnan(ikl_loss(student, teacher, weights=weights))
    nan_teacher = teacher.clone()
    nan_teacher[0, 0] = float("nan")  # the per-sample softmax weights of a diverged model
    assert torch.isnan(ikl_loss(student, nan_teacher)) and torch.isnan(dkl_loss(student, nan_teacher))
    good = torch.rand(4, 10)
    assert wmse_loss(student, teacher, good).item() == pytest.approx(
        wmse_loss_pairwise(student, teacher, good).item(), rel=1e-5
    )
