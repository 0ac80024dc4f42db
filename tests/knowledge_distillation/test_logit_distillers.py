"""DIST, MLKD, CTKD and logit standardization: the losses against their authors' code on fixed inputs (golden
values: tests/golden/logit_distillers.json, made by tests/golden/logit_distillers_golden.py.txt from hunto's
dist_kd.py, MLKD's KD_ours.py, and the logit-standardization fork's KD.py, DKD.py, MLKD.py and CTKD files), hand
cases, the distillers in the trainer, 2-epoch digits runs stopped and resumed, and bad values."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.config import ConfigError, load_config
from engine.file_io import load_file
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import build_distiller
from knowledge_distillation.train import main
from losses import (
    batch_correlation_loss,
    class_correlation_loss,
    dist_loss,
    dkd_loss,
    kd_loss,
    logit_standardize,
    mlkd_loss,
)
from losses.mlkd import at_most_median_fraction

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"
GOLDEN = ROOT / "tests" / "golden" / "logit_distillers.json"


def fixed_logits():
    """The golden recipe's inputs (logit_distillers_golden.py.txt `inputs`)."""
    generator = torch.Generator().manual_seed(20241207)
    student = 3 * torch.randn(8, 10, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(8, 10, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 10, (8,), generator=generator)
    return student, teacher, targets


def z(logits):
    return logit_standardize(logits)


CASES = {
    "dist_tau1": lambda s, t, y: dist_loss(s, t, beta=1.0, gamma=1.0, temperature=1.0),
    "dist_tau4_b2_g05": lambda s, t, y: dist_loss(s, t, beta=2.0, gamma=0.5, temperature=4.0),
    "kd_t4": lambda s, t, y: kd_loss(s, t, 4.0),
    "kd_ls_t2": lambda s, t, y: kd_loss(z(s), z(t), 2.0),
    "dkd_ls_t2_a9_b72": lambda s, t, y: dkd_loss(z(s), z(t), y, alpha=9.0, beta=72.0, temperature=2.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradient_equal_the_authors_code(name):
    golden = json.loads(GOLDEN.read_text())
    assert "d9662f7" in golden["source"] and "f6e5aa5" in golden["source"]
    student, teacher, targets = fixed_logits()
    student.requires_grad_(True)
    loss = CASES[name](student, teacher, targets)
    loss.backward()
    expected = golden["cases"][name]
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10, abs=1e-12)
    torch.testing.assert_close(student.grad, torch.tensor(expected["grad"], dtype=torch.float64), rtol=1e-8, atol=1e-12)


def fixed_views():
    """The golden recipe's MLKD inputs (logit_distillers_golden.py.txt `views`)."""
    generator = torch.Generator().manual_seed(20241208)
    student_weak, student_strong, teacher_weak, teacher_strong = (
        3 * torch.randn(8, 10, generator=generator, dtype=torch.float64) for _ in range(4)
    )
    targets = torch.randint(0, 10, (8,), generator=generator)
    return student_weak, student_strong, teacher_weak, teacher_strong, targets


MLKD_CASES = {  # (overrides of digits_kd.yaml, teacher rows all alike)
    "mlkd_t4": (["mlkd.temperature=4", "mlkd.ce_weight=0.1", "mlkd.kd_weight=0.9"], False),
    "mlkd_t4_ties": (["mlkd.temperature=4", "mlkd.ce_weight=0.1", "mlkd.kd_weight=0.9"], True),
    "mlkd_ls_t2_w9": (
        ["mlkd.temperature=2", "mlkd.ce_weight=0.1", "mlkd.kd_weight=9", "logit_standardization=true"],
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(MLKD_CASES))
def test_the_mlkd_distiller_equals_the_authors_training_loss(name):
    """Both views' CE and every KD, class and batch term, with their masks and their weak-view "strong" terms."""
    overrides, ties = MLKD_CASES[name]
    student_weak, student_strong, teacher_weak, teacher_strong, targets = fixed_views()
    if ties:
        teacher_weak = teacher_weak[:1].expand_as(teacher_weak).clone()
    student = torch.cat([student_weak, student_strong]).requires_grad_(True)
    distiller = build_distiller(kd_cfg("method=mlkd", *overrides))
    loss, parts = distiller.loss(student, torch.cat([teacher_weak, teacher_strong]), targets, epoch=1)
    loss.backward()
    expected = json.loads(GOLDEN.read_text())["cases"][name]
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)
    torch.testing.assert_close(student.grad, torch.tensor(expected["grad"], dtype=torch.float64), rtol=1e-8, atol=1e-12)
    assert (parts["ce"] + parts["kd"]).item() == pytest.approx(loss.item(), rel=1e-12)


def test_mlkd_correlations_and_masks_by_hand():
    p_t = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    p_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # classes: P^T P is [[1.25, .25], [.25, .25]] (teacher) and [[1, 0], [0, 1]] (student): squared differences
    # .0625 + .0625 + .0625 + .5625 = .75, over C = 2
    assert class_correlation_loss(p_s.log(), p_t.log(), 1.0).item() == pytest.approx(0.375, abs=1e-12)
    # samples: P P^T is [[.5, .5], [.5, 1]] and [[1, 0], [0, 1]]: .25 + .25 + .25 + 0 = .75, over B = 2
    assert batch_correlation_loss(p_s.log(), p_t.log(), 1.0).item() == pytest.approx(0.375, abs=1e-12)
    # numpy's median of 1..4 is 2.5: two of four at most it; of 1, 1, 1, 2 it is 1: three of four
    assert at_most_median_fraction(torch.tensor([4.0, 1.0, 3.0, 2.0])).item() == 0.5
    assert at_most_median_fraction(torch.tensor([1.0, 1.0, 2.0, 1.0])).item() == 0.75


CTKD_CASES = {  # overrides of digits_kd.yaml, the epoch
    "ctkd_t1_20_epoch5": (["ctkd.ce_weight=0.1", "ctkd.kd_weight=0.9"], 5),
    "ctkd_ls_t2_30_a9_epoch12": (
        ["ctkd.kd_weight=9", "ctkd.temperature_start=2", "ctkd.temperature_span=30", "logit_standardization=true"],
        12,
    ),
}


@pytest.mark.parametrize("name", sorted(CTKD_CASES))
def test_the_ctkd_loss_and_the_temperatures_reversed_gradient_equal_the_authors(name):
    overrides, epoch = CTKD_CASES[name]
    student, teacher, targets = fixed_logits()
    student.requires_grad_(True)
    distiller = build_distiller(kd_cfg("method=ctkd", "ctkd.curriculum_epochs=10", *overrides)).double()
    loss, _ = distiller.loss(student, teacher, targets, epoch=epoch)
    loss.backward()
    expected = json.loads(GOLDEN.read_text())["cases"][name]
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)
    torch.testing.assert_close(student.grad, torch.tensor(expected["grad"], dtype=torch.float64), rtol=1e-8, atol=1e-12)
    assert distiller.temperature_logit.grad.item() == pytest.approx(expected["grad_temperature"], rel=1e-8)


def test_ctkd_curriculum_and_temperature_by_hand():
    distiller = build_distiller(kd_cfg("method=ctkd", "ctkd.curriculum_epochs=10", "ctkd.max_reversal=1"))
    # their CosineDecay(0, -1, 10).get_value(e), negated: (1 - cos(pi e / 10)) / 2, then 1
    assert [round(distiller.reversal(e), 5) for e in (1, 5, 10, 11, 240)] == [0.02447, 0.5, 1.0, 1.0, 1.0]
    assert distiller.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # p = 1 at start
    # the temperature's gradient is the loss's times -lambda: it climbs what the student descends
    student, teacher, targets = fixed_logits()
    grads = []
    for epoch in (0, 5):
        distiller.zero_grad()
        loss, _ = distiller.double().loss(student, teacher, targets, epoch=epoch)
        temperature = distiller.settings.temperature_start + distiller.settings.temperature_span * torch.sigmoid(
            distiller.temperature_logit
        )
        (plain,) = torch.autograd.grad(
            0.9 * kd_loss(student, teacher, temperature), distiller.temperature_logit, retain_graph=True
        )
        loss.backward()
        grads.append((distiller.temperature_logit.grad.item(), plain.item()))
    assert grads[0][0] == 0.0  # epoch 0: no gradient reaches the temperature
    assert grads[1][0] == pytest.approx(-0.5 * grads[1][1], rel=1e-10)


def test_logit_standardization_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]], dtype=torch.float64)
    # row 1: mean 2, unbiased std 1; row 2: mean 12, unbiased std sqrt((4 + 4 + 16) / 2) = sqrt(12)
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]], dtype=torch.float64)
    expected /= torch.tensor([[1.0 + 1e-7], [12**0.5 + 1e-7]], dtype=torch.float64)
    torch.testing.assert_close(logit_standardize(logits), expected, rtol=0, atol=1e-15)
    # shifting and scaling a row's logits changes nothing: the point of the z-score
    torch.testing.assert_close(logit_standardize(5 * logits + 7), logit_standardize(logits), rtol=1e-6, atol=1e-6)


