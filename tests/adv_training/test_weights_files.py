"""The weights files of an adversarial-training run (best.pt, ema.pt, the per-epoch files, the epoch
average): one format, ``{"model", "epoch", <metric name>: value}``, keyed by the metric the run really
measured for those weights and, for best.pt, selected by (engine/checkpoint.py)."""

import json
from pathlib import Path

import pytest
import torch

from adv_training.train import main
from engine.file_io import load_file
from engine.run_folder import RunFolder

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "adv_training" / "digits_ikl.yaml"


def run(tmp_path, name, *extra):
    args = ["--config", str(CONFIG), "epochs=3", "eval.every=1", "eval.num_examples=60", "data.batch_size=256"]
    args += ["device=cpu", "ema.start_epoch=1"]
    assert main([*args, f"out_dir={tmp_path}", f"name={name}", *extra]) == 0
    folder = RunFolder(tmp_path / name)
    records = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    return folder, records, json.loads(folder.results.read_text())


def best_of(records, key):
    """The epoch whose ``key`` is largest, the earlier one on a tie, and that value."""
    best = max(records, key=lambda record: (record[key], -record["epoch"]))
    return best["epoch"], best[key]


@pytest.mark.slow
def test_without_the_pgd_monitor_best_pt_is_chosen_and_named_by_clean_accuracy(tmp_path):
    folder, records, results = run(tmp_path, "clean", "eval.pgd_steps=0", "save_every=1", "ema.enabled=true")
    assert all("test_robust_acc" not in record for record in records)
    epoch, value = best_of(records, "test_clean_acc")
    best = load_file(folder.best)
    assert set(best) == {"model", "epoch", "test_clean_acc"} and (best["epoch"], best["test_clean_acc"]) == (
        epoch,
        value,
    )
    assert (results["best_metric"], results["best_value"], results["best_epoch"]) == ("test_clean_acc", value, epoch)
    # the per-epoch files hold the model's numbers of their epoch, ema.pt the EMA's, the average its own
    for record in records:
        saved = load_file(folder.epoch_weights(record["epoch"]))
        assert saved.keys() == {"model", "epoch", "test_clean_acc"} and saved["epoch"] == record["epoch"]
        assert saved["test_clean_acc"] == record["test_clean_acc"]
    ema = load_file(folder.ema)
    assert ema == {**ema, "epoch": 3, "ema_test_clean_acc": records[-1]["ema_test_clean_acc"]}
    assert ema.keys() == {"model", "epoch", "ema_test_clean_acc"}
    average = load_file(folder.epoch_average(0.9, 1, 3))
    assert average.keys() == {"model", "epoch", "swa_test_clean_acc"} and average["epoch"] == 3
    assert average["swa_test_clean_acc"] == records[-1]["swa_test_clean_acc"]
    # the weights of best.pt are that epoch's model
    assert all(torch.equal(v, load_file(folder.epoch_weights(epoch))["model"][k]) for k, v in best["model"].items())


@pytest.mark.slow
def test_with_the_pgd_monitor_best_pt_is_chosen_and_named_by_robust_accuracy(tmp_path):
    folder, records, results = run(tmp_path, "robust", "eval.pgd_steps=2")
    epoch, value = best_of(records, "test_robust_acc")
    best = load_file(folder.best)
    assert best.keys() == {"model", "epoch", "test_robust_acc"} and (best["epoch"], best["test_robust_acc"]) == (
        epoch,
        value,
    )
    assert (results["best_metric"], results["best_value"], results["best_test_robust_acc"]) == (
        "test_robust_acc",
        value,
        value,
    )
