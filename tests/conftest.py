"""Shared fixtures: small CIFAR-10/100 datasets written in the official on-disk format, small
ImageNet-style ImageFolder trees of PNG files, and small models and batches for unit tests.

The CIFAR files are what torchvision's real CIFAR classes read (only the MD5 sums differ, so
load them with ``verify_checksum=False``); the ImageFolder trees are what torchvision's
``ImageFolder`` reads. Images are a per-class colour plus noise, so a tiny model can learn
to tell the classes apart.
"""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Python2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2 byte strings, as in the official CIFAR pickles.

    They were written by Python 2, so their keys load as ``str`` with encoding="latin1"
    (what torchvision uses) and as ``bytes`` with encoding="bytes" (the official recipe).
    Python 3's own pickles would load ``str`` as ``str`` and ``bytes`` as ``bytes`` in both cases.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_byte_string(self, obj):
        # Python 2 had one string type; numpy's raw array data goes the same way.
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_byte_string
    dispatch[bytes] = _save_byte_string


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as stream:
        _Python2Pickler(stream, protocol=2).dump(obj)


def _images(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 3072] rows, each one CHW image flattened row-major, like the official data."""
    pixels = colours[labels][:, :, None, None] + rng.normal(0.0, 24.0, (len(labels), 3, 32, 32))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(len(labels), 3 * 32 * 32)


def write_cifar(root, name: str = "cifar10", num_train: int = 200, num_test: int = 100, seed: int = 0) -> Path:
    """Write a small ``name`` dataset ("cifar10" or "cifar100") under ``root``; return ``root``.

    Labels run round-robin over all classes (sample ``i`` has class ``i % num_classes``), so
    every class appears once there are at least as many samples as classes. CIFAR-10's
    training samples are split across the five batch files in order; CIFAR-100's coarse
    label of fine class ``c`` is ``c // 5`` (the real grouping is not that regular).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    num_classes = {"cifar10": 10, "cifar100": 100}[name]
    colours = rng.uniform(40.0, 215.0, (num_classes, 3))

    def split(count: int, prefix: str):
        labels = np.arange(count) % num_classes
        filenames = [f"{prefix}_{index:06d}.png" for index in range(count)]
        return labels, _images(labels, colours, rng), filenames

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        labels, data, filenames = split(num_train, "synthetic_train")
        for number, rows in enumerate(np.array_split(np.arange(num_train), 5), start=1):
            _dump(
                {
                    "batch_label": f"training batch {number} of 5",
                    "labels": labels[rows].tolist(),
                    "data": data[rows],
                    "filenames": [filenames[i] for i in rows],
                },
                folder / f"data_batch_{number}",
            )
        labels, data, filenames = split(num_test, "synthetic_test")
        _dump(
            {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(), "data": data, "filenames": filenames},
            folder / "test_batch",
        )
        _dump(
            {"num_cases_per_batch": -(-num_train // 5), "label_names": CIFAR10_LABEL_NAMES, "num_vis": 3 * 32 * 32},
            folder / "batches.meta",
        )
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, count, batch_label in (
            ("train", num_train, "training batch 1 of 1"),
            ("test", num_test, "testing batch 1 of 1"),
        ):
            labels, data, filenames = split(count, f"synthetic_{filename}")
            _dump(
                {
                    "filenames": filenames,
                    "batch_label": batch_label,
                    "fine_labels": labels.tolist(),
                    "coarse_labels": (labels // 5).tolist(),
                    "data": data,
                },
                folder / filename,
            )
        _dump(
            {
                "fine_label_names": [f"fine_class_{c:02d}" for c in range(100)],
                "coarse_label_names": [f"coarse_class_{c:02d}" for c in range(20)],
            },
            folder / "meta",
        )
    else:
        raise ValueError(f"write_cifar: unknown dataset {name!r} (cifar10 or cifar100)")
    return root


@pytest.fixture(scope="session")
def cifar_writer():
    """`write_cifar`, for tests that need their own variant (tests cannot import conftest)."""
    return write_cifar


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A root holding cifar-10-batches-py with 200 training and 100 test images. Read-only."""
    return write_cifar(tmp_path_factory.mktemp("cifar10"), "cifar10", num_train=200, num_test=100)


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    """A root holding cifar-100-python with 300 training and 100 test images. Read-only."""
    return write_cifar(tmp_path_factory.mktemp("cifar100"), "cifar100", num_train=300, num_test=100)


def write_image_folder(
    root, num_classes: int = 3, train_per_class: int = 4, val_per_class: int = 2, size=(40, 30), seed: int = 0
) -> Path:
    """Write an ImageNet-style tree of RGB PNG files under ``root``; return ``root``.

    ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``, ``size`` = (width, height)
    pixels. Class folders are named like WordNet ids (``n`` and eight digits), drawn at random
    and written in an unsorted order, so ImageFolder's sorted labels differ from the writing
    order. Every image is its class's colour plus noise.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    codes = rng.choice(10**8, size=num_classes, replace=False)
    if num_classes > 1 and list(codes) == sorted(codes):
        codes = codes[::-1]
    colours = rng.uniform(40.0, 215.0, (num_classes, 3))
    width, height = size
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for code, colour in zip(codes, colours):
            folder = root / split / f"n{code:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = colour + rng.normal(0.0, 24.0, (height, width, 3))
                image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
                image.save(folder / f"n{code:08d}_{split}_{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder_writer():
    """`write_image_folder`, for tests that need their own tree (tests cannot import conftest)."""
    return write_image_folder


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory) -> Path:
    """An ImageFolder tree with 3 classes, 4 training and 2 validation 40x30 PNGs each. Read-only."""
    return write_image_folder(tmp_path_factory.mktemp("imagenet"))


def _small_model(seed: int = 0, *, side: int = 4, classes: int = 3, dropout: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, kernel_size=3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * side * side, classes))


def _image_batch(seed: int = 0, *, size: int = 8, side: int = 4, classes: int = 3):
    generator = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(size, 1, side, side, generator=generator)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x, y


@pytest.fixture(scope="session")
def small_model():
    """``small_model(seed=0, *, side=4, classes=3, dropout=False)``: Conv + BatchNorm (+ dropout)
    + linear on 1 x side x side images, seeded: every mode-dependent layer kind is present."""
    return _small_model


@pytest.fixture(scope="session")
def image_batch():
    """``image_batch(seed=0, *, size=8, side=4, classes=3)``: seeded images in [0, 1] and labels."""
    return _image_batch


# The overrides that make adv_training.train a run of seconds on the CPU, for the tests of every file that
# trains one (a later key=value wins, so a test overrides any of them by adding its own).
TINY_AT_RUN = (
    "data.dataset=cifar10",
    "data.verify_checksum=false",
    "data.num_workers=0",
    "data.batch_size=40",
    "data.test_batch_size=50",
    "model.arch=WideResNet",
    "model.depth=10",
    "model.widen_factor=1",
    "epochs=2",
    "device=cpu",
    "eval.num_examples=50",
    "eval.pgd_steps=2",
    "awp.warmup=1",
    "ema.start_epoch=1",
    "save_every=1",
)


def _tiny_at_run(data_root, out_dir, *extra, name="run"):
    return [f"data.root={data_root}", *TINY_AT_RUN, f"out_dir={out_dir}", f"name={name}", *extra]


@pytest.fixture(scope="session")
def tiny_at_run():
    """``tiny_at_run(data_root, out_dir, *extra, name="run")``: the overrides of a 2-epoch run of a
    depth-10, width-1 WRN on a small CIFAR-10 set (`cifar10_root`), batch 40 (5 steps an epoch), the
    monitor's PGD-2 on the first 50 test images, AWP and the EMA from epoch 1, every epoch's weights
    saved; then ``extra``, which win over them. The run's folder is ``out_dir/name``."""
    return _tiny_at_run


@pytest.fixture
def accelerator_checks(monkeypatch):
    """The value checks as on a GPU (`engine.environment.checks_on_host` false), with any device-side
    assert a test failure: on CUDA one kills the context before anything can be saved."""
    from engine import environment

    def device_assert(*args, **kwargs):
        raise AssertionError("a device-side assert was queued")

    monkeypatch.setattr(environment, "checks_on_host", lambda device: False)
    monkeypatch.setattr(torch, "_assert_async", device_assert)


# --- the fast tier -------------------------------------------------------------------------
# `bash sh/test.sh -m "not slow"` must stay under 3 minutes on two CPU cores. A test over
# SLOW_SECONDS (its setup, call and teardown) without the `slow` mark is named at the end of the
# run, so that whoever made it slow marks it (or shares its expensive part through a fixture).
SLOW_SECONDS = 5.0
_unmarked_seconds = {}


def pytest_runtest_logreport(report):
    if "slow" not in report.keywords:
        _unmarked_seconds[report.nodeid] = _unmarked_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    over = {test: seconds for test, seconds in _unmarked_seconds.items() if seconds > SLOW_SECONDS}
    if over:
        terminalreporter.section("unmarked slow tests")
        for test, seconds in sorted(over.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {test}: mark it @pytest.mark.slow (tests/conftest.py)")