def test_dist_by_hand():
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], dtype=torch.float64)
    student = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]], dtype=torch.float64)

    def pearson(a, b):  # written out: the centred vectors' cosine, 1e-8 added to the product of their norms
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm() + 1e-8))

    inter = 1 - sum(pearson(student[i], teacher[i]) for i in range(2)) / 2  # each sample, over the classes
    intra = 1 - sum(pearson(student[:, c], teacher[:, c]) for c in range(3)) / 3  # each class, over the batch
    value = dist_loss(student.log(), teacher.log(), beta=2.0, gamma=3.0)  # tau 1: softmax(log p) = p
    assert value.item() == pytest.approx(2 * inter + 3 * intra, abs=1e-12)
    assert dist_loss(teacher.log(), teacher.log()).item() == pytest.approx(0.0, abs=1e-6)  # identical: correlations 1


def kd_cfg(*overrides):
    return load_config(KDConfig, CONFIGS / "digits_kd.yaml", list(overrides))


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "ctkd", "ikl"])
def test_with_logit_standardization_every_distiller_compares_z_scored_logits_and_ce_keeps_the_raw(method):
    student, teacher, targets = fixed_logits()
    plain = build_distiller(kd_cfg(f"method={method}", "ikl.warmup=0", "dkd.warmup=0")).double()
    standardized = build_distiller(
        kd_cfg(f"method={method}", "ikl.warmup=0", "dkd.warmup=0", "logit_standardization=true")
    ).double()
    loss, parts = standardized.loss(student, teacher, targets, epoch=1)
    plain_loss, plain_parts = plain.loss(z(student), z(teacher), targets, epoch=1)
    assert parts["kd"].item() == pytest.approx(plain_parts["kd"].item(), rel=1e-12)
    ce_weight = getattr(kd_cfg(), method).ce_weight
    assert parts["ce"].item() == pytest.approx(ce_weight * F.cross_entropy(student, targets).item(), rel=1e-12)


