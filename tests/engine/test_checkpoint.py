"""engine.checkpoint: last.pt's model, optimizer and extra states (the class prior among them) round-trip
exactly; the one weights-file format; files written by earlier versions still load."""

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from engine.checkpoint import resume_training_state, training_state, weights_file
from engine.ema import EpochAverage
from engine.errors import UserError
from engine.file_io import atomic_save
from losses import ClassPrior


@dataclass
class TinyConfig:
    TASK: ClassVar[str] = "tiny_task"
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
    best = {"metric": "test_top1", "value": 50.0, "epoch": 2}
    atomic_save(training_state(TinyConfig(), 3, model, optimizer, best, states), tmp_path / "last.pt")
    expected_draw = torch.rand(3)

    fresh_model, fresh_optimizer, fresh_states = trained(small_model, image_batch, seed=1)
    state = resume_training_state(
        tmp_path / "last.pt",
        TinyConfig(),
        fresh_model,
        fresh_optimizer,
        fresh_states,
        describe="the tiny model",
        selects_by="test_top1",
        log=lambda line: None,
    )
    assert state["epoch"] == 3 and state["best"] == best and state["ema"] is None and state["task"] == "tiny_task"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
    assert torch.equal(fresh_states["prior"].rows(torch.arange(3)), states["prior"].rows(torch.arange(3)))
    assert all(torch.equal(fresh_states["swa"].average[k], v) for k, v in states["swa"].average.items())
    assert torch.equal(torch.rand(3), expected_draw)


def test_a_state_the_run_needs_but_the_file_lacks_is_named(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    atomic_save(
        training_state(TinyConfig(), 1, model, optimizer, {"epoch": 0}, {"prior": states["prior"], "swa": None}),
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
            selects_by="test_top1",
            log=lambda line: None,
        )


def resume(path, model, optimizer, states, config=None):
    return resume_training_state(
        path,
        config or TinyConfig(),
        model,
        optimizer,
        states,
        describe="the tiny model",
        selects_by="test_robust_acc",
        log=lambda line: None,
    )


@pytest.mark.parametrize(
    "older_best, expected",
    [
        ({"robust_acc": 41.5, "epoch": 3}, {"metric": "test_robust_acc", "value": 41.5, "epoch": 3}),
        ({"top1": 70.25, "epoch": 2}, {"metric": "test_robust_acc", "value": 70.25, "epoch": 2}),
        ({"robust_acc": -1.0, "epoch": 0}, {"metric": "test_robust_acc", "value": -math.inf, "epoch": 0}),
    ],
)
def test_a_last_pt_of_an_earlier_version_resumes(tmp_path, small_model, image_batch, older_best, expected):
    """Earlier versions wrote the config class's name as the task and {"robust_acc" | "top1": value, "epoch"}
    (-1 before any evaluation) as the best-so-far record."""
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    state = training_state(TinyConfig(), 3, model, optimizer, {}, states)
    state.update(task="TinyConfig", best=older_best)
    atomic_save(state, tmp_path / "last.pt")
    fresh_model, fresh_optimizer, fresh_states = trained(small_model, image_batch, seed=1)
    assert resume(tmp_path / "last.pt", fresh_model, fresh_optimizer, fresh_states)["best"] == expected
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))


