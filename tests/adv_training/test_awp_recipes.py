"""The AT-AWP and TRADES-AWP baselines as csdongxian/AWP (commit a7acf5d) runs them: every
hyperparameter of each recipe, with the file it comes from, against the resolved config and its
launcher's --print-config; one epoch of each config on tiny data; the knobs they added (model.preprocess,
data.padding_mode, data.rotate_degrees) refused where they cannot act."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import adv_training.train as train_module
from adv_training.auto_attacks.target import run_target
from adv_training.config import ATConfig
from adv_training.export import export
from adv_training.loaders import uses_device_loader
from adv_training.train import main
from engine.config import ConfigError, load_config
from engine.file_io import load_file
from models import attach_preprocessing, attached_preprocessing, build_model

from .test_train import flatten, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "adv_training"

AT_C10 = "AT_AWP/train_cifar10.py"
AT_C100 = "AT_AWP/train_cifar100.py"
TRADES = "trades_AWP/train_trades_cifar.py"
README = "auto_attacks/README.md"

# key: (value, where csdongxian/AWP sets it). Epochs are 1-based here: the AT scripts count from 0.
AT_AWP_CIFAR10 = {
    "name": ("cifar10_at_awp", "-"),
    "paper_row": ("cifar10_at_awp", README),
    "method": ("pgd", f"{AT_C10}: --attack pgd, CE of model(normalize(X + delta))"),
    "epochs": (200, f"{AT_C10}: --epochs"),
    "seed": (0, f"{AT_C10}: --seed"),
    "label_smoothing": (0.0, f"{AT_C10}: nn.CrossEntropyLoss()"),
    "model.arch": ("WideResNet34_10", f"{AT_C10}: --model WideResNet, WideResNet(34, 10, widen_factor=10)"),
    "model.depth": (None, f"{AT_C10}: 34"),
    "model.widen_factor": (None, f"{AT_C10}: --width-factor 10"),
    "model.preprocess": ("meanstd", f"{AT_C10}: normalize(X) with utils.py's cifar10_mean/std; {README}"),
    "data.dataset": ("cifar10", AT_C10),
    "data.batch_size": (128, f"{AT_C10}: --batch-size"),
    "data.drop_last": (False, f"{AT_C10}: Batches(drop_last=False)"),
    "data.augment": ("basic", f"{AT_C10}: [Crop(32, 32), FlipLR()]"),
    "data.padding_mode": ("reflect", "AT_AWP/utils.py: pad(), np.pad(mode='reflect'), border 4"),
    "data.rotate_degrees": (0.0, f"{AT_C10}: no rotation"),
    "generated.path": ("", f"{AT_C10}: CIFAR-10 only"),
    "optim.lr": (0.1, f"{AT_C10}: --lr-max"),
    "optim.momentum": (0.9, f"{AT_C10}: SGD(momentum=0.9)"),
    "optim.weight_decay": (5e-4, f"{AT_C10}: SGD(weight_decay=5e-4)"),
    "optim.batchnorm_weight_decay": (True, f"{AT_C10}: --l2 0, so params = model.parameters()"),
    "optim.nesterov": (False, f"{AT_C10}: SGD"),
    "optim.schedule": ("step", f"{AT_C10}: --lr-schedule piecewise"),
    "optim.milestones": ([100, 150], f"{AT_C10}: lr_max if t/epochs < 0.5, /10 if < 0.75, else /100"),
    "optim.decay": (0.1, f"{AT_C10}: lr_max / 10., lr_max / 100."),
    "optim.warmup_epochs": (0, f"{AT_C10}: piecewise"),
    "attack.norm": ("linf", f"{AT_C10}: --norm l_inf"),
    "attack.epsilon": (8 / 255, f"{AT_C10}: --epsilon 8, / 255."),
    "attack.eps_ramp": (False, f"{AT_C10}: fixed epsilon"),
    "attack.budget": ("fixed", f"{AT_C10}: attack_pgd(..., args.attack_iters, ...)"),
    "attack.steps": (10, f"{AT_C10}: --attack-iters"),
    "attack.step_size": (2 / 255, f"{AT_C10}: --pgd-alpha 2, / 255."),
    "attack.random_start": ("uniform", f"{AT_C10}: delta.uniform_(-epsilon, epsilon), clamped to [0, 1]"),
    "attack.eval_mode": (False, f"{AT_C10}: the model in train mode while attacking"),
    "attack.freeze_bn_stats": (False, f"{AT_C10}: BatchNorm running statistics move during the attack"),
    "awp.enabled": (True, f"{AT_C10}: --awp-gamma > 0"),
    "awp.gamma": (0.01, f"{AT_C10}: --awp-gamma"),
    "awp.warmup": (1, f"{AT_C10}: --awp-warmup 0 (0-based epochs: from the first)"),
    "awp.proxy_lr": (0.01, f"{AT_C10}: proxy_opt = SGD(proxy.parameters(), lr=0.01)"),
    "ema.enabled": (False, f"{AT_C10}: no weight average"),
    "epoch_average.enabled": (False, f"{AT_C10}: no weight average"),
    "eval.num_examples": (None, f"{AT_C10}: the whole test set"),
    "eval.pgd_steps": (20, f"{AT_C10}: --attack-iters-test"),
    "eval.step_size": (2 / 255, f"{AT_C10}: pgd_alpha"),
    "eval.epsilon": (None, f"{AT_C10}: epsilon"),
    "eval.every": (1, f"{AT_C10}: every epoch"),
    "eval.split": ("test", f"{AT_C10}: test_batches (--val off)"),
    "eval.objective": ("ce", f"{AT_C10}: attack_pgd's F.cross_entropy"),
    "eval.select": ("model", f"{AT_C10}: model_best.pth by test_robust_acc"),
}
AT_AWP_CIFAR100 = {
    **{key: (value, source.replace(AT_C10, AT_C100)) for key, (value, source) in AT_AWP_CIFAR10.items()},
    "name": ("cifar100_at_awp", "-"),
    "paper_row": ("cifar100_at_awp", README),
    "model.arch": ("WideResNet34_10", f"{AT_C100}: --model WideResNet, WideResNet(34, 100, widen_factor=10)"),
    "model.preprocess": ("meanstd", f"{AT_C100}: normalize(X) with CIFAR100_MEAN/STD; {README}"),
    "data.dataset": ("cifar100", AT_C100),
    "data.drop_last": (False, f"{AT_C100}: DataLoader's default"),
    "data.augment": ("basic", f"{AT_C100}: RandomCrop(32, padding=4), RandomHorizontalFlip()"),
    "data.padding_mode": ("constant", f"{AT_C100}: RandomCrop(32, padding=4)"),
    "data.rotate_degrees": (15.0, f"{AT_C100}: RandomRotation(15)"),
    "generated.path": ("", f"{AT_C100}: CIFAR-100 only"),
    "eval.split": ("test", f"{AT_C100}: test_loader"),
}
TRADES_AWP_CIFAR10 = {
    "name": ("cifar10_trades_awp", "-"),
    "paper_row": ("cifar10_trades_awp", README),
    "method": ("trades", f"{TRADES}: CE(natural) + beta KL(adv || natural)"),
    "epochs": (200, f"{TRADES}: --epochs"),
    "seed": (1, f"{TRADES}: --seed"),
    "label_smoothing": (0.0, f"{TRADES}: F.cross_entropy"),
    "model.arch": ("WideResNet34_10", f"{TRADES}: --arch WideResNet34 (depth 34, widen 10)"),
    "model.depth": (None, "trades_AWP/models/wideresnet.py: 34"),
    "model.widen_factor": (None, "trades_AWP/models/wideresnet.py: 10"),
    "model.preprocess": ("01", f"{TRADES}: ToTensor only; {README}: --preprocess 01 for TRADES"),
    "data.dataset": ("cifar10", f"{TRADES}: --data CIFAR10"),
    "data.batch_size": (128, f"{TRADES}: --batch-size"),
    "data.drop_last": (False, f"{TRADES}: DataLoader's default"),
    "data.augment": ("basic", f"{TRADES}: RandomCrop(32, padding=4), RandomHorizontalFlip()"),
    "data.padding_mode": ("constant", f"{TRADES}: RandomCrop(32, padding=4)"),
    "data.rotate_degrees": (0.0, f"{TRADES}: no rotation"),
    "generated.path": ("", f"{TRADES}: CIFAR-10 only"),
    "optim.lr": (0.1, f"{TRADES}: --lr"),
    "optim.momentum": (0.9, f"{TRADES}: --momentum"),
    "optim.weight_decay": (5e-4, f"{TRADES}: --weight-decay"),
    "optim.batchnorm_weight_decay": (True, f"{TRADES}: SGD(model.parameters(), weight_decay=...)"),
    "optim.nesterov": (False, f"{TRADES}: optim.SGD"),
    "optim.schedule": ("step", f"{TRADES}: adjust_learning_rate"),
    "optim.milestones": ([99, 149], f"{TRADES}: x0.1 if epoch >= 100, x0.01 if epoch >= 150 (1-based)"),
    "optim.decay": (0.1, f"{TRADES}: args.lr * 0.1, args.lr * 0.01"),
    "optim.warmup_epochs": (0, f"{TRADES}: adjust_learning_rate"),
    "attack.norm": ("linf", f"{TRADES}: --norm l_inf"),
    "attack.epsilon": (8 / 255, f"{TRADES}: --epsilon 8, / 255"),
    "attack.eps_ramp": (False, f"{TRADES}: fixed epsilon"),
    "attack.budget": ("fixed", f"{TRADES}: perturb_input(perturb_steps=args.num_steps)"),
    "attack.steps": (10, f"{TRADES}: --num-steps"),
    "attack.step_size": (2 / 255, f"{TRADES}: --step-size 2, / 255"),
    "attack.random_start": ("normal", f"{TRADES}: x_natural + 0.001 * torch.randn"),
    "attack.eval_mode": (True, f"{TRADES}: perturb_input's model.eval()"),
    "trades.beta": (6.0, f"{TRADES}: --beta"),
    "awp.enabled": (True, f"{TRADES}: --awp-gamma > 0"),
    "awp.gamma": (0.005, f"{TRADES}: --awp-gamma"),
    "awp.warmup": (10, f"{TRADES}: --awp-warmup 10, epoch >= args.awp_warmup (1-based)"),
    "awp.proxy_lr": (0.1, f"{TRADES}: proxy_optim = SGD(proxy.parameters(), lr=args.lr)"),
    "ema.enabled": (False, f"{TRADES}: no weight average"),
    "epoch_average.enabled": (False, f"{TRADES}: no weight average"),
    "eval.epsilon": (None, f"{TRADES}: epsilon"),
}
RECIPES = {  # config -> (launcher, the table)
    "cifar10_at_awp.yaml": ("train_at_awp_cifar10.sh", AT_AWP_CIFAR10),
    "cifar100_at_awp.yaml": ("train_at_awp_cifar100.sh", AT_AWP_CIFAR100),
    "cifar10_trades_awp.yaml": ("train_trades_awp_cifar10.sh", TRADES_AWP_CIFAR10),
}


def assert_recipe(resolved: dict, table: dict) -> None:
    flat = flatten(resolved)
    wrong = {
        key: (flat.get(key, "<missing>"), value, source)
        for key, (value, source) in table.items()
        if not (flat.get(key) == pytest.approx(value) if isinstance(value, float) else flat.get(key) == value)
    }
    assert not wrong, f"(resolved, expected, source) differ for {wrong}"


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_awp_config_resolves_to_the_authors_hyperparameters(config):
    cfg = load_config(ATConfig, CONFIGS / config)
    assert_recipe(dataclasses.asdict(cfg), RECIPES[config][1])


def test_the_awp_launchers_are_exactly_the_listed_ones():
    shipped = {path.name for path in (ROOT / "sh").glob("train_*.sh") if "_awp_" in path.name}
    assert shipped == {launcher for launcher, _ in RECIPES.values()}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_awp_launcher_prints_its_config_with_the_authors_hyperparameters(config, tmp_path):
    assert_launcher_prints_recipe(*RECIPES[config], config, tmp_path)


def assert_launcher_prints_recipe(launcher: str, table: dict, config: str, cwd: Path) -> None:
    """``bash sh/<launcher> --print-config``, run from ``cwd``, prints ``config`` resolved to ``table``."""
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / launcher), "--print-config"],
        cwd=cwd,
        env=dict(os.environ, DKL_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    parts = result.stdout.split("# ---- ")[1:]
    assert [Path(part.split("\n", 1)[0]).name for part in parts] == [config]
    assert_recipe(yaml.safe_load(parts[0].split("\n", 1)[1]), table)


# --- one epoch of each config on tiny data --------------------------------------------------


def one_epoch(data_root, out_dir, config, held_out):
    """Overrides that shrink a recipe to one epoch (one batch of 50 images: the fixture's others held
    out) of a depth-10, width-1 WRN, monitored on 10 test images; the attack and AWP as the recipe's."""
    return [
        "--config",
        str(CONFIGS / config),
        f"data.root={data_root}",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=50",
        f"data.validation_size={held_out}",
        "data.test_batch_size=50",
        "model.arch=WideResNet",
        "model.depth=10",
        "model.widen_factor=1",
        "epochs=1",
        "awp.warmup=1",
        "device=cpu",
        f"out_dir={out_dir}",
        "eval.num_examples=10",
        "eval.pgd_steps=1",
    ]


