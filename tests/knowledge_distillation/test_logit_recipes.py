"""The logit recipes with files of their own (configs/knowledge_distillation/{cifar100,imagenet}/RECIPE/PAIR.yaml
for RECIPE = dist, kd_ls, dkd_ls, ikl_ls, gkl_ls, ...): each resolves to its authors' setting, names the published
row it reproduces (or none, for the new rows), takes a step, and the launcher runs exactly the recipe's pairs.

The expected values are read independently of the files: DIST's from hunto/DIST_KD's README and
configs/strategies/distill/{dist_cifar,resnet_dist}.yaml (image_classification_sota d9662f7); MLKD's from
Jin-Ying/Multi-Level-Logit-Distillation's configs/cifar100/ours/*.yaml as released (77b91ec) and
configs/imagenet/*/kd_ours.yaml; CTKD's from zhengli97/CTKD's scripts and train_student.py defaults (7d52522); the
logit-standardization rows' from the names of the logs that the fork's README links
(sunshangquan/logit-standardization-KD f6e5aa5, logs/KD|DKD|MLKD|CTKD/<kd type>,<teacher>,<student>,<base
temperature>,<kd weight>[,<DKD beta>].txt), parsed here."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import build_distiller
from knowledge_distillation.paper_rows import PAPER_ROWS
from losses import ClassPrior
from models import build_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"
CIFAR = CONFIGS / "cifar100"
PAIRS = sorted(p.stem for p in CIFAR.glob("*.yaml") if p.stem != "base" and not p.stem.endswith("_gkl"))
LOGIT_RECIPES = ["dist", "mlkd", "ctkd", "kd_ls", "dkd_ls", "mlkd_ls", "ctkd_ls", "ikl_ls", "gkl_ls"]


def value(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def recipe_files(recipe, dataset="cifar100"):
    return sorted((CONFIGS / dataset / recipe).glob("*.yaml"))


# hunto/DIST_KD README.md, CIFAR-100 table: MODEL / T_MODEL of each pair and its mean top-1.
DIST_CIFAR = {
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 74.43),
    "res56_res20": ("resnet56", "resnet20", 71.75),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", 76.31),
    "res50_mv2": ("ResNet50", "MobileNetV2", 68.66),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1", 76.34),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2", 77.35),
}
# dist_cifar.yaml: kd dist_t4, ori/kd loss weights 1/2, batch 64, 240 epochs, SGD 0.9 without Nesterov, wd 5e-4
# on everything; lr 0.05 held 150 epochs then x0.1 every 30; the README: lr 0.01 for MobileNet/ShuffleNet students.
DIST_CIFAR_SOLVER = {
    "method": "dist",
    "dist.temperature": 4.0,
    "dist.beta": 1.0,
    "dist.gamma": 1.0,
    "dist.ce_weight": 1.0,
    "dist.kd_weight": 2.0,
    "logit_standardization": False,
    "data.batch_size": 64,
    "epochs": 240,
    "optim.momentum": 0.9,
    "optim.nesterov": False,
    "optim.weight_decay": 5e-4,
    "optim.batchnorm_weight_decay": True,
    "optim.milestones": [150, 180, 210],
    "optim.decay": 0.1,
    "optim.schedule": "step",
    "optim.warmup_epochs": 0,
}
# resnet_dist.yaml on 8 GPUs: kd dist (tau 1), 32 x 8 images, 100 epochs, lr 0.1 x0.1 every 30 epochs, wd 1e-4
# filtered off BatchNorm and biases, Nesterov (args.py's defaults); the README's ImageNet table.
DIST_IMAGENET = {"r34_r18": ("ResNet34", "ResNet18", 72.07), "r50_mv1": ("ResNet50", "MobileNetV1", 73.24)}
DIST_IMAGENET_SOLVER = {
    "method": "dist",
    "dist.temperature": 1.0,
    "dist.ce_weight": 1.0,
    "dist.kd_weight": 2.0,
    "data.batch_size": 256,
    "batchnorm_groups": 8,
    "epochs": 100,
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 1e-4,
    "optim.batchnorm_weight_decay": False,
    "optim.milestones": [30, 60, 90],
    "teacher.checkpoint": "torchvision:IMAGENET1K_V1",
}


def test_dist_has_a_file_for_each_pair_of_its_readme_and_nothing_else():
    assert [p.stem for p in recipe_files("dist")] == sorted(DIST_CIFAR)
    assert [p.stem for p in recipe_files("dist", "imagenet")] == sorted(DIST_IMAGENET)


@pytest.mark.parametrize("pair", sorted(DIST_CIFAR))
def test_each_dist_cifar_file_is_the_authors_recipe(pair):
    cfg = load_config(KDConfig, CIFAR / "dist" / f"{pair}.yaml")
    teacher, student, top1 = DIST_CIFAR[pair]
    assert (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
    assert cfg.optim.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
    assert {key: value(cfg, key) for key in DIST_CIFAR_SOLVER} == DIST_CIFAR_SOLVER
    assert PAPER_ROWS[cfg.paper_row].values == {"dist": {"top1": top1}}
    assert "hunto/DIST_KD README.md" in PAPER_ROWS[cfg.paper_row].source


@pytest.mark.parametrize("pair", sorted(DIST_IMAGENET))
def test_each_dist_imagenet_file_is_the_authors_baseline_recipe(pair):
    cfg = load_config(KDConfig, CONFIGS / "imagenet" / "dist" / f"{pair}.yaml")
    teacher, student, top1 = DIST_IMAGENET[pair]
    assert (cfg.data.dataset, cfg.teacher.arch, cfg.student.arch) == ("imagenet", teacher, student)
    assert {key: value(cfg, key) for key in DIST_IMAGENET_SOLVER} == DIST_IMAGENET_SOLVER
    assert PAPER_ROWS[cfg.paper_row].values == {"dist": {"top1": top1}}


# MLKD's configs/cifar100/ours/<file>.yaml at 77b91ec: (teacher, student, EPOCHS, LR); the rest as mdistiller's KD.
MLKD_CIFAR = {
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", 480, 0.025),
    "res110_res32": ("resnet110", "resnet32", 480, 0.025),
    "res56_res20": ("resnet56", "resnet20", 480, 0.025),
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", 480, 0.025),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 480, 0.025),
    "vgg13_vgg8": ("vgg13", "vgg8", 480, 0.025),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1", 960, 0.01),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2", 960, 0.01),
    "res50_mv2": ("ResNet50", "MobileNetV2", 480, 0.01),
    "vgg13_mv2": ("vgg13", "MobileNetV2", 480, 0.01),
    "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1", 480, 0.01),
}
MLKD_SOLVER = {
    "method": "mlkd",
    "mlkd.temperature": 4.0,
    "mlkd.ce_weight": 0.1,
    "mlkd.kd_weight": 0.9,
    "data.batch_size": 64,
    "optim.milestones": [150, 180, 210],
    "optim.weight_decay": 5e-4,
    "optim.momentum": 0.9,
    "optim.nesterov": False,
}
# the fork's README "MLKD" row (the pairs it has)
MLKD_PUBLISHED = {
    "res32x4_res8x4": 77.08,
    "vgg13_vgg8": 75.18,
    "wrn40_2_wrn40_1": 75.35,
    "wrn40_2_wrn16_2": 76.63,
    "res56_res20": 72.19,
    "res110_res32": 74.11,
    "res32x4_shuv2": 78.44,
    "vgg13_mv2": 70.57,
    "res50_mv2": 71.04,
}


@pytest.mark.parametrize("pair", sorted(MLKD_CIFAR))
def test_each_mlkd_cifar_file_is_the_authors_released_config(pair):
    cfg = load_config(KDConfig, CIFAR / "mlkd" / f"{pair}.yaml")
    teacher, student, epochs, lr = MLKD_CIFAR[pair]
    assert (cfg.teacher.arch, cfg.student.arch, cfg.epochs, cfg.optim.lr) == (teacher, student, epochs, lr)
    assert {key: value(cfg, key) for key in MLKD_SOLVER} == MLKD_SOLVER
    if pair in MLKD_PUBLISHED:
        assert PAPER_ROWS[cfg.paper_row].values == {"mlkd": {"top1": MLKD_PUBLISHED[pair]}}
    else:
        assert cfg.paper_row == ""


# zhengli97/CTKD scripts/run_cifar_distill.sh and train_student.py's defaults
CTKD_CIFAR = {
    "method": "ctkd",
    "ctkd.ce_weight": 0.1,
    "ctkd.kd_weight": 0.9,
    "ctkd.temperature_start": 1.0,
    "ctkd.temperature_span": 20.0,
    "ctkd.curriculum_epochs": 10,
    "ctkd.max_reversal": 1.0,
    "logit_standardization": False,
    "data.batch_size": 64,
    "epochs": 240,
    "optim.milestones": [150, 180, 210],
    "optim.weight_decay": 5e-4,
    "optim.momentum": 0.9,
    "optim.nesterov": False,
}
# KD + CTKD as its README (six pairs) and project page (five more) publish it; resnet32x4 -> resnet8x4: the fork's
CTKD_PUBLISHED = {
    ("resnet56", "resnet20"): 71.19,
    ("resnet110", "resnet32"): 73.52,
    ("wrn_40_2", "wrn_16_2"): 75.45,
    ("wrn_40_2", "wrn_40_1"): 73.93,
    ("vgg13", "vgg8"): 73.52,
    ("wrn_40_2", "ShuffleV1"): 75.78,
    ("vgg13", "MobileNetV2"): 68.46,
    ("ResNet50", "MobileNetV2"): 68.47,
    ("resnet32x4", "ShuffleV1"): 74.48,
    ("resnet32x4", "ShuffleV2"): 75.31,
    ("resnet32x4", "resnet8x4"): 73.39,
}


def test_each_ctkd_cifar_file_is_the_authors_script():
    files = recipe_files("ctkd")
    assert [p.stem for p in files] == PAIRS
    for path in files:
        cfg = load_config(KDConfig, path)
        assert {key: value(cfg, key) for key in CTKD_CIFAR} == CTKD_CIFAR, path
        small = cfg.student.arch in ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # train_student.py forces 0.01
        assert cfg.optim.lr == (0.01 if small else 0.05), path
        assert PAPER_ROWS[cfg.paper_row].values == {
            "ctkd": {"top1": CTKD_PUBLISHED[cfg.teacher.arch, cfg.student.arch]}
        }


def test_mlkd_and_ctkd_imagenet_files_are_the_authors():
    # MLKD configs/imagenet/{r34_r18,r50_mv2}/kd_ours.yaml: batch 512, 100 epochs, LR 0.1 / 0.2, T 1, CE 0.5, KD 0.5
    for pair, lr in (("r34_r18", 0.1), ("r50_mv1", 0.2)):
        cfg = load_config(KDConfig, CONFIGS / "imagenet" / "mlkd" / f"{pair}.yaml")
        assert (cfg.method, cfg.data.batch_size, cfg.epochs, cfg.optim.lr, cfg.optim.milestones) == (
            "mlkd",
            512,
            100,
            lr,
            [30, 60, 90],
        )
        assert (cfg.mlkd.temperature, cfg.mlkd.ce_weight, cfg.mlkd.kd_weight, cfg.paper_row) == (1.0, 0.5, 0.5, "")
    # CTKD run_imagenet_distill.sh (its original weights -r 1 -a 1): 8 x 32 images, 120 epochs, lr 0.1, wd 1e-4
    for pair in ("r34_r18", "r50_mv1"):
        cfg = load_config(KDConfig, CONFIGS / "imagenet" / "ctkd" / f"{pair}.yaml")
        assert (cfg.method, cfg.data.batch_size, cfg.batchnorm_groups, cfg.epochs, cfg.optim.lr) == (
            "ctkd",
            256,
            8,
            120,
            0.1,
        )
        assert (cfg.optim.milestones, cfg.optim.weight_decay, cfg.ctkd.ce_weight, cfg.ctkd.kd_weight) == (
            [30, 60, 90],
            1e-4,
            1.0,
            1.0,
        )
        assert (cfg.ctkd.temperature_start, cfg.ctkd.temperature_span, cfg.ctkd.curriculum_epochs) == (1.0, 20.0, 5)
    assert PAPER_ROWS["kd_imagenet_r34_r18_ctkd"].values == {"ctkd": {"top1": 71.32}}


# The logs the fork's README links for its "KD + Ours" and "DKD + Ours" cells (f6e5aa5, logs/KD and logs/DKD), for
# the pairs of ours it has; the fork's architecture names as ours.
LS_LOGS = [
    "kd,resnet32x4,resnet8x4,2,9",
    "kd,vgg13,vgg8,3,9",
    "kd,wrn_40_2,wrn_40_1,2,9",
    "kd,wrn_40_2,wrn_16_2,2,9",
    "kd,resnet56,resnet20,2,9",
    "kd,resnet110,resnet32,2,9",
    "kd,resnet32x4,ShuffleV2,2,9",
    "kd,vgg13,MobileNetV2,3,9",
    "kd,ResNet50,MobileNetV2,3,1",
    "dkd,resnet32x4,resnet8x4,2,9",
    "dkd,vgg13,vgg8,2,15,2.0",
    "dkd,wrn_40_2,wrn_40_1,2,12,2.0",
    "dkd,wrn_40_2,wrn_16_2,2,12,2.0",
    "dkd,resnet56,resnet20,3,18,2.0",
    "dkd,resnet110,resnet32,2,15,2.0",
    "dkd,resnet32x4,ShuffleV2,2,9",
    "dkd,vgg13,MobileNetV2,3,9,2.0",
    "dkd,ResNet50,MobileNetV2,2,15,2.0",
]
# The fork's README "+ Ours" cells (KD, DKD) for the same pairs, teacher/student as ours.
LS_PUBLISHED = {
    ("resnet32x4", "resnet8x4"): (76.62, 77.01),
    ("vgg13", "vgg8"): (74.36, 74.81),
    ("wrn_40_2", "wrn_40_1"): (74.37, 74.89),
    ("wrn_40_2", "wrn_16_2"): (76.11, 76.39),
    ("resnet56", "resnet20"): (71.43, 72.32),
    ("resnet110", "resnet32"): (74.17, 74.29),
    ("resnet32x4", "ShuffleV2"): (75.56, 77.37),
    ("vgg13", "MobileNetV2"): (68.61, 69.98),
    ("ResNet50", "MobileNetV2"): (69.02, 70.45),
}


# The logs of its "MLKD + Ours" and "CTKD + Ours" cells (res56 -> res20's MLKD link is empty: the default flags, 2,9).
LS_LOGS_MLKD_CTKD = [
    "mlkd,resnet32x4,resnet8x4,2,9",
    "mlkd,vgg13,vgg8,2,6",
    "mlkd,wrn_40_2,wrn_40_1,2,9",
    "mlkd,wrn_40_2,wrn_16_2,2,9",
    "mlkd,resnet56,resnet20,2,9",
    "mlkd,resnet110,resnet32,2,9",
    "mlkd,resnet32x4,ShuffleV2,2,6",
    "mlkd,vgg13,MobileNetV2,2,6",
    "mlkd,ResNet50,MobileNetV2,2,9",
    *(
        f"ctkd,{pair},2,9"
        for pair in (
            "resnet32x4,resnet8x4",
            "vgg13,vgg8",
            "wrn_40_2,wrn_40_1",
            "wrn_40_2,wrn_16_2",
            "resnet56,resnet20",
            "resnet110,resnet32",
            "resnet32x4,ShuffleV2",
            "vgg13,MobileNetV2",
            "ResNet50,MobileNetV2",
        )
    ),
]
LS_PUBLISHED_MLKD_CTKD = {  # the fork's "MLKD + Ours", "CTKD + Ours" cells
    ("resnet32x4", "resnet8x4"): (78.28, 76.67),
    ("vgg13", "vgg8"): (75.22, 74.47),
    ("wrn_40_2", "wrn_40_1"): (75.56, 74.58),
    ("wrn_40_2", "wrn_16_2"): (76.95, 76.08),
    ("resnet56", "resnet20"): (72.33, 71.34),
    ("resnet110", "resnet32"): (74.32, 74.01),
    ("resnet32x4", "ShuffleV2"): (78.76, 76.18),
    ("vgg13", "MobileNetV2"): (70.94, 68.98),
    ("ResNet50", "MobileNetV2"): (71.19, 69.36),
}


@pytest.mark.parametrize("recipe", ["mlkd_ls", "ctkd_ls"])
def test_mlkd_and_ctkd_with_logit_standardization_are_the_forks_logged_runs(recipe):
    """MLKD: --base-temp T --kd-weight W set KD.TEMPERATURE and the weight of every term; the fork's configs hold
    the solver (vgg13 -> vgg8 at lr 0.01 there). CTKD: -a W, standardised; its logs' temperature floor is 2."""
    method = recipe[: -len("_ls")]
    expected = {}
    for name in LS_LOGS_MLKD_CTKD:
        kind, teacher, student, temperature, weight = name.split(",")
        if kind == method:
            expected[teacher, student] = (float(temperature), float(weight))
    files = recipe_files(recipe)
    assert len(files) == len(expected) == 9
    for path in files:
        cfg = load_config(KDConfig, path)
        plain = load_config(KDConfig, CIFAR / method / path.name)
        temperature, weight = expected[cfg.teacher.arch, cfg.student.arch]
        assert (cfg.method, cfg.logit_standardization, cfg.epochs) == (method, True, plain.epochs), path
        if method == "mlkd":
            assert (cfg.mlkd.temperature, cfg.mlkd.kd_weight, cfg.mlkd.ce_weight) == (temperature, weight, 0.1), path
            assert cfg.optim.lr == (0.01 if cfg.student.arch == "vgg8" else plain.optim.lr), path
        else:
            assert (cfg.ctkd.temperature_start, cfg.ctkd.kd_weight, cfg.ctkd.ce_weight) == (temperature, weight, 0.1)
            assert cfg.ctkd.temperature_start + cfg.ctkd.temperature_span >= 30.39  # the logs' highest temperature
            assert cfg.optim.lr == plain.optim.lr, path
        published = LS_PUBLISHED_MLKD_CTKD[cfg.teacher.arch, cfg.student.arch][0 if method == "mlkd" else 1]
        assert PAPER_ROWS[cfg.paper_row].values[method] == {"top1": published}, path


