"""last.pt: model, optimizer and any extra states (the class prior among them) round-trip exactly."""

from dataclasses import dataclass

import pytest
import torch

from engine.ema import EpochAverage
from engine.errors import UserError
from engine.file_io import atomic_save
from engine.run import resume_training_state, training_state
from losses import ClassPrior


@dataclass
class TinyConfig:
    lr: float = 0.1


def trained(small_model, image_batch, seed):
    model = small_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = image_batch(seed)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    prior = ClassPrior(3, temperature=2.0)
    prior.update(model(x).detach(), y)
    prior.step()
    average = EpochAverage(0.9)
    average.add(model.state_dict())
    return model, optimizer, {"prior": prior, "swa": average, "ema": None}


def test_extra_states_round_trip_and_the_rng_is_restored(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    torch.manual_seed(123)
    atomic_save(training_state(TinyConfig(), 3, model, optimizer, {"epoch": 2}, states), tmp_path / "last.pt")
    expected_draw = torch.rand(3)

    fresh_model, fresh_optimizer, fresh_states = trained(small_model, image_batch, seed=1)
    state = resume_training_state(
        tmp_path / "last.pt",
        TinyConfig(),
        fresh_model,
        fresh_optimizer,
        fresh_states,
        describe="the tiny model",
        log=lambda line: None,
    )
    assert state["epoch"] == 3 and state["best"] == {"epoch": 2} and state["ema"] is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
    assert torch.equal(fresh_states["prior"].rows(torch.arange(3)), states["prior"].rows(torch.arange(3)))
    assert all(torch.equal(fresh_states["swa"].average[k], v) for k, v in states["swa"].average.items())
    assert torch.equal(torch.rand(3), expected_draw)


def test_a_state_the_run_needs_but_the_file_lacks_is_named(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    atomic_save(
        training_state(TinyConfig(), 1, model, optimizer, {}, {"prior": states["prior"], "swa": None}),
        tmp_path / "last.pt",
    )
    with pytest.raises(UserError, match="holds no swa state: the run was started with swa switched off"):
        resume_training_state(
            tmp_path / "last.pt",
            TinyConfig(),
            model,
            optimizer,
            states,
            describe="the tiny model",
            log=lambda line: None,
        )