FIXTURE_IMAGES = {"cifar10": 200, "cifar100": 300}  # training images of tests/conftest.py's roots


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_one_epoch_of_each_awp_config_writes_its_run_folder(config, request, tmp_path, monkeypatch):
    cfg = load_config(ATConfig, CONFIGS / config)
    data_root = request.getfixturevalue(f"{cfg.data.dataset}_root")
    trained = []

    def attach(model, *args):  # the trainer's model, normalising its inputs as the config says
        trained.append(attach_preprocessing(model, *args))
        return trained[-1]

    monkeypatch.setattr(train_module, "attach_preprocessing", attach)
    with torch.random.fork_rng():
        assert main(one_epoch(data_root, tmp_path, config, held_out=FIXTURE_IMAGES[cfg.data.dataset] - 50)) == 0
    run = tmp_path / cfg.name
    assert (attached_preprocessing(trained[0]) is not None) == (cfg.model.preprocess == "meanstd")
    (record,) = read_jsonl(run / "metrics.jsonl")
    assert record["awp"] is True and record["attack_steps"] == 10 and record["eps"] == pytest.approx(8 / 255)
    assert record["lr"] == pytest.approx(0.1)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["preprocess"] == cfg.model.preprocess and saved["paper_row"] == cfg.paper_row
    # best.pt is a plain architecture state dict; AutoAttack's eval.py puts the run's normalisation in front.
    plain = build_model("WideResNet", cfg_classes(cfg), dataset=cfg.data.dataset, depth=10, widen_factor=1)
    state = load_file(run / "best.pt")["model"]
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state)
    assert run_target(run, "best").preprocess == cfg.model.preprocess
    assert export(run, "best", tmp_path / "export.pt")[0]["preprocess"] == cfg.model.preprocess  # the model card
    assert (run / "last.pt").is_file() and not list(run.glob("ours-model-epoch-SWA*.pt"))


