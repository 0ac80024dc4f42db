r"""Projected gradient attacks (PGD) with a pluggable objective.

The inner maximisation of adversarial training,

.. math::

    x_{adv} = \arg\max_{\|x' - x\| \le \epsilon,\; x' \in [0, 1]^d} \; J(f(x')),

is approximated by projected gradient ascent on ``J`` (``objective`` below), which only
sees the logits ``f(x')``. This module knows no loss: each method brings its objective
(`adv_training.methods`: cross-entropy for PGD-AT, MART and the PGD-20 monitor, KL for
TRADES, IKL for IKL-AT), so one routine serves them all.

A natural-logit target is computed once per batch (`natural_logits`), in eval mode and
without gradient. The authors' loop recomputes ``model(x_natural)`` at every step; in
eval mode (no dropout, BatchNorm on running statistics) that recomputation returns the
same tensor each time, and no gradient with respect to ``x_adv`` flows through it, so
computing it once changes nothing but the cost.
"""

import contextlib
import math
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .config import AttackConfig

Objective = Callable[[torch.Tensor], torch.Tensor]

NORMS = ("linf", "l2")
START_SEED_STRIDE = 1_000_003
RANDOM_STARTS = ("normal", "uniform", "none")


@contextlib.contextmanager
def attack_mode(model: nn.Module, eval_mode: bool = True, freeze_bn_stats: bool = False) -> Iterator[None]:
    """Put ``model`` in eval mode for an attack, then restore every submodule's mode.

    Eval mode makes BatchNorm use (and not update) its running statistics and turns
    dropout off, as in the reference's ``model.eval()`` before crafting the examples.
    Saving the ``training`` flag of each submodule, rather than calling ``model.train()``
    afterwards, keeps models whose parts are deliberately frozen in eval mode (a frozen
    backbone, a teacher inside a wrapper) exactly as they were; the flags are restored
    even when the attack raises. With ``eval_mode=False`` nothing is changed, unless
    ``freeze_bn_stats``: then BatchNorm layers in training mode normalise with the batch's
    statistics without updating their running ones (``track_running_stats`` off for the
    attack: Wang et al.'s ``track_bn_stats(False)`` around their TRADES attack).
    """
    previous = [(module, module.training) for module in model.modules()]
    frozen = (
        [(module, module.track_running_stats) for module in model.modules() if isinstance(module, _BatchNorm)]
        if freeze_bn_stats and not eval_mode
        else []
    )
    try:
        if eval_mode:
            model.eval()
        for module, _ in frozen:
            module.track_running_stats = False
        yield
    finally:
        for module, was_training in previous:
            module.training = was_training
        for module, tracked in frozen:
            module.track_running_stats = tracked


def natural_logits(
    model: nn.Module, x: torch.Tensor, eval_mode: bool = True, freeze_bn_stats: bool = False
) -> torch.Tensor:
    """``model(x)`` in attack mode and without gradient: the fixed target of KL/IKL attacks."""
    with attack_mode(model, eval_mode, freeze_bn_stats), torch.no_grad():
        return model(x)


