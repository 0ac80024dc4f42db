"""IKL-AT and IKL-KD iterations give the very bits they gave when the golden files were saved.

The files in tests/golden/ hold, for two epochs of a digits run of each task (IKL-AT with
AWP, EMA and the class prior; IKL-KD with the class prior and warm-up): the first training
losses handed to ``backward``, the gradients at the first optimiser steps, and the final
weights, averages, class prior and per-epoch metrics. They were written before the
method/distiller classes replaced the name tests, so that a restructuring which changes
any number fails here. Run only through the trainers' public entry points; one thread, so
that CPU reductions are reproducible.

Regenerate (only after a deliberate change of the numbers, and say so in the commit):
    DKL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_iterations.py
"""
import json
import os
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from engine.file_io import atomic_save, load_file
from models import build_model

GOLDEN = Path(__file__).parent / "golden"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECORDED_STEPS = 2  # optimiser steps whose gradients are kept
RECORDED_BACKWARDS = 6  # losses handed to backward (AWP's proxy loss included)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def recorder(monkeypatch):
    """Records the first losses passed to ``backward`` and the gradients at the first steps of
    the training optimiser (SGD with momentum; AWP's proxy optimiser has none)."""
    record = {"backward": [], "grads": []}
    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        if len(record["backward"]) < RECORDED_BACKWARDS:
            record["backward"].append(self.detach().clone())
        return real_backward(self, *args, **kwargs)

    def before_step(optimizer, args, kwargs):
        if optimizer.defaults.get("momentum", 0) > 0 and len(record["grads"]) < RECORDED_STEPS:
            record["grads"].append([p.grad.detach().clone() for group in optimizer.param_groups
                                    for p in group["params"] if p.grad is not None])

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    handle = register_optimizer_step_pre_hook(before_step)
    yield record
    handle.remove()


def run_outcome(run_dir: Path, record: dict, state_keys) -> dict:
    state = load_file(run_dir / "last.pt")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dropped = ("seconds", "sec_per_iter")  # wall-clock times differ by nature
    return {
        "backward": record["backward"],
        "grads": record["grads"],
        "state": {key: state[key] for key in state_keys},
        "metrics": [{k: v for k, v in m.items() if not k.endswith(dropped)} for m in metrics],
    }


def assert_same_bits(actual, expected, where="outcome"):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), f"{where} differs from the golden value"
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            assert_same_bits(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same_bits(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def check_or_update(name: str, outcome: dict) -> None:
    path = GOLDEN / name
    if os.environ.get("DKL_UPDATE_GOLDEN") == "1":
        atomic_save(outcome, path)
        pytest.skip(f"wrote {path}")
    assert_same_bits(outcome, load_file(path))


def test_ikl_at_iterations_match_the_golden_bits(tmp_path, one_thread, recorder):
    from adv_training.train import main

    overrides = [
        "epochs=2", "device=cpu", f"out_dir={tmp_path}", "name=at", "model.arch=digits_cnn_small",
        "awp.enabled=true", "awp.warmup=1", "ema.enabled=true", "ema.start_epoch=1", "eval.every=2",
    ]
    assert main(["--config", str(CONFIGS / "adv_training" / "digits_ikl.yaml"), *overrides]) == 0
    outcome = run_outcome(tmp_path / "at", recorder, ("model", "ema", "prior", "swa"))
    check_or_update("ikl_at_digits.pt", outcome)


def test_ikl_kd_iterations_match_the_golden_bits(tmp_path, one_thread, recorder):
    from knowledge_distillation.train import main

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    atomic_save(build_model("digits_cnn", 10).state_dict(), teacher)
    overrides = [
        "epochs=2", "device=cpu", f"out_dir={tmp_path}", "name=kd", f"teacher.checkpoint={teacher}",
        "ikl.class_prior=true", "ikl.warmup=2",
    ]
    assert main(["--config", str(CONFIGS / "knowledge_distillation" / "digits_ikl.yaml"), *overrides]) == 0
    outcome = run_outcome(tmp_path / "kd", recorder, ("model", "prior"))
    check_or_update("ikl_kd_digits.pt", outcome)
