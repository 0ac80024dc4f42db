"""batchnorm_groups: BatchNorm as nn.DataParallel on G GPUs computes it, checked against the
formula written out per chunk (torch.chunk's split, each chunk its own statistics, the running
statistics from the first chunk only)."""

import copy

import pytest
import torch
import torch.nn as nn

from engine.batchnorm_groups import GroupedBatchNorm2d, group_batch_norm, groups_per_process
from engine.config import ConfigError
from models import build_model


def by_hand(x, weight, bias, eps, groups):
    """Each chunk of torch.chunk(x, groups) normalised with its own biased mean and variance."""
    outputs = []
    size = -(-x.shape[0] // groups)  # ceil: DataParallel's scatter is torch.chunk
    for start in range(0, x.shape[0], size):
        chunk = x[start : start + size].double()
        mean = chunk.mean(dim=(0, 2, 3), keepdim=True)
        var = ((chunk - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        outputs.append(
            (chunk - mean) / torch.sqrt(var + eps) * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
        )
    return torch.cat(outputs)


def batch_norm(channels=3):
    torch.manual_seed(0)
    layer = nn.BatchNorm2d(channels)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    return layer


@pytest.mark.parametrize("batch, groups", [(12, 4), (10, 4), (5, 4), (7, 2)])
def test_training_forward_normalises_each_chunk_and_keeps_the_first_chunks_statistics(batch, groups):
    layer = batch_norm()
    running_mean, running_var = layer.running_mean.clone().double(), layer.running_var.clone().double()
    group_batch_norm(layer, groups)
    assert isinstance(layer, GroupedBatchNorm2d) and layer.groups == groups
    x = torch.randn(batch, 3, 4, 4, dtype=torch.float64).float().requires_grad_()
    y = layer(x)
    expected = by_hand(x, layer.weight, layer.bias, layer.eps, groups)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    # gradients through every chunk's statistics equal the formula's
    probe = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * probe).sum(), x)
    x64 = x.detach().double().requires_grad_()
    (gx64,) = torch.autograd.grad(
        (by_hand(x64, layer.weight, layer.bias, layer.eps, groups) * probe.double()).sum(), x64
    )
    torch.testing.assert_close(gx.double(), gx64, rtol=1e-4, atol=1e-5)

    first = x.detach().double()[: -(-batch // groups)]
    n = first.shape[0] * 16
    mean = first.mean(dim=(0, 2, 3))
    unbiased = ((first - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / (n - 1)
    torch.testing.assert_close(layer.running_mean.double(), 0.9 * running_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), 0.9 * running_var + 0.1 * unbiased, rtol=1e-5, atol=1e-6)
    assert layer.num_batches_tracked.item() == 1


def test_evaluation_and_one_group_are_plain_batchnorm():
    plain, grouped = batch_norm(), group_batch_norm(batch_norm(), 4)
    x = torch.randn(8, 3, 4, 4)
    plain.eval(), grouped.eval()
    torch.testing.assert_close(grouped(x), plain(x), rtol=0, atol=0)
    assert type(group_batch_norm(batch_norm(), 1)) is nn.BatchNorm2d  # 1 = untouched
    assert type(group_batch_norm(batch_norm(), 4, world_size=4)) is nn.BatchNorm2d  # one group per process


def test_a_grouped_model_keeps_its_state_dict_parameters_and_copies():
    torch.manual_seed(0)
    model = build_model("resnet8", 10)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    group_batch_norm(model, 4)
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [id(p) for p in model.parameters()] == parameters  # an optimiser built before still holds them
    copied = copy.deepcopy(model)
    layers = [m for m in copied.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and all(isinstance(m, GroupedBatchNorm2d) and m.groups == 4 for m in layers)
    # a whole batch through the grouped model equals the four chunks through the plain one, one by one
    plain = build_model("resnet8", 10)
    plain.load_state_dict(before)
    x = torch.randn(8, 3, 32, 32)
    model.train(), plain.train()
    expected = torch.cat([plain(chunk) for chunk in x.chunk(4)])
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_processes_split_the_groups_or_the_config_says_what_to_use():
    assert groups_per_process(4, 1) == 4
    assert groups_per_process(4, 2) == 2
    assert groups_per_process(4, 4) == 1
    assert groups_per_process(1, 8) == 1
    with pytest.raises(ConfigError, match=r"batchnorm_groups=2 cannot be split over 4 processes: use a multiple of 4"):
        groups_per_process(2, 4)
    with pytest.raises(ConfigError, match="at least 1"):
        groups_per_process(0, 1)


@pytest.mark.parametrize("groups, processes", [(4, 1), (4, 2), (8, 2), (8, 4)])
def test_dual_view_batches_are_chunked_as_dataparallel_chunks_the_global_batch(groups, processes):
    """DataParallel chunks the global [basic; augmented] batch; process r holds [basic_r; augmented_r].
    Where the rule admits the split, the processes' chunks are DataParallel's (as row sets), the first
    of rank 0 its first."""
    batch = 128
    basic, augmented = torch.arange(batch), torch.arange(batch, 2 * batch)
    dataparallel = [set(chunk.tolist()) for chunk in torch.cat([basic, augmented]).chunk(groups)]
    per_process = groups_per_process(groups, processes, views=2)
    ours = []
    for rank in range(processes):
        share = slice(rank * batch // processes, (rank + 1) * batch // processes)
        ours += [set(chunk.tolist()) for chunk in torch.cat([basic[share], augmented[share]]).chunk(per_process)]
    assert sorted(map(sorted, ours)) == sorted(map(sorted, dataparallel))
    assert ours[0] == dataparallel[0]


def test_dual_view_batches_refuse_a_split_that_would_mix_the_views():
    with pytest.raises(ConfigError, match=r"batchnorm_groups=4 with 2 views .* over 4 processes .* \(NPROC=2 or 1\)"):
        groups_per_process(4, 4, views=2)
    assert groups_per_process(4, 1, views=2) == 4  # one process holds the whole [basic; augmented] batch


def test_sync_bn_and_groups_are_refused_together():
    from adv_training.config import ATConfig

    cfg = ATConfig()
    cfg.sync_bn, cfg.batchnorm_groups = True, 4
    with pytest.raises(ConfigError, match="'sync_bn' .* and 'batchnorm_groups' .* contradict"):
        cfg.validate()
