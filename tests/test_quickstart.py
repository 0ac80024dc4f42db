"""sh/quickstart.sh --smoke: the quickstart's wiring (train, AutoAttack, table) in seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_smoke_trains_attacks_and_prints_the_table(tmp_path):
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "quickstart.sh"), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "quickstart").glob("*/digits_ikl")
    attack = json.loads((run / "autoattack.json").read_text())
    final = json.loads((run / "results.json").read_text())["final"]
    assert attack["n_ex"] == 100 and attack["robust_acc"] <= attack["clean_acc"]
    row = next(line for line in result.stdout.splitlines() if line.startswith("IKL-AT"))
    assert f"{final['test_clean_acc']:.1f}%" in row and f"{attack['robust_acc']:.1f}%" in row
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_quickstart_refuses_unknown_arguments(tmp_path):
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "quickstart.sh"), "--fast"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown argument '--fast'" in result.stderr
