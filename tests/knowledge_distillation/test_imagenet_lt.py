"""ImageNet-LT distillation as jiequancui/DKL (c5e8ad2) runs it, DKLv1/Imbalanced_KD-dkl and DKLv2's copy: every
recipe value against the authors' scripts and launchers, each config's --print-config against its launcher,
their learning-rate formula, the ResNeXt-101 32x4d teacher, the list loaders on a small tree, shot-wise accuracy
of a long-tailed digits run against a hand count, its stop and resume, and bad values."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine.config import ConfigError, load_config
from engine.file_io import load_file
from engine.schedule import learning_rate
from knowledge_distillation.config import KDConfig
from knowledge_distillation.loaders import build_loaders
from knowledge_distillation.train import main, set_learning_rate
from models import build_model, load_weights

from ..adv_training.test_awp_recipes import assert_recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"
LT = CONFIGS / "imagenet_lt"

SCRIPT = "DKLv1/Imbalanced_KD-dkl/imagenetlt_distill_dkl.py"
LAUNCHERS = "DKLv1/Imbalanced_KD-dkl/sh/Distill"
V2 = "DKLv2/Imbalanced_KD-dkl/sh/Distill"

BASE = {  # key: (value, where the authors set it)
    "epochs": (90, f"{LAUNCHERS}/*.sh: --epochs 90"),
    "batchnorm_groups": (4, f"{LAUNCHERS}/*.sh: 4 GPUs (#SBATCH --gres=gpu:4) under DDP, 32 images each"),
    "data.dataset": ("imagenet_lt", f"{SCRIPT}: ImageNet_LT_train.txt / ImageNet_LT_test.txt"),
    "data.eval_list": ("test", f"{SCRIPT}: every epoch on ImageNet_LT_test.txt (the val list unused)"),
    "data.normalize": (True, f"{SCRIPT}: Normalize(ImageNet mean, std)"),
    "data.batch_size": (128, f"{LAUNCHERS}/*.sh: -b 128 (all GPUs)"),
    "data.drop_last": (True, f"{SCRIPT}: 905 iterations an epoch (115,846 // 128)"),
    "optim.lr": (0.05, f"{LAUNCHERS}/*.sh: --lr 0.05"),
    "optim.momentum": (0.9, f"{SCRIPT}: --momentum 0.9"),
    "optim.weight_decay": (5e-4, f"{LAUNCHERS}/*.sh: --wd 5e-4 (every parameter)"),
    "optim.nesterov": (False, f"{SCRIPT}: torch.optim.SGD without nesterov"),
    "optim.schedule": ("cosine", f"{SCRIPT}: --cos True, adjust_learning_rate"),
    "optim.warmup_epochs": (10, f"{SCRIPT}: --warmup_epochs 10"),
    "ikl.ce_weight": (1.0, f"{SCRIPT}: loss = CE + ..."),
    "ikl.temperature": (1.0, f"{SCRIPT}: --temperature 1.0 (no launcher sets it)"),
    "ikl.prior_temperature": (100.0, f"{SCRIPT}: --T2 100.0"),
    "ikl.gamma": (1.0, f"{SCRIPT}: DKLv1 has no gamma"),
    "ikl.class_prior": (False, f"{LAUNCHERS}/*_distill_dkl.sh: no --GI"),
    "ikl.warmup": (0, f"{SCRIPT}: the distillation term at full weight from the first epoch"),
    "kd.ce_weight": (1.0, f"{SCRIPT}: loss = CE + distill_w * kd_loss"),
    "kd.temperature": (1.0, f"{SCRIPT}: --temperature 1.0"),
}


def baseline(short, arch, top1):
    script = f"{LAUNCHERS}/ImageNetLT_train_{short.upper()}_baseline.sh"
    return {
        **BASE,
        "method": ("vanilla", f"{script}: CE only"),
        "teacher.arch": ("", f"{script}: no teacher"),
        "student.arch": (arch, f"{script}: --arch"),
        "paper_row": (f"kd_imagenet_lt_{short}_baseline", f"DKLv1/Imbalanced_KD-dkl/README.md: {top1}"),
    }


def pair(name, teacher_short, teacher, student, kd_weight, alpha, beta, launcher):
    return {
        **BASE,
        "method": ("ikl", f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill_dkl.sh: --distill_loss IKL_KD"),
        "teacher.arch": (teacher, f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill_dkl.sh: --teacher_arch"),
        "teacher.checkpoint": (f"runs/imagenet_lt_{teacher_short}_baseline/best.pt", "its baseline run"),
        "student.arch": (student, f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill_dkl.sh: --arch"),
        "ikl.alpha": (alpha, f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill_dkl.sh: --alpha"),
        "ikl.beta": (beta, f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill_dkl.sh: --beta"),
        "kd.kd_weight": (kd_weight, f"{LAUNCHERS}/ImageNetLT_train_{launcher}_distill.sh: --distill_w"),
        "paper_row": (f"kd_imagenet_lt_{name}", "DKLv1/Imbalanced_KD-dkl/README.md"),
    }


def gkl(table, name, launcher):
    return {
        **table,
        "ikl.gamma": (0.3, f"{V2}/ImageNetLT_train_{launcher}_distill_dkl.sh: --gamma 0.3"),
        "ikl.prior_temperature": (1.0, f"{V2}/ImageNetLT_train_{launcher}_distill_dkl.sh: --T2 1.0"),
        "ikl.class_prior": (True, f"{V2}/ImageNetLT_train_{launcher}_distill_dkl.sh: --GI"),
        "paper_row": (f"kd_imagenet_lt_{name}_gkl", "DKLv2/Imbalanced_KD-dkl/README.md"),
    }


X101_R18 = pair("x101_r18", "x101", "ResNeXt101_32x4d", "ResNet18", 4.0, 4.0, 4.0, "X101R18")
X101_R50 = pair("x101_r50", "x101", "ResNeXt101_32x4d", "ResNet50", 3.0, 3.0, 4.0, "X101R50")
RECIPES = {  # config -> (launcher arguments, table)
    "x101_baseline": (("kd_imagenet_lt.sh", "vanilla"), baseline("x101", "ResNeXt101_32x4d", 48.02)),
    "r18_baseline": (("kd_imagenet_lt.sh", "vanilla"), baseline("r18", "ResNet18", 41.15)),
    "r50_baseline": (("kd_imagenet_lt.sh", "vanilla"), baseline("r50", "ResNet50", 45.48)),
    "x101_r18": (("kd_imagenet_lt.sh", "ikl"), X101_R18),
    "x101_r50": (("kd_imagenet_lt.sh", "ikl"), X101_R50),
    "r18_r18": (("kd_imagenet_lt.sh", "ikl"), pair("r18_r18", "r18", "ResNet18", "ResNet18", 4.0, 1.0, 0.5, "R18R18")),
    "r50_r50": (("kd_imagenet_lt.sh", "ikl"), pair("r50_r50", "r50", "ResNet50", "ResNet50", 1.0, 1.0, 1.0, "R50R50")),
    "x101_r18_gkl": (("kd_imagenet_lt_gkl.sh",), gkl(X101_R18, "x101_r18", "X101R18")),
    "x101_r50_gkl": (("kd_imagenet_lt_gkl.sh",), gkl(X101_R50, "x101_r50", "X101R50")),
}


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_config_resolves_to_the_authors_hyperparameters(config):
    assert_recipe(dataclasses.asdict(load_config(KDConfig, LT / f"{config}.yaml")), RECIPES[config][1])


def test_the_configs_are_exactly_the_listed_ones():
    assert {path.stem for path in LT.glob("*.yaml")} == set(RECIPES) | {"base"}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_launcher_prints_its_config_with_the_authors_hyperparameters(config, tmp_path):
    (launcher, *method), table = RECIPES[config]
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / launcher), *method, config.removesuffix("_gkl"), "--print-config"],
        cwd=tmp_path,
        env=dict(os.environ, DKL_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout.split("# ---- ")[-1].split("\n", 1)[1])
    assert_recipe(printed, table)
    if "baseline" in config or config.endswith("_gkl"):  # the teachers' folders are fixed: the pairs name them
        assert printed["name"] == f"imagenet_lt_{config}"


def test_the_cosine_schedule_with_warm_up_is_their_adjust_learning_rate():
    def theirs(epoch0):  # imagenetlt_distill_dkl.py adjust_learning_rate, 0-based epochs, lr 0.05, 10 + 80 epochs
        if epoch0 < 10:
            return 0.05 / 10 * (epoch0 + 1)
        return 0.05 * 0.5 * (1.0 + math.cos(math.pi * (epoch0 - 10 + 1) / (90 - 10 + 1)))

    cfg = load_config(KDConfig, LT / "x101_r18.yaml")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for epoch in range(1, 91):  # what the trainer sets from the config
        assert set_learning_rate(cfg, optimizer, epoch) == pytest.approx(theirs(epoch - 1), rel=1e-12, abs=1e-15)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(theirs(epoch - 1), rel=1e-12, abs=1e-15)
    assert learning_rate(11, base_lr=0.05, epochs=90, schedule="cosine", warmup_epochs=10) == pytest.approx(theirs(10))


@pytest.mark.slow
def test_their_resnext101_32x4d_checkpoint_loads_strictly():
    model = build_model("ResNeXt101_32x4d", 1000)
    assert sum(p.numel() for p in model.parameters()) == 44_177_704
    conv = model.layer3[0].conv2
    assert (conv.groups, conv.in_channels, len(model.layer3)) == (32, 512, 23)  # 32 groups of width 4 x 4
    torch.manual_seed(0)
    saved = {
        f"module.encoder.{key}": torch.randn_like(value.float()).to(value.dtype)
        for key, value in model.state_dict().items()
    }
    loaded = load_weights(build_model("ResNeXt101_32x4d", 1000), saved)  # their DDAModel under DDP
    assert all(torch.equal(loaded.state_dict()[key[len("module.encoder.") :]], value) for key, value in saved.items())


# --- the list loaders, on a small tree --------------------------------------------------------------------


def write_lists(imagenet_root: Path, folder: Path, test_from: str = "val") -> Path:
    """ImageNet-LT-style lists over the small tree: train from train/, val and test from ``test_from``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (imagenet_root / "train").iterdir())
    for list_name, split in (
        ("ImageNet_LT_train.txt", "train"),
        ("ImageNet_LT_val.txt", "val"),
        ("ImageNet_LT_test.txt", test_from),
    ):
        lines = [
            f"{split}/{cls}/{image.name} {label}"
            for label, cls in enumerate(classes)
            for image in sorted((imagenet_root / split / cls).iterdir())[: (4 - label if split == "train" else 2)]
        ]
        (folder / list_name).write_text("\n".join(lines) + "\n")
    return folder


