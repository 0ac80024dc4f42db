"""The feature distillers' configs (configs/knowledge_distillation/{cifar100,imagenet}/<method>/<pair>.yaml)
resolve to mdistiller's settings, name published rows that hold their method, and the launchers
sh/kd_cifar100.sh and sh/kd_imagenet.sh refuse wrong names and print a resolved config.

The expected values are literals copied from mdistiller (megvii-research/mdistiller a08d46f): the
files named beside them and ``mdistiller/engine/cfg.py`` (the defaults its files do not change)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.paper_rows import PAPER_ROWS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"
FEATURE_METHODS = ["fitnet", "at", "nst", "pkt", "kdsvd", "ofd", "rkd", "vid", "sp", "crd", "reviewkd"]

# mdistiller's configs/cifar100/dkd/<pair>.yaml (DISTILLER.TEACHER, DISTILLER.STUDENT, SOLVER.LR): the
# pair and its learning rate; its configs/cifar100/<method>.yaml have LR 0.05 for resnet32x4 -> resnet8x4.
CIFAR_PAIRS = {
    "res110_res32": ("resnet110", "resnet32", 0.05),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", 0.05),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1", 0.01),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2", 0.01),
    "res50_mv2": ("ResNet50", "MobileNetV2", 0.01),
    "res56_res20": ("resnet56", "resnet20", 0.05),
    "vgg13_mv2": ("vgg13", "MobileNetV2", 0.01),
    "vgg13_vgg8": ("vgg13", "vgg8", 0.05),
    "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1", 0.01),
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", 0.05),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 0.05),
}
# SOLVER of every configs/cifar100/<method>.yaml: BATCH_SIZE 64, EPOCHS 240, LR_DECAY_STAGES
# [150, 180, 210], LR_DECAY_RATE 0.1, WEIGHT_DECAY 0.0005, MOMENTUM 0.9.
CIFAR_SOLVER = {
    "data.batch_size": 64,
    "epochs": 240,
    "optim.milestones": [150, 180, 210],
    "optim.decay": 0.1,
    "optim.weight_decay": 5e-4,
    "optim.momentum": 0.9,
}
# cfg.py's CFG.<METHOD> defaults; configs/cifar100/reviewkd.yaml: REVIEWKD.REVIEWKD_WEIGHT 5.0.
CIFAR_METHOD = {
    "fitnet": {"ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": 2},
    "at": {"ce_weight": 1.0, "feat_weight": 1000.0, "p": 2.0},
    "nst": {"ce_weight": 1.0, "feat_weight": 50.0},
    "pkt": {"ce_weight": 1.0, "feat_weight": 30000.0},
    "kdsvd": {"ce_weight": 1.0, "feat_weight": 1.0, "k": 1},
    "ofd": {"ce_weight": 1.0, "feat_weight": 0.001, "kernel_size": 1},
    "rkd": {
        "ce_weight": 1.0,
        "feat_weight": 1.0,
        "distance_weight": 25.0,
        "angle_weight": 50.0,
        "eps": 1e-12,
        "squared": False,
    },
    "vid": {"ce_weight": 1.0, "feat_weight": 1.0, "eps": 1e-5, "init_pred_var": 5.0},
    "sp": {"ce_weight": 1.0, "feat_weight": 3000.0},
    "crd": {
        "ce_weight": 1.0,
        "feat_weight": 0.8,
        "mode": "exact",
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_momentum": 0.5,
        "nce_temperature": 0.07,
    },
    "reviewkd": {"ce_weight": 1.0, "reviewkd_weight": 5.0, "warmup": 20, "stu_preact": False, "max_mid_channel": 512},
}

# mdistiller's configs/imagenet/<pair>/<method>.yaml, key by key (SOLVER.BATCH_SIZE, SOLVER.LR and the
# method's section); all have EPOCHS 100, LR_DECAY_STAGES [30, 60, 90], LR_DECAY_RATE 0.1,
# WEIGHT_DECAY 0.0001, MOMENTUM 0.9, TEST.BATCH_SIZE 128.
IMAGENET_PAIRS = {"r34_r18": ("ResNet34", "ResNet18"), "r50_mv1": ("ResNet50", "MobileNetV1")}
IMAGENET_SOLVER = {
    "epochs": 100,
    "optim.milestones": [30, 60, 90],
    "optim.decay": 0.1,
    "optim.weight_decay": 1e-4,
    "optim.momentum": 0.9,
    "data.test_batch_size": 128,
}
IMAGENET_FILES = {
    ("at", "r34_r18"): {"data.batch_size": 512, "optim.lr": 0.2, "at.feat_weight": 1000.0, "at.p": 2.0},
    ("at", "r50_mv1"): {"data.batch_size": 512, "optim.lr": 0.2, "at.feat_weight": 1000.0, "at.p": 2.0},
    # crd.yaml: CRD.FEAT.STUDENT_DIM/TEACHER_DIM are the models' widths, read from them here
    ("crd", "r34_r18"): {"data.batch_size": 256, "optim.lr": 0.1, "crd.feat_weight": 0.8, "crd.feat_dim": 128},
    ("crd", "r50_mv1"): {"data.batch_size": 256, "optim.lr": 0.1, "crd.feat_weight": 0.8, "crd.feat_dim": 128},
    ("ofd", "r50_mv1"): {"data.batch_size": 128, "optim.lr": 0.05, "ofd.feat_weight": 1e-4},
    # not in mdistiller: its r34_r18 at/kd/dkd.yaml solver and its r50_mv1/ofd.yaml FEAT_WEIGHT
    ("ofd", "r34_r18"): {"data.batch_size": 512, "optim.lr": 0.2, "ofd.feat_weight": 1e-4},
    ("reviewkd", "r34_r18"): {
        "data.batch_size": 256,
        "optim.lr": 0.1,
        "reviewkd.ce_weight": 1.0,
        "reviewkd.reviewkd_weight": 1.0,
        "reviewkd.warmup": 1,
        "reviewkd.stu_preact": True,
        "reviewkd.max_mid_channel": 512,
    },
    ("reviewkd", "r50_mv1"): {
        "data.batch_size": 256,
        "optim.lr": 0.1,
        "reviewkd.ce_weight": 1.0,
        "reviewkd.reviewkd_weight": 8.0,
        "reviewkd.warmup": 1,
        "reviewkd.stu_preact": True,
        "reviewkd.max_mid_channel": 256,
    },
}


def value(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def feature_configs(dataset):
    """The feature distillers' files (the other folders are logit recipes: tests/knowledge_distillation/test_logit_recipes.py)."""
    return sorted(p for p in (CONFIGS / dataset).glob("*/*.yaml") if p.parent.name in FEATURE_METHODS)


