"""LBGAT (Cui et al., ICCV 2021): its loss against a hand computation, its two networks trained,
saved and resumed, and its configs against jiequancui/LBGAT's recipe (commit f7f33f0:
train_lbgat_cifar100.py's argparse defaults and schedule, lbgat.py, sh/train_lbgat0_cifar100.sh)."""

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adv_training.config import ATConfig
from adv_training.methods import build_method, check_method
from adv_training.train import main
from engine.config import ConfigError, load_config
from engine.file_io import load_file
from engine.schedule import learning_rate
from models import build_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "adv_training"


def lbgat_by_hand(adv, nat, companion, targets, beta):
    """CE(g(x), y) + (1/(B C)) sum (f(x') - g(x))^2 + beta (1/B) sum_b KL(p_f(x) || p_f(x')), with loops."""
    batch, classes = adv.shape
    total = 0.0
    for b in range(batch):
        g = companion[b]
        log_norm = math.log(sum(math.exp(v) for v in g.tolist()))
        total += (log_norm - g[targets[b]].item()) / batch
        for c in range(classes):
            total += (adv[b, c].item() - g[c].item()) ** 2 / (batch * classes)
        p = [math.exp(v) for v in nat[b].tolist()]
        q = [math.exp(v) for v in adv[b].tolist()]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        total += beta * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / batch
    return total


def lbgat(beta=6.0):
    cfg = ATConfig()
    cfg.method, cfg.awp.enabled, cfg.lbgat.beta = "lbgat", False, beta
    cfg.data.dataset, cfg.lbgat.natural_arch = "digits", "digits_cnn_small"
    return build_method(cfg, 4)


@pytest.mark.parametrize("beta", [6.0, 0.0])
def test_the_loss_is_lbgats_formula_and_trains_both_networks(beta):
    torch.manual_seed(0)
    adv, nat, companion = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    targets = torch.tensor([0, 3, 1])
    step = lbgat(beta).loss(adv, nat, targets, None, 3, companion)
    loss = step.total
    expected = lbgat_by_hand(adv.detach(), nat.detach(), companion.detach(), targets, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert (step.natural + step.robust).item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # nothing is detached: the MSE moves the robust logits and the natural classifier's, the KL both branches
    eps = 1e-6
    for which, tensor in enumerate((adv, nat, companion)):
        for index in ((0, 0), (2, 3)):
            bumped = [t.detach().clone() for t in (adv, nat, companion)]
            bumped[which][index] += eps
            numeric = (lbgat_by_hand(*bumped, targets, beta) - expected) / eps
            assert tensor.grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7)
    assert (nat.grad.abs().sum() > 0) == (beta > 0)


def test_lbgat_refuses_awp_and_two_views():
    cfg = ATConfig()
    cfg.method = "lbgat"
    with pytest.raises(ConfigError, match="awp.enabled=false"):
        check_method(cfg)
    cfg.awp.enabled, cfg.data.augment = False, "autoaug"
    with pytest.raises(ConfigError, match="data.augment=basic"):
        check_method(cfg)
    cfg.data.augment, cfg.lbgat.natural_arch = "basic", "ResNet81_cifar"
    with pytest.raises(ConfigError, match="lbgat.natural_arch"):
        check_method(cfg)


def test_the_natural_classifier_is_lbgats_resnet18_cifar():
    model = build_model("ResNet18_cifar", 100, dataset="cifar100")
    strides = [layer[0].conv1.stride[0] for layer in (model.layer1, model.layer2, model.layer3, model.layer4)]
    assert strides == [1, 1, 2, 2]  # its layer2 keeps 32x32 (models/resnetcifar.py)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert sum(p.numel() for p in model.parameters()) == 11_220_132  # ResNet-18's, with 100 classes


def digits_lbgat(out_dir, name, *extra):
    return [
        "--config",
        str(CONFIGS / "digits_ikl.yaml"),
        "method=lbgat",
        "lbgat.natural_arch=digits_cnn_small",
        "lbgat.beta=6",
        "epochs=2",
        "eval.pgd_steps=2",
        "eval.num_examples=100",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        *extra,
    ]