def test_with_logit_standardization_mlkd_z_scores_its_kd_terms_only():
    """The fork's MLKD: the KD terms compare z-scores; the class and batch terms and the masks the raw logits."""
    student_weak, student_strong, teacher_weak, teacher_strong, targets = fixed_views()
    views = dict(student=torch.cat([student_weak, student_strong]), teacher=torch.cat([teacher_weak, teacher_strong]))
    _, parts = build_distiller(kd_cfg("method=mlkd", "logit_standardization=true")).loss(
        views["student"], views["teacher"], targets, epoch=1
    )
    _, plain = build_distiller(kd_cfg("method=mlkd")).loss(z(views["student"]), z(views["teacher"]), targets, epoch=1)
    assert parts["kd"].item() != pytest.approx(plain["kd"].item(), rel=1e-3)  # not every term z-scored


# --- a run, bad values -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ("method=dist",),
        ("method=ikl", "ikl.class_prior=true", "logit_standardization=true"),
        ("method=mlkd", "logit_standardization=true"),
        ("method=ctkd", "ctkd.curriculum_epochs=2"),
    ],
)
def test_two_digits_epochs_stopped_and_resumed_equal_an_uninterrupted_run(extra, tmp_path):
    teacher_out = tmp_path / "teacher"
    assert (
        main(["--config", str(CONFIGS / "digits_teacher.yaml"), "epochs=1", f"out_dir={teacher_out}", "device=cpu"])
        == 0
    )

    def run(name, *more):
        return main(
            [
                "--config", str(CONFIGS / "digits_kd.yaml"), *extra, "epochs=2", "device=cpu", f"out_dir={tmp_path}",
                f"teacher.checkpoint={teacher_out / 'digits_teacher' / 'best.pt'}", "teacher.report_accuracy=false",
                f"name={name}", *more,
            ]
        )  # fmt: skip

    assert run("straight") == 0 and run("split", "stop_after=1") == 0 and run("split", "resume=true") == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert all(torch.equal(value, split["model"][key]) for key, value in straight["model"].items())
    assert torch.equal(straight["prior"]["prior"], split["prior"]["prior"])
    assert all(torch.equal(value, split["method"][key]) for key, value in (straight.get("method") or {}).items())
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["train_loss_kd"] > 0 for record in records)
    if "method=ctkd" in extra:  # the temperature trained, and resumed with the student
        assert "temperature_logit" in straight["method"] and straight["method"]["temperature_logit"].item() != 1.0
        assert [r["ctkd_reversal"] for r in records] == pytest.approx([0.5, 1.0])
        assert records[-1]["ctkd_temperature"] == pytest.approx(
            1 + 20 / (1 + math.exp(-straight["method"]["temperature_logit"].item())), rel=1e-6
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dist.temperature=0"], "dist.temperature"),
        (["dist.kd_weight=-1"], "dist.kd_weight"),
        (["dist.beta=-1"], "dist.beta"),
        (["dist.gamma=-1"], "dist.gamma"),
        (["logit_standardization=sometimes"], "logit_standardization"),
        (["mlkd.temperature=0"], "mlkd.temperature"),
        (["mlkd.kd_weight=-1"], "mlkd.kd_weight"),
        (["mlkd.ce_weight=-0.1"], "mlkd.ce_weight"),
        (["ctkd.temperature_start=0"], "ctkd.temperature_start"),
        (["ctkd.temperature_span=-1"], "ctkd.temperature_span"),
        (["ctkd.curriculum_epochs=0"], "ctkd.curriculum_epochs"),
        (["ctkd.max_reversal=-1"], "ctkd.max_reversal"),
        (["ctkd.kd_weight=-1"], "ctkd.kd_weight"),
        (["ctkd.temperature=4"], "ctkd.temperature"),
        (["optim.batchnorm_weight_decay=maybe"], "optim.batchnorm_weight_decay"),
    ],
)
def test_bad_values_of_the_new_knobs_end_in_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        kd_cfg(*overrides)


