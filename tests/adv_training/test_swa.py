"""Post-hoc epoch averaging (the reference's swa.py): the recursion, the CLI and its errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from adv_training.swa import average_checkpoints
from engine.errors import UserError
from engine.file_io import atomic_save, load_file
from engine.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]


def epoch_state(seed):
    """A tiny model's state dict with distinct weights, BN statistics and counter per epoch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, kernel_size=2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    model.train()
    model(torch.rand(4, 1, 2, 2))  # updates running stats and num_batches_tracked
    state = model.state_dict()
    state["1.num_batches_tracked"].fill_(100 * seed)
    return state


def write_epochs(run_dir, epochs, wrap=lambda state: state):
    states = {}
    for epoch in epochs:
        states[epoch] = epoch_state(epoch)
        atomic_save(wrap(states[epoch]), run_dir / f"ours-model-epoch{epoch}.pt")
    return states


def expected_average(states, tau, start, end):
    average = dict(states[start])
    for epoch in range(start + 1, end + 1):
        for key, value in states[epoch].items():
            average[key] = (1 - tau) * value + tau * average[key] if value.is_floating_point() else value
    return average


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "adv_training.swa", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("start", [1, 2])
def test_average_matches_the_recursion(tmp_path, start):
    states = write_epochs(tmp_path, range(1, 5))
    lines = []
    path = average_checkpoints(tmp_path, 0.75, start, 4, log=lines.append)
    assert path == tmp_path / f"ours-model-epoch-SWA0.75{start}4.pt"
    assert len(lines) == (4 - start + 1) + 1 and str(path) in lines[-1]
    saved = load_file(path)
    assert set(saved) == {"model", "epoch"} and saved["epoch"] == 4  # every weights file's format
    averaged, expected = saved["model"], expected_average(states, 0.75, start, 4)
    assert set(averaged) == set(expected)
    for key, value in expected.items():
        assert averaged[key].dtype == value.dtype, key
        assert torch.equal(averaged[key], value), key  # the reference's expression, bit for bit
    assert averaged["1.num_batches_tracked"].item() == 400
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_wrapped_and_prefixed_checkpoints(tmp_path):
    states = write_epochs(tmp_path, range(1, 4), wrap=lambda s: {"model": {"module." + k: v for k, v in s.items()}})
    averaged = load_file(average_checkpoints(tmp_path, 0.5, 1, 3, log=lambda line: None))["model"]
    expected = expected_average(states, 0.5, 1, 3)
    assert set(averaged) == set(expected)
    for key, value in expected.items():
        assert torch.equal(averaged[key], value), key


def test_output_name_formats_like_the_reference():
    assert RunFolder("runs/x").epoch_average(0.9, 1, 200).name == "ours-model-epoch-SWA0.91200.pt"
    assert RunFolder("runs/x").epoch_average(float("0.90"), 150, 200).name == "ours-model-epoch-SWA0.9150200.pt"


def test_cli_writes_the_average(tmp_path):
    states = write_epochs(tmp_path, range(1, 5))
    result = run_cli(tmp_path, "0.9", 2, 4)
    assert result.returncode == 0, result.stderr
    output = tmp_path / "ours-model-epoch-SWA0.924.pt"
    assert str(output) in result.stdout
    assert result.stdout.count("reading") == 3
    averaged = load_file(output)["model"]
    for key, value in expected_average(states, 0.9, 2, 4).items():
        assert torch.equal(averaged[key], value), key
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_cli_missing_epoch_exits_2_without_output(tmp_path):
    write_epochs(tmp_path, [1, 2, 4])
    result = run_cli(tmp_path, 0.9, 1, 4)
    assert result.returncode == 2
    assert "ours-model-epoch3.pt" in result.stderr and "save_every=1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*SWA*")) and not list(tmp_path.glob("*.tmp"))


def test_clear_errors(tmp_path):
    write_epochs(tmp_path, range(1, 3))
    with pytest.raises(UserError, match="TAU"):
        average_checkpoints(tmp_path, 1.0, 1, 2)
    with pytest.raises(UserError, match="TAU"):
        average_checkpoints(tmp_path, -0.1, 1, 2)
    with pytest.raises(UserError, match="START .0. must be an epoch"):
        average_checkpoints(tmp_path, 0.5, 0, 2)
    with pytest.raises(UserError, match="START"):
        average_checkpoints(tmp_path, 0.5, 2, 1)
    other = epoch_state(3)
    other["extra.weight"] = torch.zeros(1)
    atomic_save(other, tmp_path / "ours-model-epoch3.pt")
    with pytest.raises(UserError, match="ours-model-epoch3.pt does not fit the earlier epochs .*unexpected"):
        average_checkpoints(tmp_path, 0.5, 1, 3, log=lambda line: None)
    assert not list(tmp_path.glob("*SWA*"))


def test_an_epoch_with_nan_weights_is_refused_by_file_and_key(tmp_path):
    write_epochs(tmp_path, range(1, 3))
    broken = epoch_state(3)
    broken["3.weight"][0, 0] = float("nan")
    atomic_save(broken, tmp_path / "ours-model-epoch3.pt")
    with pytest.raises(UserError, match=r"ours-model-epoch3.pt: entry '3.weight' holds NaN or inf"):
        average_checkpoints(tmp_path, 0.9, 1, 3, log=lambda line: None)
    assert not list(tmp_path.glob("*SWA*"))


def wider_state():
    """Another architecture's state dict: the same keys, a wider first layer."""
    model = nn.Sequential(nn.Conv2d(1, 3, kernel_size=2), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 3))
    return model.state_dict()


@pytest.mark.parametrize("odd, epochs", [(1, 3), (2, 3), (3, 3), (1, 4)])
def test_the_file_that_does_not_fit_is_the_one_named(tmp_path, odd, epochs):
    write_epochs(tmp_path, range(1, epochs + 1))
    atomic_save(wider_state(), tmp_path / f"ours-model-epoch{odd}.pt")
    with pytest.raises(UserError) as raised:
        average_checkpoints(tmp_path, 0.5, 1, epochs, log=lambda line: None)
    message = str(raised.value)
    assert message.startswith(str(tmp_path / f"ours-model-epoch{odd}.pt") + " does not fit"), message
    assert not list(tmp_path.glob("*SWA*"))


def test_two_files_that_do_not_fit_each_other_are_both_named(tmp_path):
    write_epochs(tmp_path, range(1, 3))
    atomic_save(wider_state(), tmp_path / "ours-model-epoch1.pt")
    with pytest.raises(UserError, match="ours-model-epoch1.pt and .*ours-model-epoch2.pt do not fit each other"):
        average_checkpoints(tmp_path, 0.5, 1, 2, log=lambda line: None)