def test_a_last_pt_of_another_task_is_refused(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    state = training_state(TinyConfig(), 3, model, optimizer, {}, states)
    for task in ("knowledge_distillation", "KDConfig"):
        atomic_save(dict(state, task=task), tmp_path / "last.pt")
        with pytest.raises(UserError, match="not a last.pt written by this training entry point"):
            resume(tmp_path / "last.pt", model, optimizer, states)


class Owner(torch.nn.Module):
    """A method with a network of its own that an earlier version saved under another key."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 2)

    def state_from_older_checkpoint(self, checkpoint):
        older = checkpoint.get("helper")
        return None if older is None else {f"net.{k}": v for k, v in older.items()}


def test_a_method_finds_its_state_under_an_older_key(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    saved, fresh = Owner(), Owner()
    state = training_state(
        TinyConfig(), 1, model, optimizer, {"metric": "test_robust_acc", "value": 1.0, "epoch": 1}, {}
    )
    state["helper"] = saved.net.state_dict()  # no "method" key, as the earlier version wrote it
    atomic_save(state, tmp_path / "last.pt")
    resume(tmp_path / "last.pt", model, optimizer, {"method": fresh})
    assert torch.equal(fresh.net.weight, saved.net.weight) and not torch.equal(fresh.net.weight, Owner().net.weight)
    del state["helper"]
    atomic_save(state, tmp_path / "last.pt")
    with pytest.raises(UserError, match="holds no method state: it was written by an earlier version"):
        resume(tmp_path / "last.pt", model, optimizer, {"method": Owner()})


def test_every_weights_file_has_one_format():
    weights = {"w": torch.ones(2)}
    assert weights_file(weights, 7, {"ema_test_robust_acc": 51.0}) == {
        "model": weights,
        "epoch": 7,
        "ema_test_robust_acc": 51.0,
    }
    assert weights_file(weights, 3) == {"model": weights, "epoch": 3}
    with pytest.raises(ValueError, match="metric names may not be"):
        weights_file(weights, 3, {"epoch": 1.0})


def test_a_run_that_now_selects_by_another_metric_starts_its_best_record_anew(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    best = {"metric": "test_clean_acc", "value": 88.0, "epoch": 2}  # chosen without the PGD monitor
    atomic_save(training_state(TinyConfig(), 3, model, optimizer, best, states), tmp_path / "last.pt")
    lines = []
    state = resume_training_state(
        tmp_path / "last.pt",
        TinyConfig(),
        model,
        optimizer,
        states,
        describe="the tiny model",
        selects_by="test_robust_acc",
        log=lines.append,
    )
    assert state["best"] == {"metric": "test_robust_acc", "value": -math.inf, "epoch": 0}
    assert any("chosen by test_clean_acc and this run selects by test_robust_acc" in line for line in lines)


def test_an_older_last_pt_without_the_average_says_the_run_was_started_without_it(tmp_path, small_model, image_batch):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    state = training_state(
        TinyConfig(), 1, model, optimizer, {"epoch": 0, "robust_acc": -1.0}, {"prior": states["prior"]}
    )
    state["swa"] = None  # an earlier version's last.pt of a run started with the epoch average off
    atomic_save(state, tmp_path / "last.pt")
    with pytest.raises(
        UserError, match="holds no epoch_average state: the run was started with epoch_average switched off"
    ):
        resume(tmp_path / "last.pt", model, optimizer, {"prior": states["prior"], "epoch_average": states["swa"]})


@pytest.mark.parametrize("where", ["model", "optimizer", "method", "prior"])
def test_a_last_pt_with_a_nan_in_any_state_the_run_uses_is_refused_and_left_as_it_was(
    tmp_path, small_model, image_batch, where
):
    model, optimizer, states = trained(small_model, image_batch, seed=0)
    states["method"] = Owner()
    best = {"metric": "test_robust_acc", "value": 1.0, "epoch": 1}
    state = training_state(TinyConfig(), 1, model, optimizer, best, states)
    entry = {
        "model": lambda s: s["model"][next(iter(s["model"]))],
        "optimizer": lambda s: next(iter(s["optimizer"]["state"].values()))["momentum_buffer"],
        "method": lambda s: s["method"]["net.weight"],
        "prior": lambda s: s["prior"]["prior"],
    }[where](state)
    entry.view(-1)[0] = float("nan")
    atomic_save(state, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    fresh_model, fresh_optimizer, fresh_states = trained(small_model, image_batch, seed=1)
    fresh_states["method"] = Owner()
    untouched = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    with pytest.raises(UserError, match=f"last.pt: entry '{where}\\..*' holds NaN or inf"):
        resume(tmp_path / "last.pt", fresh_model, fresh_optimizer, fresh_states)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert all(torch.equal(untouched[k], v) for k, v in fresh_model.state_dict().items())  # nothing was loaded
