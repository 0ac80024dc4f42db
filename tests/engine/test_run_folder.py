"""engine/run_folder.py's contracts: the name of every file of a run folder, which weights file stands for
a run (`RunFolder.weights`) in each situation, and how metrics.jsonl is read when a run was cut short."""

import os

import pytest

from engine.errors import UserError
from engine.run_folder import RunFolder

AVERAGE = "ours-model-epoch-SWA0.91200.pt"  # swa.py 0.9 1 200


def test_every_file_of_a_run_folder_has_its_name(tmp_path):
    folder = RunFolder(tmp_path / "run")
    names = {
        "config": "config.yaml",
        "previous_config": "config.previous.yaml",
        "environment": "environment.json",
        "metrics": "metrics.jsonl",
        "tensorboard": "tensorboard",
        "curves": "curves.png",
        "last": "last.pt",
        "best": "best.pt",
        "ema": "ema.pt",
        "results": "results.json",
    }
    assert {attribute: getattr(folder, attribute) for attribute in names} == {
        attribute: tmp_path / "run" / name for attribute, name in names.items()
    }
    assert folder.epoch_weights(7) == tmp_path / "run" / "ours-model-epoch7.pt"
    # the reference's '{}{}{}'.format(tau, start, end) of the parsed values: "0.90" and 1.0 read as 0.9 and 1
    assert folder.epoch_average(0.9, 1, 200).name == AVERAGE
    assert folder.epoch_average("0.90", 1.0, "200").name == AVERAGE
    assert folder.epoch_average(0.95, 150, 200).name == "ours-model-epoch-SWA0.95150200.pt"
    assert not folder.is_run()
    folder.path.mkdir()
    folder.config.write_text("epochs: 2\n")
    assert folder.is_run()


def touch(folder, *names, mtime=None):
    for name in names:
        path = folder.path / name
        path.write_bytes(b"")
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def test_the_weights_that_stand_for_a_run_are_the_average_then_the_ema_then_best(tmp_path):
    folder = RunFolder(tmp_path)
    touch(folder, "last.pt")
    with pytest.raises(UserError, match=r"holds no weights to evaluate .*pass --which last for last.pt"):
        folder.weights()  # last.pt alone never stands for a run: it is the resume state
    touch(folder, "best.pt")
    assert folder.weights() == (tmp_path / "best.pt", "best")
    touch(folder, "ema.pt")
    assert folder.weights() == (tmp_path / "ema.pt", "ema")
    touch(folder, AVERAGE)
    assert folder.weights() == (tmp_path / AVERAGE, "swa")
    assert folder.weights("swa") == (tmp_path / AVERAGE, "swa")


def test_the_average_the_config_names_wins_over_newer_ones_and_without_it_the_newest_counts(tmp_path):
    folder = RunFolder(tmp_path)
    touch(folder, AVERAGE, mtime=1e9)
    touch(folder, "ours-model-epoch-SWA0.8150200.pt", mtime=2e9)  # written later, by hand
    touch(folder, "ours-model-epoch-SWA0.7150200.pt", mtime=1.5e9)
    newest = tmp_path / "ours-model-epoch-SWA0.8150200.pt"
    assert folder.weights() == (newest, "swa")  # no config: the newest file
    # end: null is the last epoch
    folder.config.write_text("epochs: 200\nepoch_average: {enabled: true, tau: 0.9, start: 1, end: null}\n")
    assert folder.weights() == (tmp_path / AVERAGE, "swa") == folder.weights("swa")
    folder.config.write_text("epochs: 200\nepoch_average: {tau: 0.7, start: 150, end: 200}\n")
    assert folder.weights() == (tmp_path / "ours-model-epoch-SWA0.7150200.pt", "swa")
    folder.config.write_text("epochs: 200\nswa: {tau: 0.7, start: 150, end: 200}\n")  # the section's earlier name
    assert folder.weights() == (tmp_path / "ours-model-epoch-SWA0.7150200.pt", "swa")
    folder.config.write_text("epochs: 300\nepoch_average: {tau: 0.9, start: 1, end: null}\n")  # SWA0.91300: absent
    assert folder.weights() == (newest, "swa")
    folder.config.write_text("epochs: [unclosed\n")  # not YAML: the files decide
    assert folder.weights() == (newest, "swa")
    folder.config.write_text("epochs: 200\n")  # a config without the average (distillation's)
    assert folder.weights() == (newest, "swa")


