"""ModelEMA: nothing before the start epoch, copies during it, the (1 - tau, tau) recursion after."""

import pytest
import torch
import torch.nn.functional as F

from engine.ema import EpochAverage, ModelEMA
from engine.file_io import atomic_save, load_file


def train_step(model, optimizer, seed):
    """One SGD step in train mode: changes parameters, BN running stats and num_batches_tracked."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(4, 1, 2, 2, generator=generator), torch.randint(0, 3, (4,), generator=generator)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_before_start_nothing_then_copy_then_recursion(small_model):
    model = small_model(side=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, tau=0.5, start_epoch=2)
    initial = snapshot(ema.module)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())

    train_step(model, optimizer, 0)
    ema.update(model, epoch=1)
    assert not ema.started
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, initial[key]), key

    for seed in (1, 2):  # every iteration of the start epoch copies
        train_step(model, optimizer, seed)
        ema.update(model, epoch=2)
        assert ema.started
        for key, value in ema.module.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), key
    expected = snapshot(model)

    for seed in (3, 4, 5):
        train_step(model, optimizer, seed)
        ema.update(model, epoch=3)
        current = snapshot(model)
        for key, value in current.items():
            if value.is_floating_point():
                expected[key] = (1 - 0.5) * value + 0.5 * expected[key]
            else:
                expected[key] = value  # num_batches_tracked is copied
    averaged = ema.module.state_dict()
    assert averaged["1.num_batches_tracked"].dtype == torch.long
    assert averaged["1.num_batches_tracked"].item() == 6  # six training steps
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-7)
    # The average differs from the current weights (the recursion really averaged).
    assert not torch.allclose(averaged["4.weight"], model.state_dict()["4.weight"])
    assert not torch.allclose(averaged["1.running_mean"], model.state_dict()["1.running_mean"])


def test_state_dict_round_trip_resumes_identically(tmp_path, small_model):
    model = small_model(side=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, tau=0.9, start_epoch=0)
    for seed, epoch in [(0, 0), (1, 1)]:
        train_step(model, optimizer, seed)
        ema.update(model, epoch)

    path = atomic_save(ema.state_dict(), tmp_path / "ema.pt")
    resumed = ModelEMA(small_model(seed=5, side=2), tau=0.9, start_epoch=0)
    resumed.load_state_dict(load_file(path))
    assert resumed.started

    for seed in (2, 3):
        train_step(model, optimizer, seed)
        ema.update(model, epoch=1)
        resumed.update(model, epoch=1)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key


def test_first_update_after_start_without_copy_copies(small_model):
    model = small_model(side=2)
    ema = ModelEMA(small_model(seed=3, side=2), tau=0.9, start_epoch=1)
    ema.update(model, epoch=4)
    assert ema.started
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def wang_ema_update(average, model, global_step, warmup_steps, tau):
    """DM-Improves-AT's watrain.py ema_update, restated: parameters only."""
    factor = int(global_step >= warmup_steps)
    delta = global_step - warmup_steps
    decay = min(tau, (1.0 + delta) / (10.0 + delta)) * factor
    for p_average, p in zip(average.parameters(), model.parameters()):
        p_average.data.mul_(decay).add_(p.data, alpha=1 - decay)


def test_wang_et_als_weight_average_with_warmup_dynamic_decay_and_copied_buffers(small_model):
    model = small_model(side=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, tau=0.3, start_epoch=1, warmup_steps=2.5, average_buffers=False)
    theirs = small_model(seed=9, side=2)
    decays = []
    for step in range(1, 9):
        train_step(model, optimizer, step)
        ema.update(model, epoch=1 + step // 4)
        decays.append(ema.decay(1))
        wang_ema_update(theirs, model, step, 2.5, 0.3)
        for (name, value), theirs_value in zip(ema.module.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(value, theirs_value, rtol=1e-6, atol=1e-7, msg=name)
        for name, buffer in ema.module.named_buffers():  # the model's BatchNorm statistics, not averaged
            assert torch.equal(buffer, dict(model.named_buffers())[name]), name
    # copies for t < 2.5, then (1 + d) / (10 + d) with d = t - 2.5, capped at tau = 0.3
    assert decays == pytest.approx([0, 0, 1.5 / 10.5, 2.5 / 11.5, 3.5 / 12.5, 0.3, 0.3, 0.3])
    assert ema.steps == 8 and ema.state_dict()["steps"] == 8
    assert not torch.allclose(ema.module.state_dict()["4.weight"], model.state_dict()["4.weight"])


def test_epoch_average_by_hand_keeps_counters_and_round_trips():
    first = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    second = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    average = EpochAverage(0.75)
    average.add(first)
    first["w"].add_(100)  # the average holds a copy, not the caller's tensor
    average.add(second)
    assert torch.equal(average.average["w"], torch.tensor([0.25 * 3 + 0.75 * 1, 0.25 * 6 + 0.75 * 2]))
    assert average.average["n"].item() == 7 and average.average["n"].dtype == torch.long  # counters: the latest
    restored = EpochAverage(0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.tau == 0.75 and torch.equal(restored.average["w"], average.average["w"])


def test_epoch_average_refuses_other_entries_and_bad_tau():
    average = EpochAverage(0.9)
    average.add({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected"):
        average.add({"w": torch.zeros(2), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        average.add({"w": torch.zeros(3)})
    for tau in (1.0, -0.1):
        with pytest.raises(ValueError, match="tau"):
            EpochAverage(tau)
