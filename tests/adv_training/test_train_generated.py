"""Generated-data IKL-AT end to end: .npz parts in Wang et al.'s format -> prepare -> train -> resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adv_training import generated as generated_data
from adv_training.prepare_generated import main as prepare_main
from adv_training.train import main
from engine import data as data_lib
from engine.file_io import load_file
from engine.run_folder import RunFolder

from .test_train import accuracy_by_hand, examples, first_test_images, flatten, wrn
from .test_train_distributed import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory):
    """Two parts (150 + 100 images of 10 classes) prepared into one folder."""
    folder = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    parts = []
    for index, count in enumerate((150, 100), start=1):
        parts.append(folder / f"1m_part{index}.npz")
        np.savez(
            parts[-1], image=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), label=rng.integers(0, 10, count)
        )
    assert prepare_main([*map(str, parts), "--out", str(folder / "prepared"), "--dataset", "cifar10", "--quiet"]) == 0
    return folder / "prepared"


@pytest.fixture(scope="session")
def generated_run(tiny_at_run):
    """``generated_run(data_root, generated, out_dir, *extra, name="run")``: a tiny run (`tiny_at_run`) on 200 real
    and 250 generated images, batch 40 (half generated), PGD-2 attacks in training."""

    def overrides(data_root, generated, out_dir, *extra, name="run"):
        mixing = [f"generated.path={generated}", "generated.unsup_fraction=0.5", "generated.epoch_images=200"]
        return tiny_at_run(data_root, out_dir, "attack.steps=2", *mixing, *extra, name=name)

    return overrides


@pytest.mark.slow
def test_a_generated_data_run_trains_on_mixed_batches(
    cifar10_root, generated_root, tmp_path, monkeypatch, generated_run
):
    seen = []
    real_getitem = generated_data.MixedBatches.__getitem__

    def recording(self, key):
        seen.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(generated_data.MixedBatches, "__getitem__", recording)
    assert main(generated_run(cifar10_root, generated_root, tmp_path)) == 0
    assert [m["epoch"] for m in RunFolder(tmp_path / "run").read_metrics()] == [1, 2]
    assert [(key.epoch, key.number) for key in seen] == [(e, n) for e in (1, 2) for n in range(5)]  # ceil(200/40)
    for key in seen:
        assert len(key.indices) == 40 and sum(i >= 200 for i in key.indices) == 20  # 200 real images come first


@pytest.mark.slow
def test_a_stopped_and_resumed_generated_data_run_ends_bit_equal(cifar10_root, generated_root, tmp_path, generated_run):
    assert main(generated_run(cifar10_root, generated_root, tmp_path, name="straight")) == 0
    assert main(generated_run(cifar10_root, generated_root, tmp_path, "stop_after=1", name="resumed")) == 0
    assert main(generated_run(cifar10_root, generated_root, tmp_path, "resume=true", name="resumed")) == 0
    straight, resumed = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "resumed" / "last.pt")
    for key in ("model", "ema"):
        first, second = straight[key], resumed[key]
        first, second = first.get("module", first), second.get("module", second)
        for name, value in first.items():
            assert torch.equal(value, second[name]), f"{key}.{name}"


@pytest.mark.slow
def test_two_processes_train_a_generated_data_run_and_resume_it_exactly(
    cifar10_root, generated_root, tmp_path, generated_run
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def launch(*extra, name):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "adv_training.train",
            *generated_run(cifar10_root, generated_root, tmp_path, *extra, name=name),
        ]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr

    launch(name="straight")
    launch("stop_after=1", name="resumed")
    launch("resume=true", name="resumed")
    straight, resumed = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "resumed" / "last.pt")
    assert straight["world_size"] == resumed["world_size"] == 2
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


@pytest.mark.parametrize(
    "override, message",
    [
        ("generated.path={empty}", "holds no manifest.json (not prepared, or preparing stopped): prepare Wang et al."),
        ("data.dataset=cifar100", "has 10 classes and this run's dataset 100"),
        ("data.augment=autoaug", "'data.augment' must be basic or none with generated.path"),
        ("generated.unsup_fraction=1", "'generated.unsup_fraction'"),
        ("data.drop_last=true", "'data.drop_last' has no meaning with generated.path"),
        ("generated.rotate_degrees=15 data.augment=none", "'generated.rotate_degrees' rotates after crop and flip"),
        ("generated.path= generated.rotate_degrees=15", "'generated.rotate_degrees' acts on the mixing loader only"),
        (
            "optim.schedule=cosinew optim.warmup_epochs=2",
            "'optim.warmup_epochs' does not apply to optim.schedule=cosinew",
        ),
    ],
)
def test_bad_generated_data_settings_end_in_one_message(
    override, message, cifar10_root, cifar100_root, generated_root, tmp_path, capsys, generated_run
):
    (tmp_path / "empty").mkdir()
    root = cifar100_root if "cifar100" in override else cifar10_root
    args = generated_run(root, generated_root, tmp_path, *override.format(empty=tmp_path / "empty").split())
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0, error
    assert not (tmp_path / "run" / "last.pt").exists()


# --- Wang et al.'s recipe: validation split, margin PGD, selection by the weight average ----------


def test_the_margin_objective_by_hand():
    from adv_training.methods import margin_objective

    logits = torch.tensor([[2.0, 5.0, 1.0], [4.0, 1.0, 3.5], [0.0, 0.0, 3.0]])
    targets = torch.tensor([1, 0, 0])
    # margins o_y - max_{k != y} o_k: 3, 0.5, -3 (misclassified: clipped to 0)
    assert margin_objective(targets)(logits).item() == pytest.approx(-(3.0 + 0.5 + 0.0))


def test_validation_split_monitors_held_out_images_and_best_holds_the_selected_average(
    cifar10_root, generated_root, tmp_path, monkeypatch, generated_run
):
    trained_on = []
    real_make_loader = generated_data.make_mixed_loader

    def recording(real_images, real_labels, *args, **kwargs):
        trained_on.append(np.asarray(real_images).copy())
        return real_make_loader(real_images, real_labels, *args, **kwargs)

    monkeypatch.setattr("adv_training.loaders.make_mixed_loader", recording)
    args = generated_run(
        cifar10_root,
        generated_root,
        tmp_path,
        "epochs=1",
        "data.validation_size=30",
        "eval.split=validation",
        "eval.objective=margin",
        "eval.select=ema",
        "ema.warmup_fraction=0.5",
        "ema.average_buffers=false",
        "ema.tau=0.995",
    )
    assert main(args) == 0
    real = data_lib.build_train_set("cifar10", cifar10_root, augment="none", verify_checksum=False).data
    assert np.array_equal(trained_on[0], real[30:])  # the first 30 real images are held out
    (record,) = RunFolder(tmp_path / "run").read_metrics()
    # monitored: clean and margin PGD-2 accuracy on the 30 held-out images, and clean accuracy on the test images
    held_out = examples(
        data_lib.build_train_set("cifar10", cifar10_root, augment="none", verify_checksum=False), range(30)
    )
    test_images = first_test_images(cifar10_root)
    for owner, weights in (("", "last.pt"), ("ema_", "ema.pt")):
        model = wrn(tmp_path / "run" / weights)
        assert (record[f"{owner}val_clean_acc"], record[f"{owner}val_robust_acc"]) == accuracy_by_hand(
            model, held_out, objective="margin"
        ), owner
        assert record[f"{owner}test_clean_acc"] == accuracy_by_hand(model, test_images, steps=0)[0], owner
    assert "test_robust_acc" not in record
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best_metric"] == "ema_val_robust_acc" and results["best_value"] == record["ema_val_robust_acc"]
    best, ema = load_file(tmp_path / "run" / "best.pt"), load_file(tmp_path / "run" / "ema.pt")
    for name, value in ema["model"].items():
        assert torch.equal(best["model"][name], value), name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.split=validation"], "'eval.split' is validation but no training image is held out"),
        (["eval.select=ema", "ema.enabled=false"], "'eval.select' is ema but ema.enabled is false"),
        (["data.validation_size=200"], "data.validation_size=200 leaves no training image: the training set has 200"),
    ],
)
def test_bad_validation_settings_end_in_one_message(
    overrides, message, cifar10_root, generated_root, tmp_path, capsys, generated_run
):
    assert main(generated_run(cifar10_root, generated_root, tmp_path, *overrides)) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0, error


# --- the paper's generated-data rows: configs, launchers, end to end ---------------------------

WANG_RECIPE = {  # Wang et al.'s README command, parser defaults, train-wa.py and watrain.py
    "seed": 1,
    "epochs": 400,
    "label_smoothing": 0.1,
    "model.arch": "wrn-28-10-swish",
    "data.augment": "basic",
    "data.batch_size": 512,
    "data.validation_size": 1024,
    "generated.unsup_fraction": 0.7,
    "generated.epoch_images": 50_000,
    "generated.rotate_degrees": 0.0,
    "optim.lr": 0.2,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
    "optim.batchnorm_weight_decay": False,
    "optim.schedule": "cosinew",
    "optim.warmup_epochs": 0,
    "attack.norm": "linf",
    "attack.epsilon": 8 / 255,
    "attack.eps_ramp": False,
    "attack.budget": "fixed",
    "attack.steps": 10,
    "attack.step_size": 2 / 255,
    "attack.random_start": "uniform",
    "attack.eval_mode": False,
    "attack.freeze_bn_stats": True,
    "awp.enabled": False,
    "ema.enabled": True,
    "ema.tau": 0.995,
    "ema.start_epoch": 1,
    "ema.warmup_fraction": 0.025,
    "ema.average_buffers": False,
    "epoch_average.enabled": False,
    "eval.split": "validation",
    "eval.pgd_steps": 40,
    "eval.step_size": 2 / 255,
    "eval.objective": "margin",
    "eval.select": "ema",
    "eval.num_examples": None,
}
LARGE = {"epochs": 2400, "data.batch_size": 2048, "generated.unsup_fraction": 0.8}  # Wang et al.'s paper, 20M/50M
IKL_CIFAR10 = {
    "method": "ikl",
    "data.dataset": "cifar10",
    "attack.alpha": 1.0,
    "attack.beta": 0.0,
    "ikl.alpha": 3.0,
    "ikl.beta": 10.0,
    "ikl.prior_temperature": 4.0,
}  # a3_b10_t4
ROTATION = {"generated.rotate_degrees": 15.0}  # Wang et al.'s cifar100s.py
IKL_CIFAR100 = {
    "method": "ikl",
    "data.dataset": "cifar100",
    "attack.alpha": 1.0,
    "attack.beta": 1.0,
    "ikl.alpha": 5.0,
    "ikl.beta": 12.0,
    "ikl.prior_temperature": 4.0,
    **ROTATION,
}  # a5_b12_t4
GENERATED_RUNS = {
    "cifar10_ikl_1m": {**IKL_CIFAR10, "generated.path": "data/generated/cifar10_1m"},
    "cifar10_ikl_20m": {**IKL_CIFAR10, **LARGE, "generated.path": "data/generated/cifar10_20m"},
    "cifar100_ikl_1m": {**IKL_CIFAR100, "generated.path": "data/generated/cifar100_1m"},
    "cifar100_ikl_50m": {**IKL_CIFAR100, **LARGE, "generated.path": "data/generated/cifar100_50m"},
    "cifar10_trades_1m": {
        "method": "trades",
        "trades.beta": 5.0,
        "data.dataset": "cifar10",
        "generated.path": "data/generated/cifar10_1m",
    },
    "cifar10_trades_20m": {
        "method": "trades",
        "trades.beta": 5.0,
        "data.dataset": "cifar10",
        **LARGE,
        "generated.path": "data/generated/cifar10_20m",
    },
    "cifar100_trades_1m": {
        "method": "trades",
        "trades.beta": 5.0,
        "data.dataset": "cifar100",
        **ROTATION,
        "generated.path": "data/generated/cifar100_1m",
    },
    "cifar100_trades_50m": {
        "method": "trades",
        "trades.beta": 5.0,
        "data.dataset": "cifar100",
        **LARGE,
        **ROTATION,
        "generated.path": "data/generated/cifar100_50m",
    },
}
GENERATED_LAUNCHERS = {
    "train_dkl_cifar10_generated.sh": {"1m": "cifar10_ikl_1m", "20m": "cifar10_ikl_20m"},
    "train_dkl_cifar100_generated.sh": {"1m": "cifar100_ikl_1m", "50m": "cifar100_ikl_50m"},
}


def assert_generated_run(resolved, run):
    expected = {**WANG_RECIPE, "name": run, **GENERATED_RUNS[run]}
    flat = flatten(resolved)
    wrong = {
        key: (flat[key], value)
        for key, value in expected.items()
        if not (flat[key] == pytest.approx(value) if isinstance(value, float) else flat[key] == value)
    }
    assert not wrong, f"{run}: (resolved, expected) differ for {wrong}"


@pytest.mark.parametrize("run", sorted(GENERATED_RUNS))
def test_each_generated_data_config_has_wang_et_als_recipe_and_its_rows_settings(run):
    import dataclasses

    from adv_training.config import ATConfig
    from engine.config import load_config

    cfg = load_config(ATConfig, ROOT / "configs" / "adv_training" / f"{run}.yaml")
    assert_generated_run(dataclasses.asdict(cfg), run)


@pytest.mark.slow
def test_the_generated_data_launchers_run_their_configs_and_refuse_other_sizes(tmp_path):
    shipped = {path.name for path in (ROOT / "sh").glob("train_*_generated.sh")}
    assert shipped == set(GENERATED_LAUNCHERS)
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    for launcher, runs in GENERATED_LAUNCHERS.items():
        for size, run in runs.items():
            result = subprocess.run(
                ["bash", str(ROOT / "sh" / launcher), size, "--print-config"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, result.stderr
            header, resolved = result.stdout.split("# ---- ")[1].split("\n", 1)
            assert Path(header).name == f"{run}.yaml"
            assert_generated_run(yaml.safe_load(resolved), run)
        wrong = subprocess.run(
            ["bash", str(ROOT / "sh" / launcher), "5m"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert wrong.returncode == 2 and wrong.stderr.startswith("usage: ") and "{1m|" in wrong.stderr


@pytest.fixture(scope="module")
def generated_cifar100(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated100")
    rng = np.random.default_rng(1)
    np.savez(
        folder / "50m_part1.npz",
        image=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8),
        label=rng.integers(0, 100, 120),
    )
    assert (
        prepare_main(
            [str(folder / "50m_part1.npz"), "--out", str(folder / "prepared"), "--dataset", "cifar100", "--quiet"]
        )
        == 0
    )
    return folder / "prepared"


@pytest.mark.slow
@pytest.mark.parametrize("run", ["cifar10_ikl_1m", "cifar10_ikl_20m", "cifar100_ikl_1m", "cifar100_ikl_50m"])
def test_the_papers_generated_data_rows_train_end_to_end_on_tiny_data(
    run, cifar10_root, cifar100_root, generated_root, generated_cifar100, tmp_path
):
    """Each row's config as shipped, on tiny data: a depth-10 width-1 WRN for WRN-28-10, batch 40,
    epochs of 5 batches, 30 held-out images, 2 epochs; everything else (the mixing, cosinew, the weight average, the
    frozen-BN attack, PGD-40 margin selection) as configured."""
    cifar100 = run.startswith("cifar100")
    overrides = [
        f"data.root={cifar100_root if cifar100 else cifar10_root}",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=40",
        "data.test_batch_size=50",
        "data.validation_size=30",
        f"generated.path={generated_cifar100 if cifar100 else generated_root}",
        "generated.epoch_images=200",
        "model.arch=WideResNet",
        "model.depth=10",
        "model.widen_factor=1",
        "epochs=2",
        "device=cpu",
        f"out_dir={tmp_path}",
    ]
    assert main(["--config", str(ROOT / "configs" / "adv_training" / f"{run}.yaml"), *overrides]) == 0
    records = RunFolder(tmp_path / run).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    # the last epoch's numbers: the model's and the weight average's (the selecting ones) clean and margin PGD-40
    # accuracy on the 30 held-out images
    root, dataset = (cifar100_root, "cifar100") if cifar100 else (cifar10_root, "cifar10")
    held_out = examples(data_lib.build_train_set(dataset, root, augment="none", verify_checksum=False), range(30))
    for owner, weights in (("", "last.pt"), ("ema_", "ema.pt")):
        model = wrn(tmp_path / run / weights, num_classes=100 if cifar100 else 10)
        expected = accuracy_by_hand(model, held_out, steps=40, objective="margin")
        assert (records[-1][f"{owner}val_clean_acc"], records[-1][f"{owner}val_robust_acc"]) == expected, owner
    assert records[0]["lr"] > records[1]["lr"]  # cosinew over 2 epochs: already falling
    results = json.loads((tmp_path / run / "results.json").read_text())
    assert results["best_metric"] == "ema_val_robust_acc" and results["best_epoch"] in (1, 2)
