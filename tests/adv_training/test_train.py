"""The adversarial-training entry point, end to end on a small CIFAR-format dataset (CPU)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import adv_training.methods as methods_module
import adv_training.train as train_module
from adv_training.attacks import attack_budget, pgd
from adv_training.config import ATConfig, AttackConfig
from adv_training.methods import Method, cross_entropy_objective, margin_objective
from adv_training.swa import average_checkpoints
from adv_training.train import _to_device, epoch_precision, main
from engine.config import load_config
from engine.data import build_test_set
from engine.file_io import load_file
from losses import ClassPrior
from models import build_model, load_weights

ROOT = Path(__file__).resolve().parents[2]


def wrn(weights, channels_last=False, num_classes=10):
    """The tiny runs' depth-10, width-1 WRN with ``weights`` (a state dict or a weights file), in eval mode."""
    model = build_model("WideResNet", num_classes, depth=10, widen_factor=1)
    model = load_weights(model, weights).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def examples(dataset, indices):
    """(images, labels, indices) of ``dataset``'s images at ``indices``."""
    images = torch.stack([dataset[i][0] for i in indices])
    return images, torch.tensor([dataset[i][1] for i in indices]), torch.tensor(list(indices))


def first_test_images(data_root, count=50, dataset="cifar10"):
    """The images the monitor of a tiny run evaluates: the first ``count`` of the test set (eval.num_examples)."""
    test_set = build_test_set(dataset, data_root, verify_checksum=False)
    return examples(test_set, range(count))


def accuracy_by_hand(
    model, data, *, eps=8 / 255, step_size=2 / 255, steps=2, objective="ce", batch=50, channels_last=False
):
    """Clean and PGD accuracy (%) of ``model`` on ``data`` (`examples`), computed here batch by batch as the
    monitor's contract says: PGD-``steps`` from the uniform start keyed by each image's index (seed 0),
    eval.step_size 2/255, counting the images whose prediction is their label."""
    images, labels, indices = data
    objective = {"ce": cross_entropy_objective, "margin": margin_objective}[objective]
    clean = robust = 0
    for start in range(0, len(labels), batch):
        x, y, keys = images[start : start + batch], labels[start : start + batch], indices[start : start + batch]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            clean += (model(x).argmax(1) == y).sum().item()
        x_adv = pgd(
            model, x, objective(y), eps=eps, step_size=step_size, steps=steps, random_start="uniform", start_keys=keys
        )
        with torch.no_grad():
            robust += (model(x_adv).argmax(1) == y).sum().item()
    return 100 * clean / len(labels), 100 * robust / len(labels)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ikl", "trades", "pgd", "mart"])
def test_two_epochs_with_awp_and_ema_write_a_complete_run_folder(method, cifar10_root, tmp_path, tiny_at_run):
    assert main(tiny_at_run(cifar10_root, tmp_path, f"method={method}")) == 0
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "environment.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "ema.pt",
        "results.json",
        "ours-model-epoch1.pt",
        "ours-model-epoch2.pt",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    test_images = first_test_images(cifar10_root)
    for record in metrics:
        for key in ("train_loss", "train_adv_acc", "lr"):
            assert math.isfinite(record[key]), (key, record)
        assert record["awp"] is True  # AWP from epoch 1
        # the monitor's numbers are the clean and PGD-2 accuracy of that epoch's weights on the first 50 test images
        model = wrn(run / f"ours-model-epoch{record['epoch']}.pt")
        assert (record["test_clean_acc"], record["test_robust_acc"]) == accuracy_by_hand(model, test_images)
    assert (metrics[-1]["ema_test_clean_acc"], metrics[-1]["ema_test_robust_acc"]) == accuracy_by_hand(
        wrn(run / "ema.pt"), test_images
    )
    assert metrics[0]["eps"] == pytest.approx(8 / 255 / 2) and metrics[1]["eps"] == pytest.approx(8 / 255)

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == method and saved["model"]["depth"] == 10
    environment = json.loads((run / "environment.json").read_text())
    assert environment["seed"] == 0 and environment["torch"] == torch.__version__

    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] in (1, 2)
    # The epoch average kept during training is bit-equal to swa.py over the saved epoch files.
    assert results["swa_file"] == "ours-model-epoch-SWA0.912.pt"
    online = load_file(run / results["swa_file"])["model"]
    (run / results["swa_file"]).rename(run / "online.pt")
    post_hoc = load_file(average_checkpoints(run, 0.9, 1, 2, log=lambda line: None))["model"]
    assert online.keys() == post_hoc.keys() and all(torch.equal(online[k], post_hoc[k]) for k in online)
    epoch1, epoch2 = (load_file(run / f"ours-model-epoch{epoch}.pt")["model"] for epoch in (1, 2))
    weight = next(k for k in online if k.endswith("conv1.weight"))
    assert torch.allclose(online[weight], 0.1 * epoch2[weight] + 0.9 * epoch1[weight])
    swa_numbers = (results["final"]["swa_test_clean_acc"], results["final"]["swa_test_robust_acc"])
    assert swa_numbers == accuracy_by_hand(wrn(dict(online)), test_images)
    assert swa_numbers == (metrics[-1]["swa_test_clean_acc"], metrics[-1]["swa_test_robust_acc"])
    # best.pt, the EMA and the epoch average load into a fresh model with the zoo's strict loader
    fresh = build_model("WideResNet", 10, depth=10, widen_factor=1)
    load_weights(fresh, run / "best.pt")
    load_weights(fresh, run / "ema.pt")
    load_weights(fresh, run / "online.pt")


