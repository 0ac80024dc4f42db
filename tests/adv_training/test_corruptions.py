"""Corruption robustness on CIFAR-10-C's published format (small files written here in exactly that
format: labels.npy and one [5 n, 32, 32, 3] uint8 <corruption>.npy per corruption, severities stacked),
against the accuracy computed image by image."""

import json
import pickle

import numpy as np
import pytest
import torch

from adv_training.auto_attacks.corruptions import CORRUPTIONS, main
from models import build_model

PER_SEVERITY = 6
# Hits (of PER_SEVERITY images) of every corruption (row) and severity (column): the five values of a row
# differ, and so do the 15 rows, so that reading another severity's or another corruption's images, or
# another severity's labels, changes the table. Row c: (c mod 7 + k s) mod 7 for s = 0..4, k = 1 + c // 7.
HITS = [[(c % 7 + (1 + c // 7) * s) % 7 for s in range(5)] for c in range(15)]


def write_cifar10_c(folder, per_severity=PER_SEVERITY, seed=0, palette=None):
    """The published layout with random images and labels; with ``palette`` ({class: [solid images the model
    predicts as that class]}, two classes a and b), images and labels that give HITS: severity s labels image j
    a when j + s is even, b otherwise, and image j of a corruption's severity s is one of its label's colours
    for j < HITS[c][s] (a hit) and one of the other class's colours after (a miss)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if palette is None:
        labels = np.tile(rng.integers(0, 10, per_severity), 5).astype(np.uint8)  # the published labels are uint8
        np.save(folder / "labels.npy", labels)
        for name in CORRUPTIONS:
            np.save(folder / f"{name}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
        return folder
    a, b = palette
    labels = np.array([a if (j + s) % 2 == 0 else b for s in range(5) for j in range(per_severity)], dtype=np.uint8)
    np.save(folder / "labels.npy", labels)
    for c, name in enumerate(CORRUPTIONS):
        images = []
        for s in range(5):
            for j in range(per_severity):
                label = labels[s * per_severity + j]
                shown = label if j < HITS[c][s] else (b if label == a else a)
                colours = palette[shown]
                images.append(colours[(c + j) % len(colours)])
        np.save(folder / f"{name}.npy", np.stack(images))
    return folder


def solid_colours(model, count=256, per_class=3):
    """{class: [up to ``per_class`` solid 32 x 32 uint8 images]} for the two classes ``model`` predicts most
    often among ``count`` random colours, each image one it predicts with a logit margin of at least 0.005
    (the untrained model's logits are about 0.07 apart; float32 rounding moves them by about 1e-7)."""
    colours = np.random.default_rng(1).integers(0, 256, (count, 3), dtype=np.uint8)
    images = np.ascontiguousarray(np.broadcast_to(colours[:, None, None, :], (count, 32, 32, 3)))
    with torch.no_grad():
        logits = model(torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255)
    top = logits.topk(2, dim=1)
    clear = (top.values[:, 0] - top.values[:, 1] >= 0.005).tolist()
    by_class = {}
    for image, predicted, margin_ok in zip(images, top.indices[:, 0].tolist(), clear):
        if margin_ok:
            by_class.setdefault(predicted, []).append(image)
    two = sorted(by_class, key=lambda k: -len(by_class[k]))[:2]
    assert len(two) == 2, f"the untrained model predicts one class for every colour: {by_class.keys()}"
    return {k: by_class[k][:per_class] for k in two}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("WideResNet", 10, depth=10, widen_factor=1)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_the_mean_over_75_sets_and_the_table_equal_the_image_by_image_accuracy(checkpoint, tmp_path):
    model, path = checkpoint
    folder = write_cifar10_c(tmp_path / "CIFAR-10-C", palette=solid_colours(model))
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
            x = torch.tensor(np.load(folder / f"{name}.npy"), dtype=torch.float32).permute(0, 3, 1, 2) / 255
            hit = (model(x).argmax(1) == torch.tensor(labels.astype(np.int64))).tolist()  # image by image
            expected[name] = [
                100 * sum(hit[s * PER_SEVERITY : (s + 1) * PER_SEVERITY]) / PER_SEVERITY for s in range(5)
            ]
    # the images give the designed table: every row, and every cell of a row, differs
    assert expected == {name: [100 * h / PER_SEVERITY for h in HITS[c]] for c, name in enumerate(CORRUPTIONS)}
    assert report["table"] == {name: pytest.approx(row, abs=0.01) for name, row in expected.items()}
    every = [value for row in expected.values() for value in row]
    assert report["corruptions_acc"] == pytest.approx(sum(every) / 75, abs=0.01)
    assert report["by_corruption"] == {name: pytest.approx(sum(row) / 5, abs=0.01) for name, row in expected.items()}
    by_severity = [sum(row[s] for row in expected.values()) / 15 for s in range(5)]
    assert report["by_severity"] == pytest.approx(by_severity, abs=0.01)
    assert report["n_ex_per_severity"] == PER_SEVERITY
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


def crafted(path, kind, good):
    """``path`` rewritten as a file that is not a plain .npy array (``good``: the array it held)."""
    if kind == "objects":
        np.save(path, np.array([{"label": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(good.tolist()))
    elif kind == "npz":
        with open(path, "wb") as stream:
            np.savez(stream, good)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "float labels":
        np.save(path, good.astype(np.float32))


DAMAGED = ["objects", "pickle", "npz", "truncated", "empty", "random"]


@pytest.mark.parametrize(
    "name, kind", [(name, kind) for name in ("labels", "fog") for kind in DAMAGED] + [("labels", "float labels")]
)
def test_a_damaged_or_foreign_file_is_one_error_line_naming_it(checkpoint, tmp_path, capsys, name, kind):
    _, path = checkpoint
    folder = write_cifar10_c(tmp_path / "CIFAR-10-C")
    target = folder / f"{name}.npy"
    crafted(target, kind, np.load(target))
    argv = ["--arch", "WideResNet", "--depth", "10", "--widen_factor", "1", "--checkpoint", str(path)]
    assert main([*argv, "--corruptions_dir", str(folder), "--device", "cpu", "--json", str(tmp_path / "c.json")]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and f"{target}" in error
    assert [line for line in error.splitlines() if line.strip()] == [error.strip()]  # one line
    assert not (tmp_path / "c.json").exists()