@pytest.mark.slow
def test_two_digits_epochs_stopped_and_resumed_equal_an_uninterrupted_run(tmp_path, capsys):
    assert main(digits_lbgat(tmp_path, "straight")) == 0
    assert main(digits_lbgat(tmp_path, "split", "stop_after=1")) == 0
    first = load_file(tmp_path / "split" / "last.pt")
    natural = {f"natural_classifier.{k}" for k in build_model("digits_cnn_small", 10).state_dict()}
    assert first["epoch"] == 1 and set(first["method"]) == natural
    # the same file as the trainer wrote it before the method owned its network: the natural classifier
    # as "companion" (a plain state dict), the task as its config class, the best record by "robust_acc",
    # the epoch average as "swa"
    shutil.copytree(tmp_path / "split", tmp_path / "older")
    older = {key: value for key, value in first.items() if key not in ("method", "epoch_average")}
    older.update(task="ATConfig", best={"robust_acc": first["best"]["value"], "epoch": 1}, swa=first["epoch_average"])
    older["config"] = {("swa" if key == "epoch_average" else key): value for key, value in first["config"].items()}
    older["companion"] = {k[len("natural_classifier.") :]: v for k, v in first["method"].items()}
    torch.save(older, tmp_path / "older" / "last.pt")
    assert main(digits_lbgat(tmp_path, "split", "resume=true")) == 0
    capsys.readouterr()
    assert main(digits_lbgat(tmp_path, "older", "resume=true")) == 0
    assert "swa" not in capsys.readouterr().out  # the renamed section is not a changed setting
    straight = load_file(tmp_path / "straight" / "last.pt")
    for resumed in (load_file(tmp_path / "split" / "last.pt"), load_file(tmp_path / "older" / "last.pt")):
        for key in ("model", "method"):
            assert straight[key].keys() == resumed[key].keys()
            assert all(torch.equal(straight[key][k], resumed[key][k]) for k in straight[key]), key
        assert resumed["best"] == straight["best"] and resumed["task"] == "adv_training"
    split = load_file(tmp_path / "split" / "last.pt")
    assert len(straight["optimizer"]["param_groups"]) == 2  # the robust model's parameters, then the method's
    for slot, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], split["optimizer"]["state"][slot]["momentum_buffer"])
    # the natural classifier learnt (its clean CE is the natural term) and only the robust model is exported
    epochs = [yaml.safe_load(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[1]["train_loss_natural"] < epochs[0]["train_loss_natural"]
    best = load_file(tmp_path / "straight" / "best.pt")
    assert set(best["model"]) == set(build_model("digits_cnn", 10).state_dict())
    # resuming with another natural classifier is one clear message, not a traceback
    assert main(digits_lbgat(tmp_path, "split", "resume=true", "lbgat.natural_arch=digits_cnn")) == 2
    assert "state does not fit this run" in capsys.readouterr().err


# jiequancui/LBGAT train_lbgat_cifar100.py (f7f33f0): --batch-size 128, --epochs 100, --weight-decay 2e-4,
# --lr 0.1, --momentum 0.9, --epsilon 0.031, --num-steps 10, --step-size 0.007, --beta 6, --seed 1;
# lbgat.py: x + 0.001 * randn start, KL attack in eval mode, no AWP; the natural model ResNet18_cifar
# (sh/train_lbgat0_cifar100.sh); its schedule: 0.02 at epoch 1, x0.1 from 76, x0.01 from 91.
LBGAT_RECIPE = {
    "method": "lbgat",
    "epochs": 100,
    "seed": 1,
    "batchnorm_groups": 1,  # sh/train_lbgat0_cifar100.sh: #SBATCH --gres=gpu:1
    "model.preprocess": "01",
    "data.batch_size": 128,
    "data.drop_last": False,
    "data.augment": "basic",
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.weight_decay": 2e-4,
    "optim.batchnorm_weight_decay": True,
    "optim.nesterov": False,
    "optim.schedule": "step",
    "optim.milestones": [75, 90],
    "optim.decay": 0.1,
    "optim.warmup_epochs": 0,
    "optim.first_epoch_lr": 0.02,
    "attack.norm": "linf",
    "attack.epsilon": 0.031,
    "attack.eps_ramp": False,
    "attack.budget": "fixed",
    "attack.steps": 10,
    "attack.step_size": 0.007,
    "attack.random_start": "normal",
    "attack.eval_mode": True,
    "lbgat.natural_arch": "ResNet18_cifar",
    "awp.enabled": False,
    "ema.enabled": False,
    "epoch_average.enabled": False,
}
ROWS = {
    "cifar100_lbgat.yaml": {"data.dataset": "cifar100", "model.arch": "WideResNet34_10", "lbgat.beta": 6.0},
    "cifar10_lbgat.yaml": {"data.dataset": "cifar10", "model.arch": "WideResNet34_20", "lbgat.beta": 0.0},
}
LAUNCHERS = {"train_lbgat_cifar100.sh": "cifar100_lbgat.yaml", "train_lbgat_cifar10.sh": "cifar10_lbgat.yaml"}


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def assert_recipe(resolved, config):
    expected = {**LBGAT_RECIPE, **ROWS[config]}
    wrong = {k: (resolved[k], v) for k, v in expected.items() if resolved[k] != pytest.approx(v)}
    assert not wrong, f"{config}: (resolved, expected) {wrong}"


@pytest.mark.parametrize("config", sorted(ROWS))
def test_each_config_is_lbgats_recipe(config):
    cfg = load_config(ATConfig, CONFIGS / config)
    assert_recipe(flat(dataclasses.asdict(cfg)), config)
    assert cfg.paper_row == config.removesuffix(".yaml")
    lrs = [
        learning_rate(e, base_lr=0.1, epochs=100, schedule="step", milestones=[75, 90], first_epoch_lr=0.02)
        for e in (1, 2, 75, 76, 90, 91, 100)
    ]
    assert lrs == pytest.approx([0.02, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_the_lbgat_launchers_are_the_listed_ones():
    assert {path.name for path in (ROOT / "sh").glob("train_lbgat_*.sh")} == set(LAUNCHERS)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launchers_print_lbgats_recipe(launcher, tmp_path):
    env = dict(os.environ, DKL_PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / launcher), "--print-config"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("\n", 1)[1]
    assert_recipe(flat(yaml.safe_load(body)), LAUNCHERS[launcher])
