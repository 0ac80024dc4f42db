"""IKL-AT and IKL-KD iterations give the very bits they gave when the golden files were saved.

The files in tests/golden/ hold, for two epochs of a digits run of each task (IKL-AT with
AWP, EMA and the class prior; IKL-KD with the class prior and warm-up): the first training
losses handed to ``backward``, the gradients at the first optimiser steps, and the final
weights, averages, class prior and per-epoch metrics. They were written before the
method/distiller classes replaced the name tests, so that a restructuring which changes
any number fails here. Run only through the trainers' public entry points.

The bits of a float32 sum depend on the kernel that computes it, and torch picks kernels
by the CPU (AVX2 or AVX-512 paths in ATen, oneDNN's convolutions, MKL's products): the
same run gave other last bits on another machine, and the attack's sign steps turned
those into other weights. So each run is made in a fresh process with kernels that do
not depend on the CPU (`PORTABLE_KERNELS`: ATen's plain C++ kernels, no oneDNN, MKL in
its reproducible mode, one thread), slower but the same on every x86-64 machine.

Regenerate (only after a deliberate change of the numbers, and say so in the commit):
    DKL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_iterations.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.file_io import atomic_save, load_file

GOLDEN = Path(__file__).parent / "golden"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECORDED_STEPS = 2  # optimiser steps whose gradients are kept
RECORDED_BACKWARDS = 6  # losses handed to backward (AWP's proxy loss included)


ROOT = Path(__file__).resolve().parents[1]
PORTABLE_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "DKL_GOLDEN_NO_ONEDNN": "1",
}


def record_training(record: dict):
    """Record the first losses passed to ``backward`` and the gradients at the first steps of the
    training optimiser (SGD with momentum; AWP's proxy optimiser has none) into ``record``."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    record.update(backward=[], grads=[])
    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        if len(record["backward"]) < RECORDED_BACKWARDS:
            record["backward"].append(self.detach().clone())
        return real_backward(self, *args, **kwargs)

    def before_step(optimizer, args, kwargs):
        if optimizer.defaults.get("momentum", 0) > 0 and len(record["grads"]) < RECORDED_STEPS:
            record["grads"].append(
                [
                    p.grad.detach().clone()
                    for group in optimizer.param_groups
                    for p in group["params"]
                    if p.grad is not None
                ]
            )

    torch.Tensor.backward = backward
    register_optimizer_step_pre_hook(before_step)


def run_outcome(run_dir: Path, record: dict, state_keys) -> dict:
    """``state_keys``: last.pt's entries to compare; a pair (golden name, last.pt key) for one saved
    under another name than when the golden file was written."""
    state = load_file(run_dir / "last.pt")
    state_keys = [key if isinstance(key, tuple) else (key, key) for key in state_keys]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dropped = ("seconds", "sec_per_iter")  # wall-clock times differ by nature
    return {
        "backward": record["backward"],
        "grads": record["grads"],
        "state": {golden: state[key] for golden, key in state_keys},
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


def run_at(out_dir: Path, record: dict) -> dict:
    from adv_training.train import main

    overrides = [
        "epochs=2",
        "device=cpu",
        f"out_dir={out_dir}",
        "name=at",
        "model.arch=digits_cnn_small",
        "awp.enabled=true",
        "awp.warmup=1",
        "ema.enabled=true",
        "ema.start_epoch=1",
        "eval.every=2",
    ]
    assert main(["--config", str(CONFIGS / "adv_training" / "digits_ikl.yaml"), *overrides]) == 0
    # the epoch average was saved as "swa" before the section was named epoch_average
    return run_outcome(out_dir / "at", record, ("model", "ema", "prior", ("swa", "epoch_average")))


def run_kd(out_dir: Path, record: dict) -> dict:
    from knowledge_distillation.train import main
    from models import build_model

    torch.manual_seed(0)
    teacher = out_dir / "teacher.pt"
    atomic_save(build_model("digits_cnn", 10).state_dict(), teacher)
    overrides = [
        "epochs=2",
        "device=cpu",
        f"out_dir={out_dir}",
        "name=kd",
        f"teacher.checkpoint={teacher}",
        "ikl.class_prior=true",
        "ikl.warmup=2",
    ]
    assert main(["--config", str(CONFIGS / "knowledge_distillation" / "digits_ikl.yaml"), *overrides]) == 0
    return run_outcome(out_dir / "kd", record, ("model", "prior"))


CASES = {"at": run_at, "kd": run_kd}


def outcome_with_portable_kernels(case: str, out_dir: Path) -> dict:
    """``CASES[case]`` run in a fresh Python with `PORTABLE_KERNELS`; its outcome."""
    env = {
        **os.environ,
        **PORTABLE_KERNELS,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, __file__, case, str(out_dir)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_file(out_dir / "outcome.pt")


@pytest.mark.slow
def test_ikl_at_iterations_match_the_golden_bits(tmp_path):
    check_or_update("ikl_at_digits.pt", outcome_with_portable_kernels("at", tmp_path))


@pytest.mark.slow
def test_ikl_kd_iterations_match_the_golden_bits(tmp_path):
    check_or_update("ikl_kd_digits.pt", outcome_with_portable_kernels("kd", tmp_path))


if __name__ == "__main__":  # one case, in the process `outcome_with_portable_kernels` starts
    case, folder = sys.argv[1], Path(sys.argv[2])
    if os.environ.get("DKL_GOLDEN_NO_ONEDNN") == "1":
        torch.backends.mkldnn.enabled = False  # oneDNN picks its convolution kernels by the CPU
    torch.set_num_threads(1)
    recorded: dict = {}
    record_training(recorded)
    atomic_save(CASES[case](folder, recorded), folder / "outcome.pt")