def _final_state(run_dir):
    state = load_file(Path(run_dir) / "last.pt")
    return (
        state["model"],
        state["ema"]["module"],
        state["epoch_average"]["average"],
        state["prior"]["prior"],
        state["optimizer"]["state"],
    )


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(cifar10_root, tmp_path, monkeypatch, tiny_at_run):
    assert main(tiny_at_run(cifar10_root, tmp_path, name="straight")) == 0

    # Crash in the middle of epoch 2 (on the 3rd attack of that epoch), after epoch 1's last.pt.
    real_pgd, calls = methods_module.pgd, {"epoch2": 0}

    def crashing_pgd(*args, **kwargs):
        if kwargs["eps"] == pytest.approx(8 / 255):  # epoch 2 of 2 with the linear ramp
            calls["epoch2"] += 1
            if calls["epoch2"] == 3:
                raise RuntimeError("simulated crash")
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(methods_module, "pgd", crashing_pgd)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(tiny_at_run(cifar10_root, tmp_path, name="interrupted"))
    assert load_file(tmp_path / "interrupted" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(methods_module, "pgd", real_pgd)

    assert main(tiny_at_run(cifar10_root, tmp_path, "resume=true", name="interrupted")) == 0
    straight, resumed = _final_state(tmp_path / "straight"), _final_state(tmp_path / "interrupted")
    for a, b in zip(straight[:3], resumed[:3]):  # model, EMA and epoch-average state dicts
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert torch.equal(straight[3], resumed[3])  # class prior
    for slot in straight[4]:  # SGD momentum buffers
        assert torch.equal(straight[4][slot]["momentum_buffer"], resumed[4][slot]["momentum_buffer"])
    straight_average = load_file(tmp_path / "straight" / "ours-model-epoch-SWA0.912.pt")["model"]
    resumed_average = load_file(tmp_path / "interrupted" / "ours-model-epoch-SWA0.912.pt")["model"]
    assert all(torch.equal(straight_average[k], resumed_average[k]) for k in straight_average)
    assert [m["epoch"] for m in read_jsonl(tmp_path / "interrupted" / "metrics.jsonl")] == [1, 2]
    assert read_jsonl(tmp_path / "interrupted" / "metrics.jsonl")[1]["train_loss"] == pytest.approx(
        read_jsonl(tmp_path / "straight" / "metrics.jsonl")[1]["train_loss"], rel=0, abs=0
    )


def test_a_fresh_start_never_overwrites_an_existing_run(cifar10_root, tmp_path, capsys, tiny_at_run):
    assert main(tiny_at_run(cifar10_root, tmp_path, "epochs=1")) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(tiny_at_run(cifar10_root, tmp_path, "epochs=1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    cifar10_root, tmp_path, monkeypatch, capsys, tiny_at_run
):
    real_loss = Method.loss

    def poisoned(self, *args, **kwargs):
        step = real_loss(self, *args, **kwargs)
        if torch.is_grad_enabled() and poisoned.epoch == 2:
            step.total = step.total * float("nan")
        return step

    real_epoch = train_module.train_one_epoch

    def tracking_epoch(cfg, training, forwards, epoch, *args, **kwargs):
        poisoned.epoch = epoch
        return real_epoch(cfg, training, forwards, epoch, *args, **kwargs)

    poisoned.epoch = 0
    monkeypatch.setattr(Method, "loss", poisoned)
    monkeypatch.setattr(train_module, "train_one_epoch", tracking_epoch)
    assert main(tiny_at_run(cifar10_root, tmp_path)) == 2
    error = capsys.readouterr().err
    assert "the training loss became nan in epoch 2" in error and "last.pt still holds epoch 1" in error
    assert "Traceback" not in error
    assert load_file(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_attack_budget_by_hand():
    attack = AttackConfig()  # high: 5 steps of eps_t / 2 at every epoch, eps_t ramped linearly
    for epoch in (1, 37, 120, 200):
        eps_t = 8 / 255 * epoch / 200
        assert attack_budget(attack, epoch, 200) == pytest.approx((eps_t, eps_t / 2, 5))
    low = AttackConfig(budget="low")
    assert attack_budget(low, 50, 200) == pytest.approx((2 / 255, 2 / 255, 2))
    piecewise = AttackConfig(budget="high_piecewise")
    budgets = [attack_budget(piecewise, e, 200) for e in (50, 51, 100, 101, 150, 151, 200)]
    assert [steps for _, _, steps in budgets] == [2, 3, 3, 4, 4, 5, 5]
    assert budgets[1][1] == pytest.approx(2 * (8 / 255 * 51 / 200) / 3)
    assert attack_budget(piecewise, 25, 100)[2] == 2 and attack_budget(piecewise, 26, 100)[2] == 3  # scaled
    no_ramp = AttackConfig(eps_ramp=False)
    assert attack_budget(no_ramp, 1, 200) == pytest.approx((8 / 255, 4 / 255, 5))
    fixed = AttackConfig(budget="fixed", eps_ramp=False, steps=10, step_size=2 / 255)
    assert attack_budget(fixed, 3, 200) == pytest.approx((8 / 255, 2 / 255, 10))


def test_the_training_loop_attacks_with_the_budget_of_each_epoch(cifar10_root, tmp_path, monkeypatch, tiny_at_run):
    seen = []
    real_pgd = methods_module.pgd

    def recording_pgd(*args, **kwargs):
        seen.append((kwargs["eps"], kwargs["step_size"], kwargs["steps"]))
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(methods_module, "pgd", recording_pgd)
    assert main(tiny_at_run(cifar10_root, tmp_path, "eval.every=5", "awp.enabled=false", "save_every=0")) == 0
    assert set(seen) == {(8 / 255 / 2, 8 / 255 / 4, 5), (8 / 255, 8 / 255 / 2, 5)}


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["autoaug", "cutout"])
def test_dual_view_modes_train_and_update_the_prior_from_the_basic_view(
    augment, cifar10_root, tmp_path, monkeypatch, tiny_at_run
):
    updates = []
    real_update = ClassPrior.update

    def recording_update(self, logits, targets):
        updates.append(len(targets))
        return real_update(self, logits, targets)

    monkeypatch.setattr(ClassPrior, "update", recording_update)
    args = tiny_at_run(
        cifar10_root, tmp_path, "epochs=1", f"data.augment={augment}", "data.aug_weight=0.5", "awp.enabled=false"
    )
    assert main(args) == 0
    assert sum(updates) == 200  # every training image once, not once per view
    record = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(record["train_loss"])


@pytest.mark.slow
def test_awp_proxy_takes_the_joint_dual_view_loss_and_the_step_the_weighted_one(
    cifar10_root, tmp_path, monkeypatch, tiny_at_run
):
    calls = []
    real_loss, real_proxy_loss = train_module.BatchLoss.__call__, train_module.BatchLoss.awp_proxy

    def recording_loss(self, network):
        calls.append(("Method.loss", network is awp_proxies[0]))
        return real_loss(self, network)

    def recording_proxy_loss(self, network):
        calls.append(("Method.proxy_loss", network is awp_proxies[0]))
        return real_proxy_loss(self, network)

    awp_proxies = []
    real_init = train_module.AdversarialWeightPerturbation.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        awp_proxies.append(self.proxy)

    monkeypatch.setattr(train_module.BatchLoss, "__call__", recording_loss)
    monkeypatch.setattr(train_module.BatchLoss, "awp_proxy", recording_proxy_loss)
    monkeypatch.setattr(train_module.AdversarialWeightPerturbation, "__init__", recording_init)
    assert main(tiny_at_run(cifar10_root, tmp_path, "epochs=1", "data.augment=autoaug", "data.aug_weight=0.3")) == 0
    # the proxy: the joint-view proxy loss (its value: tests/adv_training/test_methods.py); the model: the split one
    assert calls and set(calls) == {("Method.proxy_loss", True), ("Method.loss", False)}
    assert calls.count(("Method.proxy_loss", True)) == calls.count(("Method.loss", False)) == 5  # 200 images, batch 40


def test_config_typo_exits_non_zero_naming_the_closest_key():
    result = subprocess.run(
        [sys.executable, "-m", "adv_training.train", "attack.epsilom=8/255"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown config key 'attack.epsilom'" in result.stderr and "did you mean 'attack.epsilon'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_names_the_folder_and_leaves_no_run_folder(tmp_path, capsys, tiny_at_run):
    empty = tmp_path / "no_data"
    assert main(tiny_at_run(empty, tmp_path / "runs")) == 2
    error = capsys.readouterr().err
    assert str(empty / "cifar-10-batches-py") in error and "cifar-10-python.tar.gz" in error
    assert "Traceback" not in error
    assert not (tmp_path / "runs").exists()


# Every hyperparameter of the authors' runs, from their launchers and their trainers' argparse
# defaults (jiequancui/DKL: DKLv1/ and DKLv2/Adv-training-dkl/). A run lists what differs from
# DKLV1_RECIPE; the test compares every key of the merged dict with the resolved config.
DKLV1_RECIPE = {
    "method": "ikl",
    "epochs": 200,
    "seed": 0,
    "batchnorm_groups": 4,  # their #SBATCH --gres=gpu:4 and nn.DataParallel
    "model.arch": "WideResNet34_10",
    "model.depth": None,
    "model.widen_factor": None,
    "data.batch_size": 128,
    "data.drop_last": False,
    "data.augment": "basic",
    "data.aug_weight": 1.0,
    "optim.lr": 0.2,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.nesterov": False,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0,
    "attack.norm": "linf",
    "attack.epsilon": 8 / 255,
    "attack.eps_ramp": True,
    "attack.budget": "high",
    "attack.random_start": "normal",
    "attack.eval_mode": True,
    "attack.alpha": 1.0,
    "attack.beta": 1.0,
    "ikl.alpha": 4.0,
    "ikl.beta": 20.0,
    "ikl.gamma": 1.0,
    "ikl.temperature": 1.0,
    "ikl.prior_temperature": 4.0,
    "awp.enabled": True,
    "awp.gamma": 0.005,
    "awp.warmup": 10,
    "ema.enabled": True,
    "ema.tau": 0.9996,
    "ema.start_epoch": 150,
    "epoch_average.enabled": True,
    "epoch_average.tau": 0.9,
    "epoch_average.start": 1,
    "epoch_average.end": None,
}
CIFAR100 = {"data.dataset": "cifar100"}
CIFAR10 = {"data.dataset": "cifar10", "attack.beta": 0.0}  # the CIFAR-10 scripts attack with the CE term only
RUNS = {
    "cifar100_ikl_a4b20t4": {**CIFAR100},
    "cifar100_ikl_a5b20t4": {**CIFAR100, "ikl.alpha": 5.0},
    "cifar100_ikl_autoaug_a4b20t4_augw03": {**CIFAR100, "data.augment": "autoaug", "data.aug_weight": 0.3},
    "cifar10_ikl_a4b20t4": {**CIFAR10},
    "cifar100_trades": {
        **CIFAR100,
        "method": "trades",
        "trades.beta": 9.0,
        "optim.schedule": "cosine_trades",
        "data.drop_last": True,
    },
    "cifar100_gkl_a4b20t4": {**CIFAR100},
    "cifar100_gkl_a4b20g04": {**CIFAR100, "ikl.prior_temperature": 1.0, "ikl.gamma": 0.4},
    "cifar10_gkl_a4b20t4": {**CIFAR10},
    "cifar10_gkl_a4b20g02": {**CIFAR10, "ikl.prior_temperature": 1.0, "ikl.gamma": 0.2},
    "cifar100_gkl_autoaug_a4b20g1t4_augw05": {**CIFAR100, "data.augment": "autoaug", "data.aug_weight": 0.5},
    "cifar10_gkl_autoaug_a4b20g1t4_augw05": {**CIFAR10, "data.augment": "autoaug", "data.aug_weight": 0.5},
    # the released models' own log names (configs without launchers)
    "cifar100_ikl_a3b20t4": {**CIFAR100, "ikl.alpha": 3.0},
    "cifar100_ikl_a4b20t2": {**CIFAR100, "ikl.prior_temperature": 2.0},
    "cifar10_ikl_a3b20t4": {**CIFAR10, "ikl.alpha": 3.0},
}
LAUNCHERS = {  # launcher -> (config file, run name) of each run, in order
    "train_dkl_cifar100.sh": [
        ("cifar100_ikl_a4b20t4.yaml", "cifar100_ikl_a4b20t4"),
        ("cifar100_ikl_a5b20t4.yaml", "cifar100_ikl_a5b20t4"),
    ],
    "train_dkl_cifar100_autoaug.sh": [("cifar100_ikl_autoaug_a4b20t4.yaml", "cifar100_ikl_autoaug_a4b20t4_augw03")],
    "train_dkl_cifar10.sh": [("cifar10_ikl_a4b20t4.yaml", "cifar10_ikl_a4b20t4")],
    "train_trades_cifar100.sh": [("cifar100_trades_awp.yaml", "cifar100_trades")],
    "train_gkl_cifar100.sh": [
        ("cifar100_gkl_a4b20t4.yaml", "cifar100_gkl_a4b20t4"),
        ("cifar100_gkl_t1g04.yaml", "cifar100_gkl_a4b20g04"),
    ],
    "train_gkl_cifar10.sh": [
        ("cifar10_gkl_a4b20t4.yaml", "cifar10_gkl_a4b20t4"),
        ("cifar10_gkl_t1g02.yaml", "cifar10_gkl_a4b20g02"),
    ],
    "train_gkl_cifar100_autoaug.sh": [("cifar100_gkl_autoaug_augw05.yaml", "cifar100_gkl_autoaug_a4b20g1t4_augw05")],
    "train_gkl_cifar10_autoaug.sh": [("cifar10_gkl_autoaug_augw05.yaml", "cifar10_gkl_autoaug_a4b20g1t4_augw05")],
}
RELEASED_LOG_CONFIGS = [
    ("cifar100_ikl_a3b20t4.yaml", "cifar100_ikl_a3b20t4"),
    ("cifar100_ikl_a4b20t2.yaml", "cifar100_ikl_a4b20t2"),
    ("cifar10_ikl_a3b20t4.yaml", "cifar10_ikl_a3b20t4"),
]


def flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def assert_run_hyperparameters(resolved: dict, run: str) -> None:
    expected = {**DKLV1_RECIPE, "name": run, **RUNS[run]}
    flat = flatten(resolved)
    wrong = {
        key: (flat[key], value)
        for key, value in expected.items()
        if not (flat[key] == pytest.approx(value) if isinstance(value, float) else flat[key] == value)
    }
    assert not wrong, f"{run}: (resolved, expected) differ for {wrong}"


def test_every_launcher_run_and_released_log_has_its_expected_hyperparameters():
    listed = [run for runs in LAUNCHERS.values() for _, run in runs] + [run for _, run in RELEASED_LOG_CONFIGS]
    assert sorted(listed) == sorted(RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launchers_resolve_to_the_authors_hyperparameters(launcher, tmp_path):
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / launcher), "--print-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    parts = result.stdout.split("# ---- ")[1:]
    assert [Path(part.split("\n", 1)[0]).name for part in parts] == [config for config, _ in LAUNCHERS[launcher]]
    for part, (_, run) in zip(parts, LAUNCHERS[launcher]):
        assert_run_hyperparameters(yaml.safe_load(part.split("\n", 1)[1]), run)


@pytest.mark.parametrize("config, run", RELEASED_LOG_CONFIGS)
def test_released_model_configs_resolve_to_their_log_names(config, run):
    cfg = load_config(ATConfig, ROOT / "configs" / "adv_training" / config)
    assert_run_hyperparameters(dataclasses.asdict(cfg), run)


def test_launchers_are_exactly_the_listed_ones():
    # the generated-data launchers are checked in test_train_generated.py, the AWP ones in test_awp_recipes.py,
    # the LBGAT ones in test_lbgat.py, the ACAT and DAJAT ones in test_dajat_recipes.py, LAS-AT's in test_las_at.py
    elsewhere = ("_awp_", "_lbgat_", "_acat_", "_dajat_", "_las_at_")
    shipped = {
        path.name
        for path in (ROOT / "sh").glob("train_*.sh")
        if not path.name.endswith("_generated.sh") and not any(part in path.name for part in elsewhere)
    }
    assert shipped == set(LAUNCHERS)


def test_cosine_schedules_match_the_reference_formulas():
    from engine.schedule import learning_rate

    def lr(epoch, schedule):
        return learning_rate(epoch, base_lr=0.2, epochs=200, schedule=schedule)

    # the DKL scripts: 0.2 * (1 + cos(pi * e / 201)) / 2, evaluated by hand at a few epochs
    assert lr(1, "cosine") == pytest.approx(0.1999878, abs=1e-7)
    assert lr(100, "cosine") == pytest.approx(0.1007815, abs=1e-7)
    assert lr(200, "cosine") == pytest.approx(1.2212e-5, rel=1e-3)
    # the TRADES script: 0.2 * (1 + cos(pi * (e - 1) / 200)) / 2: the full rate at epoch 1
    assert lr(1, "cosine_trades") == 0.2
    assert lr(101, "cosine_trades") == pytest.approx(0.1)
    assert lr(200, "cosine_trades") == pytest.approx(1.2336e-5, rel=1e-3)


def test_every_shipped_config_resolves():
    configs = sorted((ROOT / "configs" / "adv_training").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        load_config(ATConfig, path)


@pytest.mark.slow
def test_one_digits_epoch_through_the_entry_point_draws_its_curves(tmp_path):
    config = ROOT / "configs" / "adv_training" / "digits_ikl.yaml"
    assert main(["--config", str(config), "epochs=1", f"out_dir={tmp_path}", "device=cpu"]) == 0
    run = tmp_path / "digits_ikl"
    (record,) = read_jsonl(run / "metrics.jsonl")
    assert record["eps"] == pytest.approx(0.2) and record["attack_steps"] == 5  # no ramp on digits
    # the monitor: clean and PGD-20 (eps 0.2, step 0.025) accuracy of the epoch's weights on the 450 test images
    model = load_weights(build_model("digits_cnn", 10, dataset="digits"), run / "last.pt").eval()
    test_images = first_test_images(None, 450, dataset="digits")
    expected = accuracy_by_hand(model, test_images, eps=0.2, step_size=0.025, steps=20, batch=450)
    assert (record["test_clean_acc"], record["test_robust_acc"]) == expected
    picture = (run / "curves.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 5_000


def test_standard_training_never_attacks(cifar10_root, tmp_path, monkeypatch, tiny_at_run):
    def no_attack(*args, **kwargs):
        raise AssertionError("standard training must not attack")

    monkeypatch.setattr(methods_module, "pgd", no_attack)
    assert main(tiny_at_run(cifar10_root, tmp_path, "method=standard", "epochs=1", "awp.enabled=false")) == 0
    (record,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert record["attack_steps"] == 0 and record["train_loss_natural"] == 0.0


def test_a_bf16_run_trains_in_tf32_while_the_budget_is_below_bf16_min_eps():
    budgets = [attack_budget(AttackConfig(), epoch, 200)[0] for epoch in range(1, 201)]
    precisions = [epoch_precision("bf16", eps, 1 / 255, has_attack=True) for eps in budgets]
    assert precisions == ["tf32"] * 24 + ["bf16"] * 176  # eps_t = 1/255 exactly at epoch 25
    assert {epoch_precision("bf16", eps, 0.0, has_attack=True) for eps in budgets} == {"bf16"}
    assert epoch_precision("bf16", 0.0, 1 / 255, has_attack=False) == "bf16"  # no attack: nothing to hide
    assert {epoch_precision(p, 0.0, 1 / 255, has_attack=True) for p in ("fp32", "tf32")} == {"fp32", "tf32"}


def test_dual_view_images_are_copied_one_view_at_a_time_and_joined_on_the_device():
    """Joined on the host, the two views would be a new tensor in pageable memory, whose copy blocks."""
    basic, augmented, labels = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2])
    joins = []

    class Joins(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.cat.default:
                joins.append({tensor.device.type for tensor in args[0]})
            return func(*args, **(kwargs or {}))

    with Joins():
        images, targets, basic_size = _to_device(([basic, augmented], labels), torch.device("meta"), False)
    assert images.device.type == "meta" and images.shape == (6, 3, 4, 4) and basic_size == 3
    assert targets.shape == (6,) and joins and all(devices == {"meta"} for devices in joins)
    images, targets, _ = _to_device(([basic, augmented], labels), torch.device("cpu"), True)
    assert torch.equal(images, torch.cat([basic, augmented])) and targets.tolist() == [0, 1, 2, 0, 1, 2]
    assert images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_run_and_evaluate_in_fp32(cifar10_root, tmp_path, monkeypatch, tiny_at_run):
    # On the CPU this exercises the same autocast and memory-format code as on a GPU.
    dtypes = []
    real_loss = Method.loss

    def recording_loss(self, *args, **kwargs):
        step = real_loss(self, *args, **kwargs)
        dtypes.append((step.logits_adv.dtype, torch.is_autocast_enabled("cpu")))
        return step

    monkeypatch.setattr(Method, "loss", recording_loss)
    args = tiny_at_run(cifar10_root, tmp_path, "epochs=1", "precision=bf16", "channels_last=true", "awp.enabled=false")
    assert main(args) == 0  # eps_t = 8/255 in the one epoch: bf16
    assert set(dtypes) == {(torch.float32, True)}  # autocast on, and the float32 head gives float32 logits
    (record,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert math.isfinite(record["train_loss"]) and record["precision"] == "bf16"
    # evaluated in float32 (channels_last, as trained), not under autocast: a bf16 monitor would differ
    model = wrn(tmp_path / "run" / "last.pt", channels_last=True)
    expected = accuracy_by_hand(model, first_test_images(cifar10_root), channels_last=True)
    assert (record["test_clean_acc"], record["test_robust_acc"]) == expected
    dtypes.clear()
    assert (
        main(tiny_at_run(cifar10_root, tmp_path, "epochs=1", "precision=bf16", "attack.epsilon=0.5/255", name="small"))
        == 0
    )
    assert set(dtypes) == {(torch.float32, False)}  # eps_t = 0.5/255 < bf16_min_eps: no autocast
    assert read_jsonl(tmp_path / "small" / "metrics.jsonl")[0]["precision"] == "tf32"


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, "python -m adv_training.train --config {config} data.root=/d"),
        (
            {"NPROC": "4"},
            "python -m torch.distributed.run --nproc_per_node=4 --standalone -m adv_training.train "
            "--config {config} data.root=/d",
        ),
        (
            {"NPROC": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER": "node0:29500"},
            "python -m torch.distributed.run --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=node0 "
            "--master_port=29500 -m adv_training.train --config {config} data.root=/d",
        ),
    ],
)
def test_launchers_pass_the_process_counts_to_torchrun(environment, expected, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "python $*"\n')
    fake_python.chmod(0o755)
    env = {**os.environ, "DKL_PYTHON": str(fake_python), **environment}
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "train_dkl_cifar10.sh"), "data.root=/d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = ROOT / "configs" / "adv_training" / "cifar10_ikl_a4b20t4.yaml"
    assert result.stdout.strip() == expected.format(config=config)


def test_several_nodes_need_their_rank_and_the_master_address(tmp_path):
    env = {**os.environ, "DKL_PYTHON": sys.executable, "NNODES": "2", "NPROC": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "train_dkl_cifar10.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "needs NODE_RANK" in result.stderr and "MASTER=host:port" in result.stderr
