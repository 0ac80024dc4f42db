"""sh/quickstart.sh --smoke: the quickstart's wiring (train, AutoAttack, table) in seconds, and that it
evaluates the weights the run's export publishes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adv_training.export import main as export_main
from engine.file_io import sha256_file
from engine.run_folder import RunFolder, metric_key
from experiments.report import AUTOATTACK_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the output of one ``sh/quickstart.sh --smoke``, its digits_ikl run folder)."""
    folder = tmp_path_factory.mktemp("quickstart")
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "quickstart.sh"), "--smoke"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (folder / "runs" / "quickstart").glob("*/digits_ikl")
    return result, run


@pytest.mark.slow
def test_quickstart_smoke_trains_attacks_and_prints_the_table(smoke):
    result, run = smoke
    attack = json.loads((run / "autoattack.json").read_text())
    final = json.loads((run / "results.json").read_text())["final"]
    assert attack["n_ex"] == 100 and attack["robust_acc"] <= attack["clean_acc"]
    # the clean accuracies, counted here: AutoAttack's on the first 100 test images, the monitor's on all 450,
    # both of the weights AutoAttack evaluated
    import torch

    from engine.data import build_test_set
    from models import build_model, load_weights

    weights = run / Path(attack["checkpoint_file"]).name  # a path from the quickstart's folder
    model = load_weights(build_model("digits_cnn", 10, dataset="digits"), weights).eval()
    test_set = build_test_set("digits", None)
    with torch.no_grad():
        hits = [model(image[None]).argmax().item() == label for image, label in (test_set[i] for i in range(450))]
    assert attack["clean_acc"] == pytest.approx(100 * sum(hits[:100]) / 100, abs=1e-9)
    assert final[metric_key("clean_acc", owner="swa")] == pytest.approx(100 * sum(hits) / 450, abs=1e-9)
    # every number of the row is the epoch average's: the monitor's clean accuracy, and AutoAttack's
    row = next(line for line in result.stdout.splitlines() if line.startswith("IKL-AT"))
    assert f"{final[metric_key('clean_acc', owner='swa')]:.1f}%" in row and f"{attack['robust_acc']:.1f}%" in row
    assert f"Weights: each run's epoch average ({Path(attack['checkpoint_file']).name})" in result.stdout
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_quickstart_evaluates_the_weights_that_the_export_and_the_report_take(smoke, tmp_path, capsys):
    """AutoAttack's report counts for the run's model card and RobustBench kit only when it evaluated
    the weights export publishes (matched by sha256), and for experiments.report --which swa only when
    its `which` is the epoch average's."""
    _, run = smoke
    attack = json.loads((run / "autoattack.json").read_text())
    weights, which = RunFolder(run).weights()
    assert which == "swa" and attack["which"] == AUTOATTACK_WEIGHTS["swa"]
    assert attack["checkpoint_sha256"] == sha256_file(weights)
    assert export_main([str(run), "--out", str(tmp_path / "m.pt"), "--robustbench"]) == 0
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["weights"]["which"] == attack["which"] and card["weights"]["sha256"] == attack["checkpoint_sha256"]
    # the smoke run's AutoAttack is a quick check (APGD-CE on 100 images), so the kit says why it holds no number
    assert "no standard AutoAttack report" in capsys.readouterr().out


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
