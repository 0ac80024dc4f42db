"""How adversarial training fails and recovers: killed runs, damaged files, full disks, NaNs.

Digits runs (a small CNN, seconds per epoch) through the real entry point."""

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import engine.file_io as file_io
from adv_training.train import main
from engine.file_io import atomic_save, load_file

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "configs" / "adv_training" / "digits_ikl.yaml")


def digits_run(out_dir, *extra, name="run"):
    return [
        "--config",
        DIGITS,
        "epochs=2",
        "model.arch=digits_cnn_small",
        "eval.every=2",
        "eval.pgd_steps=2",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        *extra,
    ]


def results(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


def test_resuming_a_finished_or_nearly_finished_run_rebuilds_its_results(tmp_path, capsys):
    assert main(digits_run(tmp_path)) == 0
    run = tmp_path / "run"
    complete = results(run)
    assert complete["final"]["test_robust_acc"] >= 0 and complete["final"]["swa_test_robust_acc"] >= 0
    # killed after the last last.pt but before results.json
    (run / "results.json").unlink()
    assert main(digits_run(tmp_path, "resume=true")) == 0
    assert results(run) == complete
    # resumed after finishing
    assert main(digits_run(tmp_path, "resume=true")) == 0
    assert results(run) == complete and (run / "curves.png").is_file()


@pytest.mark.slow
def test_resume_removes_stale_temporaries_and_keeps_config_previous_only_for_real_changes(tmp_path):
    assert main(digits_run(tmp_path, "epochs=1")) == 0
    run = tmp_path / "run"
    stale = [run / ".last.pt.a1b2c3d4.tmp", run / ".metrics.jsonl.zz_9yy8x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert main(digits_run(tmp_path, "epochs=1", "resume=true")) == 0  # nothing changed
    assert not any(path.exists() for path in stale)
    assert not (run / "config.previous.yaml").exists()
    assert main(digits_run(tmp_path, "epochs=2", "resume=true")) == 0  # a real change: kept for the record
    assert "epochs: 1" in (run / "config.previous.yaml").read_text()


def test_run_files_get_the_permissions_of_a_plain_write(tmp_path):
    assert main(digits_run(tmp_path, "epochs=1")) == 0
    run = tmp_path / "run"
    for name in ("results.json", "last.pt", "config.yaml", "metrics.jsonl", "ours-model-epoch-SWA0.911.pt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~file_io._UMASK, name


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_ends_in_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    assert main(digits_run(tmp_path, name="straight")) == 0
    real_fsync, calls = file_io.os.fsync, {"last.pt": 0}

    def filling_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".last.pt."):
            calls["last.pt"] += 1
            if calls["last.pt"] == 2:  # epoch 2's last.pt
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(file_io.os, "fsync", filling_fsync)
    assert main(digits_run(tmp_path)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "could not write" in error and "last.pt: disk full" in error
    run = tmp_path / "run"
    assert load_file(run / "last.pt")["epoch"] == 1  # the previous one, intact
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(file_io.os, "fsync", real_fsync)  # space freed
    assert main(digits_run(tmp_path, "resume=true")) == 0
    assert load_file(run / "last.pt")["epoch"] == 2
    straight = load_file(tmp_path / "straight" / "last.pt")["model"]
    resumed = load_file(run / "last.pt")["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_an_unwritable_out_dir_ends_in_one_line_naming_it(code, cause, tmp_path, monkeypatch, capsys):
    def refusing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(file_io.tempfile, "mkstemp", refusing)
    assert main(digits_run(tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: could not write ") and str(tmp_path / "out" / "run") in error
    assert cause in error and error.count("\n") == 1


def test_a_nan_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path, monkeypatch, capsys):
    assert main(digits_run(tmp_path, "optim.lr=1e30", "epochs=1")) == 2
    error = capsys.readouterr().err
    assert "the training loss became" in error and "no epoch had finished" in error
    assert "holds epoch 0" not in error and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_a_cut_metrics_line_is_dropped_and_a_deleted_log_does_not_stop_resume(tmp_path, capsys):
    assert main(digits_run(tmp_path, "epochs=1")) == 0
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "a") as stream:
        stream.write('{"epoch": 2, "train_lo')  # a kill while epoch 2's line was written
    assert main(digits_run(tmp_path, "resume=true")) == 0
    assert "dropped the incomplete last line" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    assert main(digits_run(tmp_path, "epochs=1", name="second")) == 0
    (tmp_path / "second" / "metrics.jsonl").unlink()
    assert main(digits_run(tmp_path, "resume=true", name="second")) == 0
    assert "no curves.png" in capsys.readouterr().out
    assert results(tmp_path / "second")["final"]["test_robust_acc"] >= 0


def test_a_checkpoint_with_nan_weights_is_refused_by_name(tmp_path, capsys):
    assert main(digits_run(tmp_path, "epochs=1")) == 0
    run = tmp_path / "run"
    state = load_file(run / "best.pt")
    key = next(iter(state["model"]))
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    atomic_save(state, run / "best.pt")
    from adv_training.auto_attacks.eval import main as eval_main

    code = eval_main(
        [
            "--checkpoint",
            str(run),
            "--which",
            "best",
            "--data",
            "digits",
            "--n_ex",
            "4",
            "--log_path",
            str(tmp_path / "aa.log"),
            "--version",
            "custom",
            "--attacks",
            "apgd-ce",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and f"{run / 'best.pt'}: entry 'model.{key}'" not in error  # the state dict, not the wrapper
    assert str(run / "best.pt") in error and f"'{key}' holds NaN or inf" in error


def test_a_last_pt_with_nan_prior_rows_is_refused_in_one_line_and_left_as_it_was(tmp_path, capsys):
    assert main(digits_run(tmp_path, "epochs=1")) == 0
    run = tmp_path / "run"
    state = load_file(run / "last.pt")
    state["prior"]["prior"][1, 2] = float("nan")
    atomic_save(state, run / "last.pt")
    written = (run / "last.pt").read_bytes()
    assert main(digits_run(tmp_path, "resume=true")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run / 'last.pt'}: entry 'prior.prior' holds NaN or inf" in error
    assert (run / "last.pt").read_bytes() == written


def test_on_an_accelerator_a_nan_loss_stops_in_one_line_with_last_pt_intact(tmp_path, capsys, accelerator_checks):
    assert main(digits_run(tmp_path, "stop_after=1")) == 0
    run = tmp_path / "run"
    written = (run / "last.pt").read_bytes()
    assert main(digits_run(tmp_path, "resume=true", "optim.lr=1e30")) == 2  # diverges in epoch 2
    error = capsys.readouterr().err
    assert "the training loss became nan in epoch 2" in error and "last.pt still holds epoch 1" in error
    assert (run / "last.pt").read_bytes() == written
