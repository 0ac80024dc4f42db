"""Run pictures: curves.png from metrics.jsonl of adversarial-training and distillation runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import UserError
from engine.plot import main, panel_of, plot_run, plot_runs, read_run, series

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXELS = (1000, 320)  # 10×3.2 inches at 100 dpi


def _write_metrics(run_dir: Path, records) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    # json.dumps writes NaN as the bare token NaN, as RunLogger does.
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return run_dir


def at_run(run_dir: Path, epochs: int = 5, robust_gain: float = 4.0) -> Path:
    """What adv_training.train logs, with the test metrics every second epoch and one NaN."""
    records = []
    for epoch in range(1, epochs + 1):
        record = {
            "epoch": epoch,
            "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs)),
            "train_loss": 2.3 - 0.25 * epoch,
            "train_loss_natural": 1.8 - 0.2 * epoch,
            "train_loss_robust": 0.5 - 0.05 * epoch,
            "train_adv_acc": 15.0 + 5 * epoch,
            "train_clean_acc": 30.0 + 8 * epoch,
            "eps": min(epoch, 3) / 3 * 8 / 255,
            "attack_step_size": 2 / 255,
            "attack_steps": 10,
            "awp": False,
            "train_seconds": 12.5,
            "epoch_seconds": 14.0,
        }
        if epoch % 2 == 1 or epoch == epochs:
            record.update(
                {
                    "test_clean_acc": 35.0 + 7 * epoch,
                    "test_robust_acc": 10.0 + robust_gain * epoch,
                    "ema_test_clean_acc": 34.0 + 7 * epoch,
                    "ema_test_robust_acc": 11.0 + robust_gain * epoch,
                }
            )
        records.append(record)
    records[2]["train_loss_robust"] = float("nan")
    return _write_metrics(run_dir, records)


def kd_run(run_dir: Path, epochs: int = 5) -> Path:
    """A distillation run: CE and KD losses, top-1/top-5, no eps; one null accuracy."""
    records = [
        {
            "epoch": epoch,
            "lr": 0.05 if epoch < 4 else 0.005,
            "train_loss": 4.0 - 0.5 * epoch,
            "train_loss_ce": 3.0 - 0.4 * epoch,
            "train_loss_kd": 1.0 - 0.1 * epoch,
            "train_acc": 20.0 + 8 * epoch,
            "test_top1": 18.0 + 7 * epoch,
            "test_top5": 45.0 + 8 * epoch,
            "epoch_seconds": 30.0,
        }
        for epoch in range(1, epochs + 1)
    ]
    records[1]["test_top1"] = None
    return _write_metrics(run_dir, records)


def _check_png(path: Path, size=PIXELS) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize("make_run", [at_run, kd_run], ids=["adversarial-training", "distillation"])
def test_plot_run_writes_curves_png(tmp_path, make_run):
    run_dir = make_run(tmp_path / "run")
    written = plot_run(run_dir)
    assert written == run_dir / "curves.png"
    _check_png(written)
    assert sorted(p.name for p in run_dir.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_plot_run_to_another_file_and_overwrite(tmp_path):
    run_dir = at_run(tmp_path / "run")
    output = tmp_path / "figures" / "at.png"
    assert plot_run(run_dir, output) == output
    _check_png(output)
    first = output.read_bytes()
    at_run(run_dir, epochs=8, robust_gain=1.0)  # the run went on: other curves
    assert plot_run(run_dir, output) == output  # a second plot replaces the first
    _check_png(output)
    assert output.read_bytes() != first
    assert plot_run(run_dir, tmp_path / "fresh.png").read_bytes() == output.read_bytes()  # the new curves
    _no_temporaries(output.parent)
    assert not (run_dir / "curves.png").exists()


def test_panels_are_chosen_by_key_names():
    assert panel_of("train_loss") == panel_of("train_loss_robust") == panel_of("train_loss_kd") == "losses"
    for key in ["train_acc", "train_adv_acc", "test_robust_acc", "ema_test_clean_acc", "test_top1", "test_top5"]:
        assert panel_of(key) == "accuracy", key
    assert panel_of("lr") == panel_of("eps") == "schedule"
    for key in ["epoch", "attack_steps", "attack_step_size", "awp", "epoch_seconds", "train_seconds"]:
        assert panel_of(key) is None, key


def test_gaps_and_missing_values(tmp_path):
    records = read_run(kd_run(tmp_path / "kd"))
    epochs, values = series(records, "test_top1")
    assert epochs == [1, 2, 3, 4, 5] and math.isnan(values[1])  # null -> a gap
    records = read_run(at_run(tmp_path / "at"))
    assert series(records, "test_robust_acc")[0] == [1, 3, 5]  # epochs that logged it
    assert math.isnan(series(records, "train_loss_robust")[1][2])  # NaN stays a gap
    assert all(math.isnan(v) for v in series(records, "awp")[1])  # booleans are not curves


def test_a_half_written_last_line_is_ignored(tmp_path):
    run_dir = at_run(tmp_path / "run", epochs=3)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as stream:
        stream.write('{"epoch": 4, "lr": 0.0')  # a trainer in the middle of its append
    assert [r["epoch"] for r in read_run(run_dir)] == [1, 2, 3]
    _check_png(plot_run(run_dir))


def test_a_broken_line_in_the_middle_is_reported(tmp_path):
    run_dir = at_run(tmp_path / "run", epochs=3)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="line 2"):
        plot_run(run_dir)


def test_missing_or_empty_metrics_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no epochs"):
        plot_run(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        plot_run(tmp_path / "absent")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_plot_runs_compares_in_one_figure(tmp_path):
    runs = [at_run(tmp_path / "ikl_at"), at_run(tmp_path / "trades", robust_gain=3.0), kd_run(tmp_path / "kd")]
    output = plot_runs(runs, tmp_path / "compare.png")
    _check_png(output)
    _no_temporaries(tmp_path)


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path, monkeypatch):
    import engine.plot

    labels, original = [], engine.plot._plot
    monkeypatch.setattr(
        engine.plot, "_plot", lambda ax, xy, label, **style: labels.append(label) or original(ax, xy, label, **style)
    )
    plot_runs([at_run(tmp_path / "a" / "seed0"), at_run(tmp_path / "b" / "seed0")], tmp_path / "c.png")
    assert "a/seed0: train_loss" in labels and "b/seed0: train_loss" in labels


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "engine.plot", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_cli(tmp_path):
    first, second = at_run(tmp_path / "ikl_at"), kd_run(tmp_path / "kd")
    output = tmp_path / "out" / "comparison.png"
    result = _cli(first, second, "-o", output)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    _check_png(output)

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli(empty)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "no metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr

    for folder in [tmp_path, tmp_path / "out", first, second, empty]:
        _no_temporaries(folder)
    assert sorted(p.name for p in empty.iterdir()) == []


def test_cli_defaults(tmp_path, capsys):
    # In-process: the subprocess test above already covers the entry point itself.
    first, second = at_run(tmp_path / "ikl_at"), kd_run(tmp_path / "kd")
    assert main([str(first)]) == 0  # one run, no -o: RUN/curves.png
    assert capsys.readouterr().out.strip() == str(first / "curves.png")
    _check_png(first / "curves.png")

    assert main([str(first), str(second)]) == 2  # several runs need -o
    assert "-o FILE" in capsys.readouterr().err
    assert main([str(first), "-o", str(tmp_path / "plot.jpeg.unknown")]) == 2
    assert ".png" in capsys.readouterr().err
    assert main([str(first), "-o", str(tmp_path / "plot.svg")]) == 0
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")