def cfg_classes(cfg):
    return {"cifar10": 10, "cifar100": 100}[cfg.data.dataset]


# --- where the new knobs cannot act ---------------------------------------------------------


def at_awp(*overrides):
    return load_config(ATConfig, CONFIGS / "cifar10_at_awp.yaml", list(overrides))


def test_the_device_loader_refuses_reflect_padding_and_rotation_and_auto_falls_back_to_workers():
    cuda = torch.device("cuda")  # only its type is read
    assert not uses_device_loader(at_awp(), cuda)  # reflect padding: DataLoader workers
    assert not uses_device_loader(at_awp("data.padding_mode=constant", "data.rotate_degrees=15"), cuda)
    assert uses_device_loader(at_awp("data.padding_mode=constant"), cuda)
    for overrides in (
        ["data.loader=device"],
        ["data.loader=device", "data.padding_mode=constant", "data.rotate_degrees=5"],
    ):
        with pytest.raises(ConfigError, match="data.loader is device"):
            at_awp(*overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.augment=none"], "data.augment is none"),
        (["data.dataset=digits", "model.arch=digits_cnn", "model.preprocess=01"], "not CIFAR"),
        (["generated.path=data/generated/x"], "generated.path mixes its own crops"),
        (["data.dataset=digits", "model.arch=digits_cnn", "data.padding_mode=constant"], "model.preprocess"),
    ],
)
def test_the_new_knobs_are_refused_where_they_cannot_act(overrides, message):
    with pytest.raises(ConfigError, match=message):
        at_awp(*overrides)