def test_which_names_one_file_and_a_missing_one_is_an_error_that_lists_what_is_there(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(UserError, match=r"holds no ours-model-epoch-SWA\*\.pt; .*python -m adv_training.swa"):
        folder.weights("swa")
    with pytest.raises(UserError, match=r"best.pt does not exist \(--which best\); the run folder holds: no weights"):
        folder.weights("best")
    touch(folder, "last.pt", "best.pt", "ema.pt", AVERAGE)
    for which, name in (("ema", "ema.pt"), ("best", "best.pt"), ("last", "last.pt"), ("swa", AVERAGE)):
        assert folder.weights(which) == (tmp_path / name, which)
    (tmp_path / "ema.pt").unlink()
    with pytest.raises(UserError) as error:
        folder.weights("ema")
    assert str(error.value) == (
        f"{tmp_path / 'ema.pt'} does not exist (--which ema); the run folder holds: best.pt, last.pt, {AVERAGE}"
    )
    assert folder.weights() == (tmp_path / AVERAGE, "swa")


def records(*epochs):
    return "".join(f'{{"epoch": {epoch}, "train_loss": {epoch / 10}}}\n' for epoch in epochs)


def test_metrics_jsonl_is_read_line_by_line(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_metrics() == []  # no file yet
    folder.metrics.write_text(records(1, 2) + "\n" + '{"note": "no epoch"}\n' + records(3))
    assert folder.read_metrics() == [
        {"epoch": 1, "train_loss": 0.1},
        {"epoch": 2, "train_loss": 0.2},
        {"epoch": 3, "train_loss": 0.3},
    ]  # a blank line and a record without an epoch are skipped
    folder.append_metrics({"epoch": 4, "train_loss": 0.4})
    assert [record["epoch"] for record in folder.read_metrics()] == [1, 2, 3, 4]


def test_a_metrics_jsonl_cut_mid_line_drops_its_last_line_and_says_so(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics.write_text(records(1, 2) + '{"epoch": 3, "train_lo')  # a kill while epoch 3 was written
    said = []
    assert folder.read_metrics(log=said.append) == [{"epoch": 1, "train_loss": 0.1}, {"epoch": 2, "train_loss": 0.2}]
    assert said == [f"note: dropped the incomplete last line of {folder.metrics} (a run stopped while writing it)"]
    assert len(folder.read_metrics()) == 2  # without a log, dropped silently


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics.write_text(records(1) + '{"epoch": 2, "train_lo\n' + records(3))
    said = []
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2, is not JSON .*delete that line to continue"):
        folder.read_metrics(log=said.append)
    assert said == []
    folder.metrics.write_bytes(records(1).encode() + b'{"epoch": 2, "note": "\xff"}\n')  # byte 32 + 22
    with pytest.raises(UserError, match=r"is damaged \(not UTF-8 at byte 54\)"):
        folder.read_metrics()


def test_json_and_yaml_nested_past_pythons_stack_are_damaged_files_not_tracebacks(tmp_path):
    folder = RunFolder(tmp_path)
    nested = "[" * 100_000 + "]" * 100_000
    folder.results.write_text(nested)
    assert folder.read_results() is None and folder.results_damaged()
    folder.metrics.write_text(records(1) + nested + "\n" + records(2))
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2, is nested too deeply"):
        folder.read_metrics()
    folder.config.write_text(nested)
    with pytest.raises(UserError, match=r"config.yaml cannot be read \(RecursionError"):
        folder.read_config()