def test_every_method_has_a_file_per_pair_and_nothing_else():
    cifar = {(p.parent.name, p.stem) for p in feature_configs("cifar100")}
    assert cifar == {(m, pair) for m in FEATURE_METHODS for pair in CIFAR_PAIRS}
    assert {(p.parent.name, p.stem) for p in feature_configs("imagenet")} == set(IMAGENET_FILES)


@pytest.mark.parametrize("path", feature_configs("cifar100"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_cifar_config_is_mdistillers_setting_for_its_pair(path):
    method, pair = path.parent.name, path.stem
    cfg = load_config(KDConfig, path)
    teacher, student, lr = CIFAR_PAIRS[pair]
    assert (cfg.method, cfg.data.dataset, cfg.teacher.arch, cfg.student.arch) == (method, "cifar100", teacher, student)
    assert cfg.optim.lr == lr
    assert {key: value(cfg, key) for key in CIFAR_SOLVER} == CIFAR_SOLVER
    section = getattr(cfg, method)
    assert {key: getattr(section, key) for key in CIFAR_METHOD[method]} == CIFAR_METHOD[method]


@pytest.mark.parametrize("path", feature_configs("imagenet"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_imagenet_config_is_mdistillers_file(path):
    method, pair = path.parent.name, path.stem
    cfg = load_config(KDConfig, path)
    assert (cfg.method, cfg.data.dataset) == (method, "imagenet")
    assert (cfg.teacher.arch, cfg.student.arch) == IMAGENET_PAIRS[pair]
    expected = {**IMAGENET_SOLVER, **IMAGENET_FILES[method, pair]}
    assert {key: value(cfg, key) for key in expected} == expected


def test_each_header_names_its_mdistiller_source():
    for path in feature_configs("cifar100"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert f"mdistiller's configs/cifar100/{path.parent.name}.yaml (a08d46f)" in first, path
    for path in feature_configs("imagenet"):
        head = path.read_text(encoding="utf-8").split("\nbase:")[0]
        source = f"configs/imagenet/{path.stem}/{path.parent.name}.yaml"
        assert source in head or (path.parent.name, path.stem) == ("ofd", "r34_r18"), path


def test_every_paper_row_holds_the_configs_method_and_every_feature_row_is_named():
    named = set()
    for path in feature_configs("cifar100") + feature_configs("imagenet"):
        cfg = load_config(KDConfig, path)
        if cfg.paper_row:
            assert cfg.method in PAPER_ROWS[cfg.paper_row].values, f"{path}: {cfg.paper_row}"
            named.add((cfg.paper_row, cfg.method))
    feature_rows = {
        (row, method) for row, entry in PAPER_ROWS.items() for method in entry.values if method in FEATURE_METHODS
    }
    assert feature_rows == named  # no published number without the config that reproduces it


def test_the_rows_hold_the_crd_authors_numbers():
    # HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100', the resnet32x4/resnet8x4
    # column of table 1 and the vgg13/MobileNetV2 column of table 2 (FitNet AT SP VID RKD PKT NST CRD).
    methods = ["fitnet", "at", "sp", "vid", "rkd", "pkt", "nst", "crd"]
    for row, numbers in [
        ("kd_cifar100_res32x4_res8x4_repdistiller", [73.50, 73.44, 72.94, 73.09, 71.90, 73.64, 73.30, 75.51]),
        ("kd_cifar100_vgg13_mv2_repdistiller", [64.14, 59.40, 66.30, 65.56, 64.52, 67.13, 58.16, 69.73]),
    ]:
        assert [PAPER_ROWS[row].values[m]["top1"] for m in methods] == numbers
        assert "HobbitLong/RepDistiller README.md" in PAPER_ROWS[row].source
    assert PAPER_ROWS["kd_imagenet_r34_r18_reviewkd"].values == {"reviewkd": {"top1": 71.61}}
    assert PAPER_ROWS["kd_imagenet_r50_mv1_reviewkd"].values == {"reviewkd": {"top1": 72.56}}
    assert "jiequancui/DKL DKLv1/KD-dkl/README.md" in PAPER_ROWS["kd_imagenet_r34_r18_reviewkd"].source


def launch(script, *args):
    env = {**os.environ, "DKL_PYTHON": sys.executable}  # the running interpreter: no environment set-up
    return subprocess.run(["bash", str(ROOT / "sh" / script), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "script, args, wrong",
    [
        ("kd_cifar100.sh", ["nosuch", "res32x4_res8x4"], "no method 'nosuch'"),
        ("kd_cifar100.sh", ["crd", "res32x4_res8x4", "nosuch"], "no pair 'nosuch'"),
        ("kd_cifar100.sh", ["--print-config"], "name a method"),
        ("kd_imagenet.sh", ["reviewkd"], "name a pair"),
        ("kd_imagenet.sh", ["fitnet", "r34_r18"], "no method 'fitnet'"),
    ],
)
def test_a_wrong_name_prints_the_usage_and_exits_2(script, args, wrong):
    result = launch(script, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert wrong in result.stderr and f"usage: bash sh/{script} METHOD" in result.stderr
    if script == "kd_cifar100.sh":
        assert "reviewkd" in result.stderr and "kd dkd ikl" in result.stderr and "wrn40_2_wrn40_1" in result.stderr
    else:
        assert "at crd ctkd dist mlkd ofd reviewkd" in result.stderr and "r34_r18 r50_mv1" in result.stderr


def test_the_launcher_prints_the_resolved_config_of_a_method_and_pair():
    result = launch("kd_cifar100.sh", "reviewkd", "res32x4_shuv2", "seed=3", "--print-config")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("# ---- reviewkd res32x4_shuv2\n")
    for line in ("method: reviewkd", "seed: 3", "arch: ShuffleV2", "reviewkd_weight: 5.0", "lr: 0.01"):
        assert f"\n{line}" in out or f"\n  {line}" in out, line
