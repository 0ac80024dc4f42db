"""The RobustBench submission kit (`python -m adv_training.export RUN --robustbench`): model-info entries in
RobustBench's schema from the run's own evaluations (matched by sha256), and its issue template filled in."""

import json
from datetime import datetime

import pytest
import torch

from adv_training.export import main as export_main
from adv_training.train import main as train_main
from engine.file_io import sha256_file
from models import build_model

pytestmark = pytest.mark.slow  # the module's fixture trains a run (about 4 s)

# The fields and value types of two RobustBench entries, read from RobustBench/robustbench:
# model_info/cifar10/Linf/Cui2023Decoupled_WRN-34-10.json (commit 6beba02) and
# model_info/cifar10/corruptions/Addepalli2022Efficient_WRN_34_10.json (commit 56365fd).
LINF_ENTRY = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "dataset": str,
    "venue": str,
    "architecture": str,
    "eps": str,
    "clean_acc": str,
    "reported": str,
    "autoattack_acc": str,
    "unreliable": bool,
}
CORRUPTIONS_ENTRY = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "dataset": str,
    "venue": str,
    "architecture": str,
    "eps": type(None),
    "clean_acc": str,
    "reported": str,
    "corruptions_acc": str,
}


@pytest.fixture(scope="module")
def run(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("kit")
    argv = [
        f"data.root={cifar10_root}",
        "data.dataset=cifar10",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=50",
        "model.arch=WideResNet",
        "model.depth=10",
        "model.widen_factor=1",
        "epochs=1",
        "device=cpu",
        f"out_dir={out}",
        "name=wrn",
        "eval.num_examples=50",
        "eval.pgd_steps=1",
        "awp.enabled=false",
        "ema.enabled=false",
        "epoch_average.enabled=false",
    ]
    assert train_main(argv) == 0
    return out / "wrn"


def write_reports(run, n_ex=10_000, per_severity=10_000):
    """What the evaluations write (their JSON fields), for these weights; written here so that the kit's
    reading is tested without a 10,000-image AutoAttack."""
    digest, now = sha256_file(run / "last.pt"), datetime.now().isoformat(timespec="seconds")
    common = {"checkpoint_file": str(run / "last.pt"), "checkpoint_sha256": digest, "which": "last", "finished": now}
    (run / "eval").mkdir(exist_ok=True)
    autoattack = {**common, "clean_acc": 80.25, "robust_acc": 41.5, "version": "standard", "norm": "Linf"}
    autoattack.update(epsilon=8 / 255, n_ex=n_ex)
    (run / "eval" / "autoattack.json").write_text(json.dumps(autoattack))
    corruptions = {**common, "corruptions_acc": 70.12, "n_ex_per_severity": per_severity, "data": "cifar10"}
    (run / "corruptions.json").write_text(json.dumps(corruptions))


def test_the_entries_have_robustbenchs_fields_and_the_runs_numbers(run, tmp_path, capsys):
    write_reports(run)
    out = tmp_path / "exports" / "wrn.pt"
    paper = ["--paper_title", "Decoupled Kullback-Leibler Divergence Loss", "--authors", "J. Cui et al."]
    argv = [str(run), "--which", "last", "--out", str(out), "--robustbench", *paper]
    assert export_main([*argv, "--paper_url", "https://arxiv.org/abs/2305.13948"]) == 0
    printed = capsys.readouterr().out

    linf = json.loads((tmp_path / "exports" / "wrn.robustbench_Linf.json").read_text())
    assert list(linf) == list(LINF_ENTRY)
    given = {key: value for key, value in linf.items() if value is not None}
    assert all(isinstance(value, LINF_ENTRY[key]) for key, value in given.items()), given
    assert set(linf) - set(given) == {"venue", "reported"}  # not given: left empty, not guessed
    assert (linf["clean_acc"], linf["autoattack_acc"], linf["eps"]) == ("80.25", "41.50", "8/255")
    assert (linf["architecture"], linf["dataset"], linf["number_forward_passes"]) == ("WideResNet-10-1", "cifar10", 1)
    assert linf["additional_data"] is False and linf["unreliable"] is False

    corruptions = json.loads((tmp_path / "exports" / "wrn.robustbench_corruptions.json").read_text())
    assert list(corruptions) == list(CORRUPTIONS_ENTRY)
    assert corruptions["corruptions_acc"] == "70.12" and corruptions["eps"] is None

    issue = (tmp_path / "exports" / "wrn.robustbench_issue.md").read_text()
    assert "- **Paper Title**: Decoupled Kullback-Leibler Divergence Loss" in issue
    assert "- **Threat Model**: Linf" in issue and "- **Robust accuracy**: 41.50%" in issue
    assert "## Model 2" in issue and "- **Threat Model**: Common Corruptions" in issue
    assert "- **Checkpoint and code**: (not given: pass --checkpoint_url)" in issue
    assert "not filled in: --venue" in printed and "not filled in: --reported" in printed


def test_a_partial_evaluation_fills_in_no_accuracy_and_says_why(run, tmp_path, capsys):
    write_reports(run, n_ex=1000, per_severity=500)
    out = tmp_path / "wrn.pt"
    assert export_main([str(run), "--which", "last", "--out", str(out), "--robustbench"]) == 0
    printed = capsys.readouterr().out
    linf = json.loads((tmp_path / "wrn.robustbench_Linf.json").read_text())
    assert linf["autoattack_acc"] is None and linf["clean_acc"] is None and linf["name"] is None
    assert "the AutoAttack report covers 1000 images, not all 10000" in printed
    assert not (tmp_path / "wrn.robustbench_corruptions.json").exists()
    assert "covers 500 images per severity" in printed


@pytest.mark.parametrize("n_ex, filled", [(450, True), (100, False)])
def test_an_evaluation_of_the_whole_digits_test_set_fills_in_the_quickstarts_kit(tmp_path, n_ex, filled):
    """The quickstart's AutoAttack covers digits' 450 test images: its whole test set, as 10,000 are CIFAR's."""
    run = tmp_path / "digits_ikl"
    run.mkdir()
    config = "method: ikl\nepochs: 30\nmodel:\n  arch: digits_cnn\ndata:\n  dataset: digits\n"
    (run / "config.yaml").write_text(config + "attack:\n  norm: linf\n  epsilon: 0.2\nswa:\n  tau: 0.9\n  start: 1\n")
    weights = run / "ours-model-epoch-SWA0.9130.pt"
    torch.save({"model": build_model("digits_cnn", 10).state_dict(), "epoch": 30}, weights)
    report = {"checkpoint_file": str(weights), "checkpoint_sha256": sha256_file(weights), "which": "swa"}
    report.update(clean_acc=97.5, robust_acc=61.25, version="standard", norm="Linf", epsilon=0.2, n_ex=n_ex)
    (run / "autoattack.json").write_text(json.dumps(report, indent=2) + "\n")
    assert export_main([str(run), "--out", str(tmp_path / "m.pt"), "--robustbench"]) == 0
    linf = json.loads((tmp_path / "m.robustbench_Linf.json").read_text())
    assert (linf["autoattack_acc"], linf["clean_acc"]) == (("61.25", "97.50") if filled else (None, None))


def deeply_nested(depth=100_000):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "field, value, text",
    [
        ("robust_acc", "fifty", "field 'robust_acc' must be a number in [0, 100], got 'fifty'"),
        ("clean_acc", {"value": 80}, "field 'clean_acc' must be a number in [0, 100]"),
        ("robust_acc", 150.0, "field 'robust_acc' must be a number in [0, 100], got 150.0"),
        ("epsilon", "8/255", "field 'epsilon' must be a positive number, got '8/255'"),
        ("n_ex", -3, "field 'n_ex' must be a positive integer"),
        ("version", 1, "field 'version' must be text"),
    ],
)
def test_a_damaged_report_is_refused_by_file_and_field_and_nothing_is_written(
    run, tmp_path, capsys, field, value, text
):
    write_reports(run)
    path = run / "eval" / "autoattack.json"
    report = json.loads(path.read_text())
    report[field] = value
    path.write_text(json.dumps(report))
    out = tmp_path / "exports" / "wrn.pt"
    try:
        assert export_main([str(run), "--which", "last", "--out", str(out), "--robustbench"]) == 2
    finally:
        write_reports(run)  # the module's run folder, as the other tests expect it
    error = capsys.readouterr().err
    assert f"{path}: {text}" in error and "Traceback" not in error
    assert not (tmp_path / "exports").exists() or not list((tmp_path / "exports").iterdir())


def test_a_deeply_nested_json_in_the_run_folder_is_not_a_report(run, tmp_path, capsys):
    write_reports(run)
    nested = run / "eval" / "nested.json"
    nested.write_text(deeply_nested())
    try:
        out = tmp_path / "wrn.pt"
        assert export_main([str(run), "--which", "last", "--out", str(out), "--robustbench"]) == 0
    finally:
        nested.unlink()
    assert json.loads((tmp_path / "wrn.robustbench_Linf.json").read_text())["autoattack_acc"] == "41.50"


def test_a_failure_while_writing_the_set_leaves_none_of_it(run, tmp_path, monkeypatch):
    import adv_training.export as export_module

    write_reports(run)
    real = export_module.atomic_write_text

    def failing(text, path):
        if str(path).endswith("robustbench_issue.md"):
            raise OSError("disk full")
        return real(text, path)

    monkeypatch.setattr(export_module, "atomic_write_text", failing)
    out = tmp_path / "set" / "wrn.pt"
    with pytest.raises(OSError, match="disk full"):
        export_module.export(run, "last", out, {})
    assert list((tmp_path / "set").iterdir()) == []