def test_with_batchnorm_groups_the_batch_coupled_terms_are_averaged_over_the_groups():
    """As the authors' replicas computed DIST's intra-class term and MLKD's correlations: one share of the batch each."""
    student, teacher, targets = fixed_logits()
    distiller = build_distiller(kd_cfg("method=dist", "dist.temperature=4"))
    distiller.loss_groups = 2
    _, parts = distiller.loss(student, teacher, targets, epoch=1)
    halves = [dist_loss(s, t, temperature=4.0) for s, t in zip(student.chunk(2), teacher.chunk(2))]
    assert parts["kd"].item() == pytest.approx(2.0 * (halves[0] + halves[1]).item() / 2, rel=1e-12)
    assert parts["kd"].item() != pytest.approx(2.0 * dist_loss(student, teacher, temperature=4.0).item(), rel=1e-3)
    student_weak, student_strong, teacher_weak, teacher_strong, targets = fixed_views()
    mlkd = build_distiller(kd_cfg("method=mlkd"))
    mlkd.loss_groups = 2
    _, parts = mlkd.loss(
        torch.cat([student_weak, student_strong]), torch.cat([teacher_weak, teacher_strong]), targets, epoch=1
    )
    views = [v.chunk(2) for v in (student_weak, student_strong, teacher_weak, teacher_strong)]
    expected = sum(mlkd_loss(*(v[g] for v in views), temperature=4.0) for g in range(2)) / 2
    assert parts["kd"].item() == pytest.approx(0.9 * expected.item(), rel=1e-12)


def test_the_trainer_sets_the_loss_groups_from_batchnorm_groups():
    from knowledge_distillation.train import build_distillation

    cfg = kd_cfg("method=dist", "batchnorm_groups=4", "device=cpu")
    kd = build_distillation(cfg, 10, torch.device("cpu"), teacher=None)
    assert kd.distiller.loss_groups == 4


@pytest.mark.parametrize("method", ["vanilla", "fitnet"])
def test_logit_standardization_on_a_method_without_a_logit_term_is_one_message(method):
    from knowledge_distillation.distillers import check_distiller

    with pytest.raises(ConfigError, match="config key 'logit_standardization'.*set logit_standardization=false"):
        check_distiller(kd_cfg(f"method={method}", "logit_standardization=true"))


def test_a_paper_row_of_the_other_setting_of_logit_standardization_is_one_message():
    with pytest.raises(
        ConfigError, match=r"config key 'paper_row' \(kd_cifar100_res32x4_res8x4\) names numbers published without"
    ):
        load_config(KDConfig, CONFIGS / "cifar100" / "res32x4_res8x4.yaml", ["method=kd", "logit_standardization=true"])
    with pytest.raises(ConfigError, match="names numbers published with logit standardization"):
        load_config(KDConfig, CONFIGS / "cifar100" / "kd_ls" / "res32x4_res8x4.yaml", ["logit_standardization=false"])
    cfg = load_config(
        KDConfig, CONFIGS / "cifar100" / "kd_ls" / "res32x4_res8x4.yaml", ["logit_standardization=false", "paper_row="]
    )
    assert not cfg.logit_standardization
