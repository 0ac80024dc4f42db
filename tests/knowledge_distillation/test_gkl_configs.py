"""The GKL-KD configs (configs/knowledge_distillation/{cifar100,imagenet}/*_gkl.yaml) resolve to the
authors' DKLv2 settings, their launchers print them, and the IKL distiller built from one computes the
DKLv2 GKL loss.

The expected values are literals copied from jiequancui/DKL (c5e8ad2) ``DKLv2/KD-dkl/``: the file named
beside each of ours, and for the keys a file does not set ``mdistiller/engine/cfg.py``'s CFG.GKL_KD
defaults (WARMUP 5, CE_WEIGHT 1.0, T 1.0; every CIFAR-100 file sets T 4.0 and WARMUP 20, no file sets
CE_WEIGHT). Their SOLVER keys map to ours as BATCH_SIZE -> data.batch_size, EPOCHS -> epochs, LR ->
optim.lr, LR_DECAY_STAGES -> optim.milestones, LR_DECAY_RATE -> optim.decay, WEIGHT_DECAY ->
optim.weight_decay, MOMENTUM -> optim.momentum; GKL_KD's ALPHA, BETA, T, T2, GAMMA, GI, WARMUP ->
ikl.alpha, beta, temperature, prior_temperature, gamma, class_prior, warmup."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine.config import load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import build_distiller
from knowledge_distillation.paper_rows import PAPER_ROWS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"

KEYS = (
    "teacher.arch",
    "student.arch",
    "optim.lr",
    "data.batch_size",
    "epochs",
    "optim.milestones",
    "optim.decay",
    "optim.weight_decay",
    "optim.momentum",
    "ikl.ce_weight",
    "ikl.alpha",
    "ikl.beta",
    "ikl.temperature",
    "ikl.prior_temperature",
    "ikl.gamma",
    "ikl.class_prior",
    "ikl.warmup",
)
_C = [150, 180, 210]  # every CIFAR-100 file's LR_DECAY_STAGES
_I = [30, 60, 90]  # both ImageNet files'
# our file: (DKLv2/KD-dkl/ file, its values in the order of KEYS)
# fmt: off
GKL_FILES = {
    "cifar100/res56_res20_gkl.yaml": ("cifar100_config_gkl/res56_res20.yaml", (
        "resnet56", "resnet20", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 4.0, 4.0, 4.0, 0.2, True, 20)),
    "cifar100/res110_res32_gkl.yaml": ("cifar100_config_gkl/res110_res32.yaml", (
        "resnet110", "resnet32", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 4.0, 4.0, 4.0, 0.1, False, 20)),
    "cifar100/res32x4_res8x4_gkl.yaml": ("cifar100_config_gkl/res32x4_res8x4.yaml", (
        "resnet32x4", "resnet8x4", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 16.0, 4.0, 4.0, 0.05, True, 20)),
    "cifar100/wrn40_2_wrn16_2_gkl.yaml": ("cifar100_config_gkl/wrn40_2_wrn_16_2.yaml", (
        "wrn_40_2", "wrn_16_2", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 3.0, 20.0, 4.0, 4.0, 0.3, False, 20)),
    "cifar100/wrn40_2_wrn40_1_gkl.yaml": ("cifar100_config_gkl/wrn40_2_wrn_40_1.yaml", (
        "wrn_40_2", "wrn_40_1", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 12.0, 4.0, 4.0, 0.3, False, 20)),
    "cifar100/vgg13_vgg8_gkl.yaml": ("cifar100_config_gkl/vgg13_vgg8.yaml", (
        "vgg13", "vgg8", 0.05, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 8.0, 4.0, 4.0, 0.2, True, 20)),
    "cifar100/res32x4_shuv1_gkl.yaml": ("cifar100_config_gkl/res32x4_shuv1.yaml", (
        "resnet32x4", "ShuffleV1", 0.01, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 8.0, 4.0, 4.0, 0.0, True, 20)),
    "cifar100/res32x4_shuv2_gkl.yaml": ("cifar100_config_gkl/res32x4_shuv2.yaml", (
        "resnet32x4", "ShuffleV2", 0.01, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 3.0, 12.0, 4.0, 4.0, 0.1, True, 20)),
    "cifar100/wrn40_2_shuv1_gkl.yaml": ("cifar100_config_gkl/wrn40_2_shuv1.yaml", (
        "wrn_40_2", "ShuffleV1", 0.01, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 8.0, 4.0, 4.0, 0.0, False, 20)),
    "cifar100/vgg13_mv2_gkl.yaml": ("cifar100_config_gkl/vgg13_mv2.yaml", (
        "vgg13", "MobileNetV2", 0.01, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 4.0, 12.0, 4.0, 4.0, 0.1, True, 20)),
    "cifar100/res50_mv2_gkl.yaml": ("cifar100_config_gkl/res50_mv2.yaml", (
        "ResNet50", "MobileNetV2", 0.01, 64, 240, _C, 0.1, 5e-4, 0.9, 1.0, 1.0, 8.0, 4.0, 4.0, 0.05, True, 20)),
    # no T, CE_WEIGHT or WARMUP in these two: cfg.py's 1.0, 1.0 and 5
    "imagenet/r34_r18_gkl.yaml": ("imagenet_config_gkl/r34_r18_gkl_kd.yaml", (
        "ResNet34", "ResNet18", 0.2, 512, 100, _I, 0.1, 1e-4, 0.9, 1.0, 1.0, 0.5, 1.0, 1.0, 0.6, True, 5)),
    "imagenet/r50_mv1_gkl.yaml": ("imagenet_config_gkl/r50_mv_gkl_kd.yaml", (
        "ResNet50", "MobileNetV1", 0.2, 512, 100, _I, 0.1, 1e-4, 0.9, 1.0, 4.0, 1.0, 1.0, 1.0, 0.5, True, 5)),
}
# fmt: on
# DKLv2/KD-dkl/sh/cifar100_gkl.sh's order, in our pair names; sh/kd_cifar100_gkl.sh runs them so.
LAUNCHER_ORDER = [
    "res32x4_res8x4",
    "res32x4_shuv1",
    "res32x4_shuv2",
    "res50_mv2",
    "res56_res20",
    "vgg13_mv2",
    "vgg13_vgg8",
    "wrn40_2_shuv1",
    "wrn40_2_wrn16_2",
    "wrn40_2_wrn40_1",
    "res110_res32",
]
# DKLv2/KD-dkl/README.md, ImageNet tables, the GKL-KD rows (no CIFAR-100 number is published).
PUBLISHED = {
    "imagenet/r34_r18_gkl.yaml": ("kd_imagenet_r34_r18_gkl", 71.91),
    "imagenet/r50_mv1_gkl.yaml": ("kd_imagenet_r50_mv1_gkl", 72.92),
}


def value(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part) if not isinstance(cfg, dict) else cfg[part]
    return cfg


def expected(file):
    return dict(zip(KEYS, GKL_FILES[file][1]))


def test_there_is_one_gkl_file_per_dklv2_file_and_the_pair_it_extends():
    found = {
        f"{p.parent.name}/{p.name}"
        for folder in ("cifar100", "imagenet")
        for p in (CONFIGS / folder).glob("*_gkl.yaml")
    }
    assert found == set(GKL_FILES)
    for file in GKL_FILES:
        pair_file = (CONFIGS / file).with_name(Path(file).name.replace("_gkl", ""))
        assert pair_file.is_file(), pair_file
        assert f"\nbase: {pair_file.name}\n" in (CONFIGS / file).read_text(encoding="utf-8")
    assert sorted(LAUNCHER_ORDER) == sorted(Path(f).stem[: -len("_gkl")] for f in GKL_FILES if f.startswith("cifar"))


@pytest.mark.parametrize("file", sorted(GKL_FILES))
def test_each_gkl_config_is_the_dklv2_file(file):
    cfg = load_config(KDConfig, CONFIGS / file)
    assert (cfg.method, cfg.data.dataset) == ("ikl", file.split("/")[0])
    assert {key: value(cfg, key) for key in KEYS} == expected(file)
    header = (CONFIGS / file).read_text(encoding="utf-8").split("\nbase:")[0]
    assert f"jiequancui/DKL DKLv2/KD-dkl/{GKL_FILES[file][0]}" in header.splitlines()[0], file
    distiller = build_distiller(cfg)  # what the trainer builds its ClassPrior from
    assert (distiller.uses_prior, distiller.prior_temperature) == (cfg.ikl.class_prior, cfg.ikl.prior_temperature)


def test_each_gkl_config_has_its_own_run_name_and_only_a_published_row():
    names = set()
    for file in GKL_FILES:
        cfg = load_config(KDConfig, CONFIGS / file)
        pair = load_config(KDConfig, (CONFIGS / file).with_name(Path(file).name.replace("_gkl", "")))
        assert cfg.run_name() != pair.run_name() and cfg.run_name() not in names, file
        names.add(cfg.run_name())
        row, top1 = PUBLISHED.get(file, ("", None))
        assert cfg.paper_row == row, file  # not the pair file's IKL-KD row: that is another setting
        if row:
            assert PAPER_ROWS[row].values == {"ikl": {"top1": top1}}
            assert PAPER_ROWS[row].source.startswith("jiequancui/DKL DKLv2/KD-dkl/README.md")


def gkl_by_hand(s, t, y, prior, *, ce_weight, alpha, beta, temperature, t2, gamma, gi, epoch, warmup):
    """DKLv2's GKL_KD.forward_train and dkl_loss written out in Python floats, one sample and class pair
    at a time: ce_weight * CE + min(epoch / warmup, 1) * (beta * wMSE + alpha * soft CE)."""

    def softmax(row, temp):
        top = max(row)
        e = [math.exp((v - top) / temp) for v in row]
        return [v / sum(e) for v in e]

    def log_softmax(row, temp):
        top = max(row)
        log_z = math.log(sum(math.exp((v - top) / temp) for v in row))
        return [(v - top) / temp - log_z for v in row]

    batch, classes = len(s), len(s[0])
    ce = -sum(log_softmax(s[b], 1.0)[y[b]] for b in range(batch)) / batch
    num = den = 0.0
    for b in range(batch):
        w = [p**gamma for p in (prior[y[b]] if gi else softmax(t[b], t2))]
        for j in range(classes):
            for k in range(classes):
                p_n = w[j] * w[k]
                num += p_n * ((t[b][j] - t[b][k]) - (s[b][j] - s[b][k])) ** 2
                den += p_n
    mse = 0.25 * num / den
    sce = 0.0
    for b in range(batch):
        target, log_q = softmax(t[b], temperature), log_softmax(s[b], temperature)
        sce -= sum(target[j] * log_q[j] for j in range(classes)) / batch
    return ce_weight * ce + min(epoch / warmup, 1.0) * (beta * mse + alpha * sce)


@pytest.mark.parametrize(
    "file, epoch",
    [
        ("imagenet/r50_mv1_gkl.yaml", 2),  # class prior, gamma 0.5, alpha 4, beta 1, T 1, in warm-up (2/5)
        ("cifar100/wrn40_2_wrn16_2_gkl.yaml", 30),  # per-sample weights at T2 4, gamma 0.3, alpha 3, beta 20
        ("cifar100/res32x4_shuv1_gkl.yaml", 7),  # gamma 0: uniform weights
    ],
)
def test_the_ikl_distiller_of_a_gkl_config_computes_the_dklv2_loss(file, epoch):
    cfg = load_config(KDConfig, CONFIGS / file)
    s = [[1.5, -0.3, 0.2], [0.1, 2.0, -1.2]]
    t = [[2.5, 0.4, -1.0], [-0.5, 1.1, 0.9]]
    y = [0, 2]
    prior = [[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.1, 0.3, 0.6]]  # rows of a class prior (each sums to 1)
    k = cfg.ikl
    want = gkl_by_hand(
        s,
        t,
        y,
        prior,
        ce_weight=k.ce_weight,
        alpha=k.alpha,
        beta=k.beta,
        temperature=k.temperature,
        t2=k.prior_temperature,
        gamma=k.gamma,
        gi=k.class_prior,
        epoch=epoch,
        warmup=k.warmup,
    )
    targets = torch.tensor(y)
    rows = torch.tensor(prior, dtype=torch.float64)[targets]  # ClassPrior.rows(targets)
    logits_student = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss, parts = build_distiller(cfg).loss(
        logits_student, torch.tensor(t, dtype=torch.float64), targets, epoch=epoch, prior_rows=rows
    )
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert (parts["ce"] + parts["kd"]).item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert logits_student.grad is not None and torch.isfinite(logits_student.grad).all()


def launch(script, *args, cwd):
    env = {**os.environ, "DKL_PYTHON": sys.executable}  # the running interpreter: no environment set-up
    return subprocess.run(["bash", str(ROOT / "sh" / script), *args], capture_output=True, text=True, env=env, cwd=cwd)


def printed_configs(stdout):
    """{pair: resolved config (a dict)} of a --print-config output with '# ---- PAIR' headers, in order."""
    sections = stdout.split("# ---- ")[1:]
    return {section.split("\n", 1)[0]: yaml.safe_load(section.split("\n", 1)[1]) for section in sections}


def test_the_cifar_launcher_runs_the_eleven_configs_in_order(tmp_path):
    """Without pairs it runs every GKL config in DKLv2's sh/cifar100_gkl.sh order. The interpreter is a
    stand-in that prints its arguments (no Python start per pair); the next test resolves real configs."""
    echo = tmp_path / "echo_python"
    echo.write_text('#!/usr/bin/env bash\necho "ARGS $*"\n')
    echo.chmod(0o755)
    env = {**os.environ, "DKL_PYTHON": str(echo)}
    result = subprocess.run(
        ["bash", str(ROOT / "sh" / "kd_cifar100_gkl.sh"), "seed=2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("ARGS ")]
    expected = [str(CONFIGS / "cifar100" / f"{pair}_gkl.yaml") for pair in LAUNCHER_ORDER]
    assert [run[:2] for run in runs] == [["-m", "knowledge_distillation.train"]] * 11
    assert [run[run.index("--config") + 1] for run in runs] == expected
    assert all(run[-1] == "seed=2" for run in runs)


@pytest.mark.slow
def test_the_cifar_launcher_runs_the_named_pairs_with_the_overrides(tmp_path):
    result = launch("kd_cifar100_gkl.sh", "vgg13_mv2", "res110_res32", "seed=3", "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = printed_configs(result.stdout)
    assert list(printed) == ["vgg13_mv2", "res110_res32"]
    assert [cfg["seed"] for cfg in printed.values()] == [3, 3]
    assert printed["res110_res32"]["ikl"]["beta"] == 4.0 and printed["vgg13_mv2"]["ikl"]["class_prior"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, file",
    [
        ("kd_imagenet_r34_r18_gkl.sh", "imagenet/r34_r18_gkl.yaml"),
        ("kd_imagenet_r50_mv1_gkl.sh", "imagenet/r50_mv1_gkl.yaml"),
    ],
)
def test_the_imagenet_launchers_print_their_resolved_config(script, file, tmp_path):
    result = launch(script, "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert {key: value(cfg, key) for key in KEYS} == expected(file)
    assert (cfg["method"], cfg["paper_row"]) == ("ikl", PUBLISHED[file][0])


@pytest.mark.parametrize("args", [["nosuch"], ["res56_res20", "res56_res20_gkl"], ["base"]])
def test_a_wrong_pair_prints_the_valid_names_and_exits_2(args, tmp_path):
    result = launch("kd_cifar100_gkl.sh", *args, "--print-config", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert f"no pair '{args[-1]}'" in result.stderr
    assert " ".join(LAUNCHER_ORDER) in result.stderr


def test_the_gkl_files_are_no_pairs_of_the_other_launchers(tmp_path):
    result = launch("kd_cifar100_ikl.sh", "res56_res20_gkl", cwd=tmp_path)
    assert result.returncode == 2 and "no pair 'res56_res20_gkl'" in result.stderr
    assert "_gkl" not in result.stderr.split("choose from:")[1]
    result = launch("kd_cifar100.sh", "ikl", "res56_res20_gkl", cwd=tmp_path)
    assert result.returncode == 2 and "no pair 'res56_res20_gkl'" in result.stderr
    assert "_gkl" not in result.stderr.split("PAIR:")[1]