def lt_config(imagenet_root, lists, *extra):
    return load_config(
        KDConfig,
        LT / "r18_baseline.yaml",
        [f"data.root={imagenet_root}", f"data.lists={lists}", "data.num_workers=0", "data.test_batch_size=2", *extra],
    )


def test_the_loaders_read_the_lists_and_count_the_training_images_of_each_class(imagenet_root, tmp_path):
    lists = write_lists(imagenet_root, tmp_path / "lists")
    loaders = build_loaders(
        lt_config(imagenet_root, lists, "data.batch_size=2", "batchnorm_groups=1"),
        torch.device("cpu"),
        with_indices=False,
    )
    assert loaders.num_classes == 1000
    assert loaders.train_counts[:3] == [4, 3, 2] and sum(loaders.train_counts) == 9  # from the training list
    assert len(loaders.val.dataset) == 6 and loaders.train.drop_last
    images, labels = next(iter(loaders.val))
    assert images.shape[1:] == (3, 224, 224) and labels.tolist() == [0, 0]


def test_a_missing_list_ends_in_one_message_saying_where_the_lists_are(imagenet_root, tmp_path, capsys):
    argv = ["--config", str(LT / "r18_baseline.yaml"), f"data.root={imagenet_root}", f"data.lists={tmp_path / 'none'}"]
    assert main([*argv, "device=cpu", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImageNet_LT_train.txt" in err[0] and "OpenLongTailRecognition-OLTR" in err[0]


# --- a long-tailed digits run -----------------------------------------------------------------------------


def digits(out, name, config, *extra):
    return [
        "--config",
        str(CONFIGS / config),
        "data.long_tail=[120, 5]",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
        *extra,
    ]


@pytest.mark.slow
def test_a_long_tailed_digits_teacher_and_ikl_student_report_shot_accuracy_and_resume_exactly(tmp_path, capsys):
    assert main(digits(tmp_path, "teacher", "digits_teacher.yaml", "epochs=3")) == 0
    teacher = tmp_path / "teacher" / "best.pt"
    student = ("digits_ikl.yaml", f"teacher.checkpoint={teacher}", "teacher.report_accuracy=false", "epochs=2")
    assert main(digits(tmp_path, "straight", *student)) == 0
    assert main(digits(tmp_path, "split", *student, "stop_after=1")) == 0
    assert main(digits(tmp_path, "split", *student, "resume=true")) == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert all(torch.equal(value, split["model"][key]) for key, value in straight["model"].items())
    # shot-wise top-1 by hand from the last weights: the classes' training counts are 120, 84, 59, 42, 29, 21, 14,
    # 10, 7, 5 (many > 100: class 0; medium 20..100: 1-5; few < 20: 6-9), the mean of per-class accuracies
    cfg = load_config(KDConfig, CONFIGS / "digits_ikl.yaml")
    model = build_model(cfg.student.arch, 10, dataset="digits")
    model.load_state_dict(straight["model"])
    model.eval()
    loaders = build_loaders(
        load_config(KDConfig, CONFIGS / "digits_ikl.yaml", ["data.long_tail=[120, 5]"]), torch.device("cpu"), False
    )
    assert loaders.train_counts == [120, 84, 59, 42, 29, 21, 14, 10, 7, 5]
    hits, totals = [0] * 10, [0] * 10
    with torch.no_grad():
        for images, labels in loaders.val:
            for label, prediction in zip(labels.tolist(), model(images).argmax(1).tolist()):
                totals[label] += 1
                hits[label] += label == prediction
    per_class = [100.0 * h / t for h, t in zip(hits, totals)]
    record = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_many_shot_top1"] == pytest.approx(per_class[0])
    assert record["test_medium_shot_top1"] == pytest.approx(sum(per_class[1:6]) / 5)
    assert record["test_few_shot_top1"] == pytest.approx(sum(per_class[6:]) / 4)
    # results.json, the report and its plot show them too
    final = json.loads((tmp_path / "straight" / "results.json").read_text())["final"]
    assert final["test_few_shot_top1"] == record["test_few_shot_top1"]
    from experiments.report import main as report

    assert report([str(tmp_path / "straight"), "--plot", str(tmp_path / "groups.png")]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| setting"))
    assert header.endswith("| many-shot (last) | medium-shot (last) | few-shot (last) |")
    assert (tmp_path / "groups.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.long_tail=[5, 150]"], "'data.long_tail' must be [max, min]"),
        (["data.long_tail=[150]"], "'data.long_tail' must be [max, min]"),
        (["data.long_tail=[0, 0]"], "data.long_tail"),
        (
            ["data.dataset=imagenet", "student.arch=ResNet18", "teacher.arch=", "data.long_tail=[150, 5]"],
            "subsamples digits or cifar100",
        ),
        (["data.eval_list=train"], "data.eval_list"),
        (["optim.schedule=cos"], "optim.schedule"),
        (["data.eval_list=val"], "'data.eval_list' chooses an ImageNet-LT list"),
    ],
)
def test_bad_values_of_the_new_knobs_end_in_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(KDConfig, CONFIGS / "digits_ikl.yaml", overrides)
