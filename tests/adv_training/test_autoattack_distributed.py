"""AutoAttack over several processes (torchrun, gloo on the CPU) gives one process's evaluation
exactly: the same accuracies, log lines and adversarial examples; it resumes after a kill, and
a rerun with another number of processes continues the same evaluation."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.file_io import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_distributed import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = ("clean_acc", "robust_acc", "robust_acc_after", "n_ex", "checkpoint_sha256")


def command(run_dir, name, nproc):
    evaluation = [
        "-m",
        "adv_training.auto_attacks.eval",
        "--checkpoint",
        str(run_dir),
        "--which",
        "last",
        "--epsilon",
        "0.2",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "fab",
        "--n_ex",
        "120",
        "--batch_size",
        "10",
        "--device",
        "cpu",
        "--log_path",
        str(run_dir / f"{name}.log"),
        "--save_dir",
        str(run_dir / f"{name}_adv"),
    ]
    if nproc == 1:
        return [sys.executable, *evaluation]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *evaluation,
    ]


def run(run_dir, name, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command(run_dir, name, nproc), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def attack_lines(log):
    """The log's per-batch and accuracy lines, times left out (they differ from run to run)."""
    lines = [line for line in log.read_text().splitlines() if " successfully perturbed" in line or "accuracy" in line]
    return [re.sub(r"\d+\.\d+ s\b", "- s", line) for line in lines]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits model after 3 epochs of standard training (most test images classified correctly)."""
    out = tmp_path_factory.mktemp("aa")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    config = str(ROOT / "configs" / "adv_training" / "digits_standard.yaml")
    trained = subprocess.run(
        [sys.executable, "-m", "adv_training.train", "--config", config, "epochs=3", f"out_dir={out}", "name=model"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    return out / "model"


@pytest.mark.slow
def test_three_processes_give_one_processs_evaluation_exactly(trained):
    for name, nproc in (("one", 1), ("three", 3)):
        done = run(trained, name, nproc)
        assert done.returncode == 0, done.stderr
    one, three = (json.loads((trained / f"{name}.json").read_text()) for name in ("one", "three"))
    assert {k: one[k] for k in NUMBERS} == {k: three[k] for k in NUMBERS}
    assert (one["processes"], three["processes"]) == (1, 3)
    assert 0 < three["robust_acc"] < three["clean_acc"]  # the attacks broke some points, not all
    a = load_file(Path(one["adversarial_examples"]))["adv_complete"]
    b = load_file(Path(three["adversarial_examples"]))["adv_complete"]
    assert torch.equal(a, b)
    # rank 0 logged every batch of every attack, as one process does, and only it wrote
    assert attack_lines(trained / "one.log") == attack_lines(trained / "three.log")


def children(pid):
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid):
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_killed_sharded_evaluation_continues_with_another_number_of_processes(trained):
    """Killed during its attacks under 3 processes, continued by 2: the result is one process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    state = trained / "killed.state.pt"
    runner = subprocess.Popen(
        command(trained, "killed", 3),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.poll() is None:  # kill once some batches are saved
        if state.exists():
            saved = load_file(state)["runs"]["autoattack"]
            if (saved["current"] or {}).get("next_batch", 0) >= 3 or saved["done"]:
                break
        time.sleep(0.02)
    assert runner.poll() is None, "the evaluation ended before it could be killed"
    workers = children(runner.pid)  # torchrun starts them in sessions of their own: killpg would miss them
    assert len(workers) == 3, workers
    os.kill(runner.pid, signal.SIGKILL)  # the launcher alone, as a user's kill or a scheduler's would
    runner.wait(timeout=60)
    # its workers end with it (engine.distributed.stop_with_the_launcher): none writes the folder afterwards
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "a worker outlived its killed launcher"
    before = state.read_bytes(), (trained / "killed.log").read_bytes()
    time.sleep(1.0)
    assert (state.read_bytes(), (trained / "killed.log").read_bytes()) == before  # nothing writes any more
    saved = load_file(state)["runs"]["autoattack"]
    assert len(saved["done"]) < 2  # stopped before its last attack ended
    assert not (trained / "killed.json").exists()

    resumed = run(trained, "killed", 2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in (trained / "killed.log").read_text()
    if not (trained / "one.json").exists():
        assert run(trained, "one", 1).returncode == 0
    one, killed = (json.loads((trained / f"{name}.json").read_text()) for name in ("one", "killed"))
    assert {k: one[k] for k in NUMBERS} == {k: killed[k] for k in NUMBERS}
    assert killed["resumed"] and killed["processes"] == 2
    a = load_file(Path(one["adversarial_examples"]))["adv_complete"]
    b = load_file(Path(killed["adversarial_examples"]))["adv_complete"]
    assert torch.equal(a, b)