def ls_expectations():
    """{(method, teacher, student): the keys the fork's flags set}, from the log names: --base-temp T --kd-weight W
    sets KD's temperature and weight (CE stays 0.1); for DKD it sets T and multiplies ALPHA 1 and BETA (the log's
    third value, else the pair file's mdistiller BETA) by W (tools/train.py l.110-121)."""
    expected = {}
    for name in LS_LOGS:
        method, teacher, student, temperature, weight, *beta = name.split(",")
        t, w = float(temperature), float(weight)
        if method == "kd":
            keys = {"kd.temperature": t, "kd.kd_weight": w, "kd.ce_weight": 0.1}
        else:
            pair = next(p for p in PAIRS if load_pair(p)[:2] == (teacher, student))
            b = float(beta[0]) if beta else load_pair(pair)[2]
            keys = {"dkd.temperature": t, "dkd.alpha": w, "dkd.beta": b * w, "dkd.ce_weight": 1.0, "dkd.warmup": 20}
        expected[method, teacher, student] = keys
    return expected


def load_pair(pair):
    cfg = load_config(KDConfig, CIFAR / f"{pair}.yaml")
    return cfg.teacher.arch, cfg.student.arch, cfg.dkd.beta


@pytest.mark.parametrize("recipe", ["kd_ls", "dkd_ls"])
def test_each_logit_standardization_file_is_the_forks_logged_run(recipe):
    expected = ls_expectations()
    method = recipe[: -len("_ls")]
    files = recipe_files(recipe)
    assert len(files) == sum(1 for key in expected if key[0] == method) == 9
    for path in files:
        cfg = load_config(KDConfig, path)
        pair_cfg = load_config(KDConfig, CIFAR / path.name)
        assert (cfg.method, cfg.logit_standardization) == (method, True), path
        keys = expected[method, cfg.teacher.arch, cfg.student.arch]
        assert {key: value(cfg, key) for key in keys} == keys, path
        for key in ("optim.lr", "data.batch_size", "epochs", "optim.milestones", "optim.weight_decay"):
            assert value(cfg, key) == value(pair_cfg, key), (path, key)  # the fork's solver is mdistiller's
        kd, dkd = LS_PUBLISHED[cfg.teacher.arch, cfg.student.arch]
        assert PAPER_ROWS[cfg.paper_row].values[method] == {"top1": kd if method == "kd" else dkd}, path


