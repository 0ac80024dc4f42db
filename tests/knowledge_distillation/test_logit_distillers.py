"""DIST and logit standardization: the losses against their authors' code on fixed inputs (golden values:
tests/golden/logit_distillers.json, made by tests/golden/logit_distillers_golden.py.txt from hunto's
dist_kd.py and the logit-standardization fork's KD.py and DKD.py), hand cases, the distillers in the trainer,
a 2-epoch digits run stopped and resumed, and bad values."""

import json
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
from losses import dist_loss, dkd_loss, kd_loss, logit_standardize

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


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "ikl"])
def test_with_logit_standardization_every_distiller_compares_z_scored_logits_and_ce_keeps_the_raw(method):
    student, teacher, targets = fixed_logits()
    plain = build_distiller(kd_cfg(f"method={method}", "ikl.warmup=0", "dkd.warmup=0"))
    standardized = build_distiller(
        kd_cfg(f"method={method}", "ikl.warmup=0", "dkd.warmup=0", "logit_standardization=true")
    )
    loss, parts = standardized.loss(student, teacher, targets, epoch=1)
    plain_loss, plain_parts = plain.loss(z(student), z(teacher), targets, epoch=1)
    assert parts["kd"].item() == pytest.approx(plain_parts["kd"].item(), rel=1e-12)
    ce_weight = getattr(kd_cfg(), method).ce_weight
    assert parts["ce"].item() == pytest.approx(ce_weight * F.cross_entropy(student, targets).item(), rel=1e-12)


# --- a run, bad values -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [("method=dist",), ("method=ikl", "ikl.class_prior=true", "logit_standardization=true")]
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
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["train_loss_kd"] > 0 for record in records)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dist.temperature=0"], "dist.temperature"),
        (["dist.kd_weight=-1"], "dist.kd_weight"),
        (["dist.beta=-1"], "dist.beta"),
        (["dist.gamma=-1"], "dist.gamma"),
        (["logit_standardization=sometimes"], "logit_standardization"),
        (["optim.batchnorm_weight_decay=maybe"], "optim.batchnorm_weight_decay"),
    ],
)
def test_bad_values_of_the_new_knobs_end_in_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        kd_cfg(*overrides)
