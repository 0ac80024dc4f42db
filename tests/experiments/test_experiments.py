"""Sweeps, the report and the export on real digits runs (and tiny CIFAR-format WRN runs)."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adv_training.auto_attacks.eval import main as autoattack_main
from adv_training.export import export, robustbench_layout
from adv_training.export import main as export_main
from engine.file_io import atomic_save, load_file
from experiments import report, sweep
from models import build_model, load_weights
from models.dm_wide_resnet import DMWideResNet

ROOT = Path(__file__).resolve().parents[2]


def _robustbench_layouts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("robustbench_layouts", ROOT / "tests" / "robustbench_layouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RBWideResNet, RBDMWideResNet = _robustbench_layouts().RBWideResNet, _robustbench_layouts().RBDMWideResNet
AT_DIGITS = ROOT / "configs" / "adv_training" / "digits_ikl.yaml"
KD_CONFIGS = ROOT / "configs" / "knowledge_distillation"
# PGD-20 on 90 of the 450 test images: the sweep and report tests check folders and averages, not accuracy
QUICK = ["epochs=2", "eval.every=1", "eval.num_examples=90", "device=cpu"]
SWEPT = [*QUICK, "paper_row=cifar100_ikl"]


def results(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


def autoattack(run_dir, images, name="autoattack", version="standard"):
    """AutoAttack's eval.py on the first ``images`` test images of a digits run's last.pt."""
    run_dir = Path(run_dir)
    assert (
        autoattack_main(
            [
                "--checkpoint",
                str(run_dir),
                "--which",
                "last",
                "--epsilon",
                "0.2",
                "--version",
                version,
                *(["--attacks", "apgd-ce"] if version == "custom" else []),
                "--n_ex",
                str(images),
                "--batch_size",
                str(images),
                "--log_path",
                str(run_dir / f"{name}.log"),
                "--save_dir",
                str(run_dir / "adv_inputs"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return json.loads((run_dir / f"{name}.json").read_text())


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.fixture(scope="module")
def at_sweep(tmp_path_factory):
    """IKL-AT on digits, beta 10 and 20, seeds 0 and 1: four runs of two epochs, through the sweep,
    each naming a paper row (for the report to show)."""
    out = tmp_path_factory.mktemp("sweeps")
    assert (
        sweep.main(["--config", str(AT_DIGITS), "--seeds", "0", "1", *SWEPT, f"out_dir={out}", "ikl.beta=10,20"]) == 0
    )
    return out / "digits_ikl"


@pytest.mark.slow
def test_sweep_gives_every_setting_and_seed_its_folder_and_config(at_sweep):
    folders = sorted(path.name for path in at_sweep.iterdir())
    assert folders == ["ikl.beta=10,seed=0", "ikl.beta=10,seed=1", "ikl.beta=20,seed=0", "ikl.beta=20,seed=1"]
    for folder in folders:
        config = (at_sweep / folder / "config.yaml").read_text()
        beta, seed = folder.split(",")
        assert f"beta: {float(beta.split('=')[1])}" in config and f"\nseed: {seed.split('=')[1]}\n" in config
        assert results(at_sweep / folder)["epochs"] == 2


@pytest.mark.slow
def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(at_sweep, tmp_path, capfd):
    stamps = {path: path.stat().st_mtime_ns for path in at_sweep.glob("*/results.json")}
    out = at_sweep.parent
    assert (
        sweep.main(["--config", str(AT_DIGITS), "--seeds", "0", "1", *SWEPT, f"out_dir={out}", "ikl.beta=10,20"]) == 0
    )
    assert "4 finished (skipped), 0 to resume, 0 to start" in capfd.readouterr().err
    assert stamps == {path: path.stat().st_mtime_ns for path in at_sweep.glob("*/results.json")}

    args = ["--config", str(AT_DIGITS), "--seeds", "5", *QUICK, f"out_dir={tmp_path}"]
    assert sweep.main([*args, "stop_after=1"]) == 0  # stopped after epoch 1, as a job time limit would
    run = tmp_path / "digits_ikl" / "seed=5"
    assert (run / "last.pt").is_file() and not (run / "results.json").exists()
    capfd.readouterr()
    assert sweep.main(args) == 0
    assert "1 to resume" in capfd.readouterr().err
    assert results(run)["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_sweep_prints_torchrun_commands_for_a_cluster(at_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPROC", "2")
    (tmp_path / "digits_ikl" / "ikl.beta=20,seed=0").mkdir(parents=True)
    atomic_save({"epoch": 1}, tmp_path / "digits_ikl" / "ikl.beta=20,seed=0" / "last.pt")  # an interrupted run
    assert (
        sweep.main(
            ["--config", str(AT_DIGITS), "--seeds", "0", *QUICK, f"out_dir={tmp_path}", "ikl.beta=10,20", "--print"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(
        "-m torch.distributed.run --nproc_per_node=2 --standalone -m adv_training.train" in line for line in lines
    )
    assert "resume=true" not in lines[0] and lines[1].endswith("resume=true")
    assert "name=ikl.beta=10,seed=0" in lines[0]
    assert not (tmp_path / "digits_ikl" / "ikl.beta=10,seed=0").exists()  # printed, not run


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["ikl.betta=10,20"], "ikl.betta"),
        (["seed=3"], "use --seeds"),
        (["name=x"], "names, places and resumes"),
        (["resume=true"], "names, places and resumes"),
        (["ikl.beta=10,10"], "distinct"),
    ],
)
def test_sweep_refuses_bad_grids_before_running_anything(overrides, message, tmp_path, capsys):
    assert sweep.main(["--config", str(AT_DIGITS), "--seeds", "0", f"out_dir={tmp_path}", *overrides]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and message in error and "Traceback" not in error
    assert list(tmp_path.iterdir()) == []


def test_grid_values_split_outside_brackets():
    assert sweep.split_values("1,0.4") == ["1", "0.4"]
    assert sweep.split_values("[100,150],[50]") == ["[100,150]", "[50]"]
    assert sweep.folder_name([("attack.epsilon", "8/255")], 0) == "attack.epsilon=8_255,seed=0"


@pytest.mark.slow
def test_report_is_the_mean_and_sample_std_of_the_seeds(at_sweep, tmp_path, capsys):
    # AutoAttack (APGD-CE only, 60 images) on one seed of beta 10: that cell averages one run.
    evaluated = at_sweep / "ikl.beta=10,seed=0"
    autoattack(evaluated, 60)
    autoattack_acc = json.loads((evaluated / "autoattack.json").read_text())["robust_acc"]
    autoattack(evaluated, 30, name="quick", version="custom")  # a later quick check does not count as AutoAttack
    csv_path = tmp_path / "report.csv"
    assert report.main([str(at_sweep), "--csv", str(csv_path), "--plot", str(tmp_path / "curves.png")]) == 0
    text = capsys.readouterr().out
    rows = {row["setting"]: row for row in csv.DictReader(csv_path.open())}
    assert set(rows) == {"digits_ikl/ikl.beta=10", "digits_ikl/ikl.beta=20"}
    for beta in (10, 20):
        finals = [results(at_sweep / f"ikl.beta={beta},seed={seed}")["final"] for seed in (0, 1)]
        row = rows[f"digits_ikl/ikl.beta={beta}"]
        for key, column in (("test_clean_acc", "clean"), ("test_robust_acc", "pgd")):
            values = [final[key] for final in finals]
            assert float(row[f"{column}_mean"]) == pytest.approx(sum(values) / 2, abs=1e-9)
            assert float(row[f"{column}_std"]) == pytest.approx(sample_std(values), abs=1e-9)
            assert f"{sum(values) / 2:.2f} ± {sample_std(values):.2f}" in text
        assert row["runs"] == "2" and row["running"] == "0"
    assert float(rows["digits_ikl/ikl.beta=10"]["autoattack_mean"]) == autoattack_acc
    assert (
        rows["digits_ikl/ikl.beta=10"]["autoattack_n"] == "1"
        and rows["digits_ikl/ikl.beta=20"]["autoattack_mean"] == ""
    )
    assert f"{autoattack_acc:.2f} (n=1)" in text and "| PGD-20 | AutoAttack (60 images) |" in text
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_report_marks_runs_in_progress_and_stale_autoattack_results(at_sweep, tmp_path, capsys):
    import shutil

    for name in ("ikl.beta=20,seed=0", "ikl.beta=20,seed=1"):
        shutil.copytree(at_sweep / name, tmp_path / "digits_ikl" / name)
    running = tmp_path / "digits_ikl" / "ikl.beta=20,seed=1"
    (running / "results.json").unlink()  # as if still training
    finished = tmp_path / "digits_ikl" / "ikl.beta=20,seed=0"
    autoattack(finished, 20, name="aa")
    state = load_file(finished / "last.pt")
    state["epoch"] = 3  # the weights file changed after its evaluation
    atomic_save(state, finished / "last.pt")
    assert report.main([str(tmp_path / "digits_ikl")]) == 0
    text = capsys.readouterr().out
    clean = results(finished)["final"]["test_clean_acc"]
    assert f"| digits_ikl/ikl.beta=20 | 1 (+1 running) | {clean:.2f} |" in text
    assert f"{running.resolve()} (epoch 2 of 2)" in text and "In progress (not averaged)" in text
    assert "no longer in the folder (left out)" in text


@pytest.mark.slow
def test_report_shows_the_papers_row_and_kd_top1(at_sweep, tmp_path, capsys):
    import shutil

    # One AT run as a one-seed sweep of digits_ikl leaves it: the KD sweep below has the same name.
    out, kd_out = tmp_path / "runs", tmp_path / "kd_runs"
    shutil.copytree(at_sweep / "ikl.beta=20,seed=0", out / "digits_ikl" / "seed=0")
    teacher_args = [
        "--config",
        str(KD_CONFIGS / "digits_teacher.yaml"),
        "epochs=1",
        "device=cpu",
        f"out_dir={tmp_path}",
    ]
    from knowledge_distillation.train import main as kd_main

    assert kd_main(teacher_args) == 0
    teacher = tmp_path / "digits_teacher" / "best.pt"
    assert (
        sweep.main(
            [
                "--config",
                str(KD_CONFIGS / "digits_ikl.yaml"),
                "--seeds",
                "0",
                "1",
                "epochs=2",
                "device=cpu",
                f"out_dir={kd_out}",
                f"teacher.checkpoint={teacher}",
            ]
        )
        == 0
    )
    assert report.main([str(out), str(kd_out), "--csv", str(tmp_path / "r.csv")]) == 0
    text = capsys.readouterr().out
    assert "| 65.76 / 31.91 [1] |" in text and "[1] Cui et al., NeurIPS 2024, Table 2" in text
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [row["setting"] for row in rows] == ["digits_ikl", "digits_ikl (2)"]  # one AT, one KD setting
    kd = next(row for row in rows if row["task"] == "knowledge_distillation")
    tops = [results(kd_out / "digits_ikl" / f"seed={seed}")["best_test_top1"] for seed in (0, 1)]
    assert float(kd["top1_best_mean"]) == pytest.approx(sum(tops) / 2, abs=1e-9)
    assert float(kd["top1_best_std"]) == pytest.approx(sample_std(tops), abs=1e-9)


@pytest.mark.slow
def test_export_of_a_digits_run_with_its_autoattack_card(at_sweep, tmp_path):
    run = at_sweep / "ikl.beta=10,seed=0"  # evaluated by AutoAttack in the report test, or now
    if not (run / "autoattack.json").is_file():
        autoattack(run, 60)
    out = tmp_path / "exports" / "digits.pt"
    assert export_main([str(run), "--which", "last", "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    model = load_weights(build_model("digits_cnn", 10, dataset="digits"), out)
    trained = load_file(run / "last.pt")["model"]
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained) and exported.keys() == trained.keys()
    card = json.loads(out.with_suffix(".json").read_text())
    attack = json.loads((run / "autoattack.json").read_text())
    assert card["autoattack_acc"]["value"] == attack["robust_acc"] and card["clean_acc"]["value"] == attack["clean_acc"]
    assert card["autoattack_acc"]["source"].endswith("autoattack.json")
    assert (card["architecture"], card["robustbench_model"], card["threat_model"], card["eps"]) == (
        "digits_cnn",
        None,
        "Linf",
        0.2,
    )
    assert card["seed"] == 0 and card["config"]["ikl"]["beta"] == 10.0 and "commit" in card


def test_export_of_a_wide_resnet_loads_strictly_into_robustbenchs_layout(cifar10_root, tmp_path, tiny_at_run):
    from adv_training.train import main as train_main

    overrides = ["data.batch_size=50", "epochs=1", "eval.pgd_steps=1", "awp.enabled=false"]
    assert train_main(tiny_at_run(cifar10_root, tmp_path, *overrides, name="wrn")) == 0
    out = tmp_path / "wrn.pt"
    card, _ = export(tmp_path / "wrn", "swa", out)
    assert card["robustbench_model"] == "WideResNet(depth=10, widen_factor=1, num_classes=10)"
    assert card["autoattack_acc"] is None and "no standard AutoAttack report" in card["note"]
    theirs = RBWideResNet(depth=10, widen_factor=1, num_classes=10)
    theirs.load_state_dict(torch.load(out, weights_only=True), strict=True)
    ours = load_weights(build_model("WideResNet", 10, depth=10, widen_factor=1), out)
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(theirs.eval()(images), ours.eval()(images))


def test_dm_wide_resnet_export_carries_robustbenchs_normalisation_buffers():
    torch.manual_seed(0)
    ours = DMWideResNet(100, 10, 2, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)).eval()
    constructor, state = robustbench_layout(ours, 100)
    assert constructor.startswith("DMWideResNet(num_classes=100, depth=10, width=2, activation_fn=Swish")
    theirs = RBDMWideResNet(100, 10, 2, mean=(0, 0, 0), std=(1, 1, 1))
    theirs.load_state_dict(state, strict=True)  # mean and std included
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(theirs.eval()(images), ours(images))
    load_weights(DMWideResNet(100, 10, 2, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)), state)


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    assert export_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 2
    assert export_main([str(tmp_path), "--out", str(tmp_path / "x.bin")]) == 2
    errors = capsys.readouterr().err
    assert "is not a run folder" in errors and "must end in .pt" in errors


@pytest.mark.slow
def test_launchers_take_seeds(tmp_path):
    env = {**os.environ, "SEEDS": "0 1", "DKL_PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "train_dkl_cifar100.sh"), f"out_dir={tmp_path}", "--print"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # two configs, two seeds each
    assert "name=seed=0" in lines[0] and "name=seed=1" in lines[1] and "cifar100_ikl_a5b20t4.yaml" in lines[3]


@pytest.mark.slow
@pytest.mark.parametrize(
    "old, new, flag", [("engine.sweep", "experiments.sweep", ["--config"]), ("engine.report", "experiments.report", [])]
)
def test_the_old_commands_name_the_new_ones_and_run_them(old, new, flag, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", old, *flag, str(tmp_path / "absent")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2  # the new command's answer to a missing path (argparse would give 2 too)
    note, error = result.stderr.splitlines()[:2]
    assert f"python -m {old} is now python -m {new}" in note
    assert error.startswith("error: ") and "absent" in error