@pytest.mark.parametrize("recipe", ["ikl_ls", "gkl_ls"])
def test_ikl_and_gkl_with_logit_standardization_are_the_forks_dkd_rule_on_every_pair(recipe):
    """New rows: the pair's IKL-KD (or GKL-KD) file with T 2 and both weights x9, no published number."""
    files = recipe_files(recipe)
    assert [p.stem for p in files] == PAIRS
    names = set()
    for path in files:
        cfg = load_config(KDConfig, path)
        plain = load_config(KDConfig, CIFAR / f"{path.stem}{'_gkl' if recipe == 'gkl_ls' else ''}.yaml")
        assert (cfg.method, cfg.logit_standardization, cfg.paper_row) == ("ikl", True, ""), path
        assert (cfg.ikl.alpha, cfg.ikl.beta, cfg.ikl.temperature) == (9 * plain.ikl.alpha, 9 * plain.ikl.beta, 2.0)
        for key in ("gamma", "prior_temperature", "class_prior", "warmup", "ce_weight"):
            assert getattr(cfg.ikl, key) == getattr(plain.ikl, key), (path, key)
        assert cfg.run_name() != plain.run_name()  # its own run folder
        names.add(cfg.run_name())
    assert len(names) == len(files)


def test_a_logit_standardized_run_has_a_folder_of_its_own():
    cfg = load_config(KDConfig, CIFAR / "kd_ls" / "res32x4_res8x4.yaml")
    assert cfg.run_name() == "cifar100_kd_ls_resnet32x4_resnet8x4_seed0"
    cfg.logit_standardization = False
    assert cfg.run_name() == "cifar100_kd_resnet32x4_resnet8x4_seed0"