def _per_sample_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against ``tensor`` ([B, 1, 1, ...])."""
    norms = tensor.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (tensor.dim() - 1)))


def _random_start(x: torch.Tensor, eps: float, norm: str, random_start: str, init_std: float) -> torch.Tensor:
    if random_start == "none":
        return x.clone()
    if random_start == "normal":
        # The TRADES/reference start: tiny Gaussian noise, neither clamped to [0, 1] nor
        # projected (the first step's projection and clamp take care of both).
        return x + init_std * torch.empty_like(x).normal_()
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        # Uniform radius in [0, eps] along a uniformly random direction.
        direction = torch.empty_like(x).normal_()
        norms = _per_sample_norm(direction)
        direction = direction / torch.where(norms > 0, norms, torch.ones_like(norms))
        radius = eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
        delta = radius * direction
    return (x + delta).clamp(0.0, 1.0)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for int64 ``x`` in [0, 2**32), in halves so that no product
    leaves int64: exact, and the same, on every device."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (C. Wellons' "lowbias32"): each input bit flips about half of the
    output bits, so neighbouring counters and keys give unrelated numbers."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(keys: torch.Tensor, seed: int, count: int, stream: int = 0) -> torch.Tensor:
    """[len(keys), count] float32 numbers in [0, 1), row b a function of (``seed``, ``keys[b]``,
    ``stream``) only: a counter-based generator, drawn for a whole batch at once.

    Number i of row b is ``hash(hash(stream * count + i) xor hash(k_b)) >> 8`` over 2**24,
    with ``k_b = (seed * START_SEED_STRIDE + keys[b]) mod 2**32``; integers and the final
    scaling are exact, so the bits are the same on every device and in any batch.
    """
    offset = (seed * START_SEED_STRIDE) % 2**32
    key_hash = _hash32((keys.to(torch.int64) + offset) & _MASK32)
    counter = _hash32(
        torch.arange(stream * count, (stream + 1) * count, device=keys.device, dtype=torch.int64) & _MASK32
    )
    bits = _hash32(counter.unsqueeze(0) ^ key_hash.unsqueeze(1))
    return (bits >> 8).to(torch.float32) * 2.0**-24


def _keyed_normal(keys: torch.Tensor, seed: int, count: int, stream: int) -> torch.Tensor:
    """Standard normal numbers from two keyed uniform streams (Box-Muller)."""
    radius = torch.sqrt(-2.0 * torch.log1p(-keyed_uniform(keys, seed, count, stream)))  # log of (0, 1]
    return radius * torch.cos(2 * math.pi * keyed_uniform(keys, seed, count, stream + 1))


def _keyed_random_start(
    x: torch.Tensor, keys: torch.Tensor, seed: int, eps: float, norm: str, random_start: str, init_std: float
) -> torch.Tensor:
    """Each sample's start drawn from its key (`keyed_uniform`), for the whole batch at once.

    So a sample (keyed by its index in the dataset) starts from the same point whatever the
    batch it comes in, the batch size, the number of processes or the memory format, and the
    uniform l_inf start of the PGD monitor is the same on the CPU and on a GPU (normal draws,
    through log and cos, may differ there in the last bit).
    """
    if keys.shape != (x.shape[0],):
        raise ValueError(f"start_keys must hold one key per sample ({x.shape[0]}), got shape {tuple(keys.shape)}")
    if seed < 0:
        raise ValueError(f"start_seed must be non-negative, got {seed}")
    if keys.numel() and not (0 <= int(keys.min()) and int(keys.max()) < 2**32):
        raise ValueError(f"start keys must lie in [0, 2**32), got values from {int(keys.min())} to {int(keys.max())}")
    keys = keys.to(x.device)
    shape, count = (x.shape[0], *x.shape[1:]), x[0].numel()
    plain = x.contiguous()  # drawn in the standard layout: channels_last would take them in another order
    if random_start == "none":
        start = plain.clone()
    elif random_start == "normal":
        start = plain + init_std * _keyed_normal(keys, seed, count, stream=0).view(shape).to(x.dtype)
    elif norm == "linf":
        start = (plain + (2 * keyed_uniform(keys, seed, count).view(shape).to(x.dtype) - 1) * eps).clamp(0.0, 1.0)
    else:
        direction = _keyed_normal(keys, seed, count, stream=0).view(shape).to(x.dtype)
        norms = _per_sample_norm(direction)
        direction = direction / torch.where(norms > 0, norms, torch.ones_like(norms))
        radius = eps * keyed_uniform(keys, seed, 1, stream=2).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        start = (plain + radius * direction).clamp(0.0, 1.0)
    return torch.empty_like(x).copy_(start)  # back in x's memory format


@contextlib.contextmanager
def parameters_frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` requires grad inside; each one's flag is restored after, also on error.

    An attack differentiates with respect to the input only. Eager autograd then skips the
    weight gradients by itself, but a compiled model's backward is traced for every input that
    requires grad: with the weights requiring it, each PGD step would pay a full backward.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: str = "normal",
    init_std: float = 0.001,
    eval_mode: bool = True,
    freeze_bn_stats: bool = False,
    start_keys: Optional[torch.Tensor] = None,
    start_seed: int = 0,
) -> torch.Tensor:
    r"""Projected gradient ascent on ``objective(model(x_adv))``; returns a detached ``x_adv``.

    With :math:`g = \nabla_{x_{adv}} J(f(x_{adv}))` each step is

    * ``norm="linf"``:
      :math:`x_{adv} \leftarrow \mathrm{clip}_{[0,1]}\big(\mathrm{clip}_{[x-\epsilon,\, x+\epsilon]}
      (x_{adv} + \eta\, \mathrm{sign}(g))\big)`;
    * ``norm="l2"`` (the reference's ``l_2`` branch, with :math:`\delta = x_{adv} - x`):
      :math:`\delta \leftarrow \delta + \eta\, g / \|g\|_2` per sample (a zero gradient gives a
      zero step, not NaN), then :math:`\delta \leftarrow \mathrm{clip}_{[0,1]}(x + \delta) - x`,
      then each sample's :math:`\delta` is rescaled to norm at most :math:`\epsilon`
      (``torch.renorm``). Rescaling towards ``x`` keeps ``x + delta`` inside [0, 1]; a last
      clamp only removes rounding. The reference uses :math:`\eta = 2\epsilon/\text{steps}`
      for l2 (it ignores ``--step-size`` there); pass that as ``step_size`` to match it.

    Args:
        objective: maps the logits of ``x_adv`` to a scalar to maximise (the methods'
            objectives in `adv_training.methods`). It must treat each sample independently up to a positive batch-wide
            factor, as every batch-mean loss does.
        random_start: ``"normal"``: ``x + init_std * randn`` (TRADES and the reference);
            ``"uniform"``: a uniform point of the l_inf ball, or for l2 a random direction
            at a uniform radius in [0, eps], clamped to [0, 1]; ``"none"``: ``x``.
        eval_mode: run the model in eval mode during the attack (`attack_mode`).
        freeze_bn_stats: with ``eval_mode=False``, BatchNorm does not update its running
            statistics during the attack (`attack_mode`).
        start_keys: one integer in [0, 2**32) per sample (its index in the dataset, on the
            CPU): the random start of a sample is then a function of (``start_seed``, key)
            (`keyed_uniform`), not a draw of the global RNG, and is the same in any batch
            and in any process. Without it, starts come from the global RNG.

    ``steps == 0`` or ``eps == 0`` returns a detached copy of ``x`` itself, without the
    random start: with no step, the start noise would be an unprojected perturbation (and
    for ``"normal"`` possibly outside [0, 1]); with a zero radius every projection maps
    back to ``x`` anyway, which is what an epsilon schedule starting at 0 needs.

    Gradients are taken with `torch.autograd.grad` with respect to ``x_adv`` only, with no
    parameter requiring grad meanwhile (`parameters_frozen`), so no parameter's ``.grad`` is
    created or changed, a compiled model computes no weight gradient, and the attack works
    whether or not the caller is inside ``torch.no_grad()``. Under ``torch.autocast`` the model runs in
    reduced precision while ``x_adv`` and its updates stay in the dtype of ``x``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"random_start must be one of {RANDOM_STARTS}, got {random_start!r}")
    if not eps >= 0 or not step_size >= 0 or not init_std >= 0:
        raise ValueError(f"eps, step_size and init_std must be non-negative, got {eps}, {step_size}, {init_std}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")

    x = x.detach()
    if steps == 0 or eps == 0:
        return x.clone()

    with attack_mode(model, eval_mode, freeze_bn_stats), parameters_frozen(model):
        if start_keys is None:
            x_adv = _random_start(x, eps, norm, random_start, init_std)
        else:
            x_adv = _keyed_random_start(x, start_keys, start_seed, eps, norm, random_start, init_std)
        for _ in range(int(steps)):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x_adv))
            if loss.dim() != 0:
                raise ValueError(f"the attack objective must return a scalar, got shape {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss, [x_adv])
            with torch.no_grad():
                if norm == "linf":
                    x_adv = x_adv + step_size * grad.sign()
                    x_adv = torch.clamp(x_adv, x - eps, x + eps).clamp(0.0, 1.0)
                else:
                    grad_norms = _per_sample_norm(grad)
                    unit_grad = grad / torch.where(grad_norms > 0, grad_norms, torch.ones_like(grad_norms))
                    delta = x_adv - x + step_size * unit_grad
                    delta = (x + delta).clamp(0.0, 1.0) - x
                    delta = torch.renorm(delta, p=2, dim=0, maxnorm=eps)
                    x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv.detach()


# --- the training attack's budget per epoch ------------------------------------------------------


def attack_budget(attack: AttackConfig, epoch: int, epochs: int) -> Tuple[float, float, int]:
    """(eps_t, step size, steps) of the training attack at ``epoch`` (1-based).

    ``high`` is what the reference code runs: its 2/3/4/5-step ``if`` chain overwrites
    itself, so every epoch gets 5 steps of eps_t / 2. ``high_piecewise`` is the schedule
    that chain was meant to be (2 steps of eps_t up to epoch 50, 3 of 2 eps_t / 3 up to 100,
    4 of eps_t / 2 up to 150, then 5 of eps_t / 2; epochs scaled to a 200-epoch run).
    """
    eps_t = attack.epsilon * epoch / epochs if attack.eps_ramp else attack.epsilon
    if attack.budget == "low":
        return eps_t, eps_t, 2
    if attack.budget == "high":
        return eps_t, eps_t / 2, 5
    if attack.budget == "high_piecewise":
        scale = epochs / 200.0
        if epoch <= int(50 * scale):
            return eps_t, eps_t, 2
        if epoch <= int(100 * scale):
            return eps_t, 2 * eps_t / 3, 3
        if epoch <= int(150 * scale):
            return eps_t, eps_t / 2, 4
        return eps_t, eps_t / 2, 5
    return eps_t, attack.step_size, attack.steps


def per_sample_pgd(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    eps: torch.Tensor,
    step_size: torch.Tensor,
    steps: torch.Tensor,
    start_eps: float,
    start_noise: Optional[torch.Tensor] = None,
    eval_mode: bool = True,
) -> torch.Tensor:
    r"""l_inf PGD with a budget of its own for every sample (LAS-AT's attack); returns a detached ``x_adv``.

    Sample b starts at ``x + start_eps * start_noise`` clamped to [0, 1] (``start_noise`` uniform in [-1, 1]
    and shaped as ``x``, drawn by the caller; None: drawn here from torch's generator) and takes
    ``steps[b]`` steps of ``step_size[b]`` within ``eps[b]``:
    :math:`x_b \leftarrow \mathrm{clip}_{[0,1]}\big(\mathrm{clip}_{[x_b - \epsilon_b,\, x_b + \epsilon_b]}
    (x_b + \eta_b\, \mathrm{sign}(g_b))\big)` while it has steps left; the batch takes ``max(steps)`` steps.
    ``objective`` must treat the samples independently up to a batch-wide positive factor (a batch mean),
    so that each sample's steps are those of its own attack (in eval mode nothing else couples them).
    """
    if not (eps.shape == step_size.shape == steps.shape == (x.shape[0],)):
        raise ValueError(
            f"eps, step_size and steps need one value per sample ({x.shape[0]}), got shapes "
            f"{tuple(eps.shape)}, {tuple(step_size.shape)}, {tuple(steps.shape)}"
        )
    x = x.detach()

    def per_row(values: torch.Tensor) -> torch.Tensor:
        return values.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    eps_rows, step_rows, left = per_row(eps), per_row(step_size), steps.clone()
    with attack_mode(model, eval_mode), parameters_frozen(model):
        noise = torch.empty_like(x).uniform_(-1.0, 1.0) if start_noise is None else start_noise.to(x)
        x_adv = (x + start_eps * noise).clamp(0.0, 1.0)
        for _ in range(int(steps.max()) if steps.numel() else 0):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x_adv))
            (grad,) = torch.autograd.grad(loss, [x_adv])
            with torch.no_grad():
                moving = per_row((left >= 1).to(x.dtype))
                x_adv = x_adv + moving * step_rows * grad.sign()
                x_adv = torch.max(torch.min(x_adv, x + eps_rows), x - eps_rows).clamp(0.0, 1.0)
                left = left - 1
    return x_adv.detach()
