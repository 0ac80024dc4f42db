"""Every feature distiller trains on digits, stops after an epoch and resumes bit-exactly, its
trainable parts in last.pt and never in the exported student."""

import json
import shutil

import pytest
import torch

from engine.file_io import load_file
from knowledge_distillation.train import main
from models import build_model

from .test_kd_train import CONFIGS

METHODS = ["fitnet", "at", "nst", "pkt", "kdsvd", "ofd", "rkd", "vid", "sp", "crd", "reviewkd"]
TRAINS_PARTS = {"fitnet", "ofd", "vid", "crd", "reviewkd"}


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["--config", str(CONFIGS / "digits_teacher.yaml"), "epochs=1", f"out_dir={out}", "device=cpu"]) == 0
    return out / "digits_teacher" / "best.pt"


def run(teacher, out, method, name, *extra):
    return main(
        [
            "--config",
            str(CONFIGS / "digits_kd.yaml"),
            f"method={method}",
            f"teacher.checkpoint={teacher}",
            "teacher.report_accuracy=false",
            "crd.nce_k=64",
            "reviewkd.warmup=2",
            "epochs=2",
            "device=cpu",
            f"out_dir={out}",
            f"name={name}",
            *extra,
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(method, digits_teacher, tmp_path):
    assert run(digits_teacher, tmp_path, method, "straight") == 0
    assert run(digits_teacher, tmp_path, method, "stopped", "stop_after=1") == 0
    after_one = load_file(tmp_path / "stopped" / "last.pt")
    assert after_one["epoch"] == 1
    if method == "crd":  # the same file as written before distillers were saved under "method" resumes the same
        shutil.copytree(tmp_path / "stopped", tmp_path / "older")
        older = {key: value for key, value in after_one.items() if key != "method"}
        older.update(
            task="KDConfig", distiller=after_one["method"], best={"top1": after_one["best"]["value"], "epoch": 1}
        )
        torch.save(older, tmp_path / "older" / "last.pt")
        assert run(digits_teacher, tmp_path, method, "older", "resume=true") == 0
    assert run(digits_teacher, tmp_path, method, "stopped", "resume=true") == 0

    straight, resumed = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "stopped" / "last.pt")
    if method == "crd":
        older = load_file(tmp_path / "older" / "last.pt")
        assert older["best"] == resumed["best"] and older["task"] == "knowledge_distillation"
        for key in ("model", "method"):
            assert all(torch.equal(value, older[key][name]) for name, value in resumed[key].items()), key
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    if method in TRAINS_PARTS:
        parts = straight["method"]
        assert parts and set(parts) == set(resumed["method"])
        for key, value in parts.items():
            assert torch.equal(value, resumed["method"][key]), key
        # The parts trained: epoch 2 moved them.
        moved = [k for k, v in parts.items() if v.is_floating_point() and not torch.equal(v, after_one["method"][k])]
        assert moved, "the distiller's parameters did not change in epoch 2"
    else:
        assert straight["method"] is None  # nothing to save
    for first, second in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(first["momentum_buffer"], second["momentum_buffer"])
    metrics = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["train_loss_kd"] > 0

    # The exported student (best.pt) is the student alone: it loads strictly into the bare architecture.
    best = load_file(tmp_path / "straight" / "best.pt")["model"]
    build_model("digits_cnn_small", 10).load_state_dict(best)