def test_every_recipe_row_is_named_by_a_config_and_every_config_row_holds_its_method():
    named = set()
    for recipe in LOGIT_RECIPES:
        for path in recipe_files(recipe) + recipe_files(recipe, "imagenet"):
            cfg = load_config(KDConfig, path)
            if cfg.paper_row:
                assert cfg.method in PAPER_ROWS[cfg.paper_row].values, path
                named.add((cfg.paper_row, cfg.method))
    published = {
        (row, method)
        for row, entry in PAPER_ROWS.items()
        if row.endswith(("_dist", "_ls", "_mlkd", "_ctkd"))
        for method in entry.values
    }
    assert published == named  # no published number without the config that reproduces it


@pytest.mark.parametrize("recipe", LOGIT_RECIPES)
def test_a_file_of_each_recipe_takes_a_step(recipe):
    cfg = load_config(KDConfig, recipe_files(recipe)[0])
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher.arch, 100, dataset="cifar100").eval()
    student = build_model(cfg.student.arch, 100, dataset="cifar100")
    distiller = build_distiller(cfg)
    views = [torch.randn(4, 3, 32, 32) for _ in range(distiller.training_views)]
    targets = torch.randint(0, 100, (4,))
    prior = ClassPrior(100, temperature=cfg.ikl.prior_temperature)
    with torch.no_grad():
        logits_teacher = torch.cat([teacher(view) for view in views])
    logits_student = torch.cat([student(view) for view in views])
    loss, parts = distiller.loss(logits_student, logits_teacher, targets, epoch=30, prior_rows=prior.rows(targets))
    loss.backward()
    assert math.isfinite(loss.item()) and parts["kd"].item() > 0


def launch(*args):
    env = {**os.environ, "DKL_PYTHON": sys.executable}  # the running interpreter: no environment set-up
    return subprocess.run(["bash", str(ROOT / "sh" / "kd_cifar100.sh"), *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_the_launcher_runs_a_recipes_own_pairs_and_refuses_others():
    done = launch("dist", "--print-config")
    assert done.returncode == 0, done.stderr
    assert [line[len("# ---- dist ") :] for line in done.stdout.splitlines() if line.startswith("# ---- ")] == [
        p for p in PAIRS if p in DIST_CIFAR
    ]
    refused = launch("dist", "res110_res32")
    assert refused.returncode == 2
    assert "dist has no config for res110_res32" in refused.stderr and "res56_res20" in refused.stderr
