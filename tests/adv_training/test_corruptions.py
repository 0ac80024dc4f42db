"""Corruption robustness on CIFAR-10-C's published format (small files written here in exactly that
format: labels.npy and one [5 n, 32, 32, 3] uint8 <corruption>.npy per corruption, severities stacked),
against the accuracy computed image by image."""

import json

import numpy as np
import pytest
import torch

from adv_training.auto_attacks.corruptions import CORRUPTIONS, main
from models import build_model

PER_SEVERITY = 6


def write_cifar10_c(folder, per_severity=PER_SEVERITY, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = np.tile(rng.integers(0, 10, per_severity), 5).astype(np.uint8)  # the published labels are uint8
    np.save(folder / "labels.npy", labels)
    for name in CORRUPTIONS:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
    return folder


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("WideResNet", 10, depth=10, widen_factor=1)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_the_mean_over_75_sets_and_the_table_equal_the_image_by_image_accuracy(checkpoint, tmp_path):
    model, path = checkpoint
    folder = write_cifar10_c(tmp_path / "CIFAR-10-C")
    out = tmp_path / "c.json"
    argv = ["--arch", "WideResNet", "--depth", "10", "--widen_factor", "1", "--checkpoint", str(path)]
    assert (
        main([*argv, "--corruptions_dir", str(folder), "--batch_size", "4", "--device", "cpu", "--json", str(out)]) == 0
    )
    report = json.loads(out.read_text())

    labels = np.load(folder / "labels.npy")
    expected = {}
    with torch.no_grad():
        for name in CORRUPTIONS:
            images = np.load(folder / f"{name}.npy")
            row = []
            for severity in range(5):
                hits = 0
                for i in range(severity * PER_SEVERITY, (severity + 1) * PER_SEVERITY):
                    x = torch.tensor(images[i], dtype=torch.float32).permute(2, 0, 1)[None] / 255
                    hits += int(model(x).argmax().item() == int(labels[i]))
                row.append(100 * hits / PER_SEVERITY)
            expected[name] = row
    assert report["table"] == {name: pytest.approx(row, abs=0.01) for name, row in expected.items()}
    every = [value for row in expected.values() for value in row]
    assert report["corruptions_acc"] == pytest.approx(sum(every) / 75, abs=0.01)
    assert report["by_corruption"]["fog"] == pytest.approx(sum(expected["fog"]) / 5, abs=0.01)
    assert len(report["by_severity"]) == 5 and report["n_ex_per_severity"] == PER_SEVERITY
    assert report["corruptions"] == list(CORRUPTIONS) and len(CORRUPTIONS) == 15
    assert report["checkpoint_sha256"] and report["data"] == "cifar10"


def test_a_missing_folder_says_where_the_files_are_published(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    argv = ["--arch", "WideResNet", "--depth", "10", "--widen_factor", "1", "--checkpoint", str(path)]
    assert main([*argv, "--corruptions_dir", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "zenodo.org/record/2535967" in error and "--corruptions_dir" in error


def test_a_file_of_another_shape_is_refused_by_name(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    folder = write_cifar10_c(tmp_path / "CIFAR-10-C")
    np.save(folder / "fog.npy", np.zeros((5 * PER_SEVERITY, 3, 32, 32), dtype=np.uint8))  # channels first
    argv = ["--arch", "WideResNet", "--depth", "10", "--widen_factor", "1", "--checkpoint", str(path)]
    assert main([*argv, "--corruptions_dir", str(folder), "--device", "cpu", "--json", str(tmp_path / "c.json")]) == 2
    assert "fog.npy holds uint8 (30, 3, 32, 32)" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
