"""engine.data on small CIFAR-format files read by torchvision's real CIFAR classes."""
import pickle
import shutil
import socket

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets

from engine.data import (
    AUGMENTATIONS,
    Cutout,
    build_test_set,
    build_train_set,
    first_examples,
    make_loader,
    num_classes,
    set_epoch,
)
from engine.errors import UserError

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
TRAIN_FILES = {"cifar10": [f"data_batch_{n}" for n in range(1, 6)], "cifar100": ["train"]}
TEST_FILES = {"cifar10": ["test_batch"], "cifar100": ["test"]}
LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}


@pytest.fixture
def roots(cifar10_root, cifar100_root):
    return {"cifar10": cifar10_root, "cifar100": cifar100_root}


def read_written(root, name, files):
    """Images [N, 3, 32, 32] uint8 and labels, decoded as the official recipe does."""
    images, labels = [], []
    for filename in files:
        with open(root / FOLDERS[name] / filename, "rb") as stream:
            batch = pickle.load(stream, encoding="bytes")
        images.append(batch[b"data"])
        labels += batch[LABEL_KEYS[name]]
    return np.concatenate(images).reshape(-1, 3, 32, 32), labels


# --- names ---------------------------------------------------------------------------------

def test_num_classes_and_unknown_dataset():
    assert num_classes("cifar10") == 10 and num_classes("cifar100") == 100
    with pytest.raises(UserError, match="'mnist'.*cifar10, cifar100"):
        num_classes("mnist")
    with pytest.raises(UserError, match="cifar10, cifar100"):
        build_test_set("CIFAR-10", "/nonexistent")


def test_unknown_augmentation_lists_choices(cifar10_root):
    with pytest.raises(UserError, match="'randaug'.*" + ", ".join(AUGMENTATIONS)):
        build_train_set("cifar10", cifar10_root, augment="randaug", verify_checksum=False)


# --- reading -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_items_match_the_written_files(name, split, roots):
    root = roots[name]
    if split == "train":
        dataset = build_train_set(name, root, augment="none", verify_checksum=False)
        images, labels = read_written(root, name, TRAIN_FILES[name])
    else:
        dataset = build_test_set(name, root, verify_checksum=False)
        images, labels = read_written(root, name, TEST_FILES[name])

    assert len(dataset) == len(labels) and list(dataset.targets) == labels
    assert set(labels) == set(range(num_classes(name)))
    for index in (0, len(dataset) - 1):
        image, label = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label == labels[index]
        assert torch.equal(torch.round(image * 255).to(torch.uint8), torch.from_numpy(images[index]))


def test_writer_spreads_cifar10_training_images_over_five_batches(cifar_writer, tmp_path):
    root = cifar_writer(tmp_path, "cifar10", num_train=23, num_test=4, seed=1)
    sizes = [len(read_written(root, "cifar10", [f])[1]) for f in TRAIN_FILES["cifar10"]]
    assert sizes == [5, 5, 5, 4, 4]
    assert len(build_train_set("cifar10", root, augment="none", verify_checksum=False)) == 23


# --- missing or damaged data ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_checksums_reject_locally_written_files(name, roots):
    with pytest.raises(UserError, match="do not match the official checksums") as caught:
        build_test_set(name, roots[name])
    assert "data.verify_checksum=false" in str(caught.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_folder_says_what_to_get_and_where(name, tmp_path):
    archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
    with pytest.raises(UserError) as caught:
        build_train_set(name, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / FOLDERS[name]) in message
    assert f"https://www.cs.toronto.edu/~kriz/{archive}" in message
    assert "data.download=true" in message and "data.root" in message
    assert "\n" not in message


def test_partial_folder_counts_as_missing(cifar_writer, tmp_path):
    root = cifar_writer(tmp_path, "cifar10", num_train=10, num_test=10)
    (root / FOLDERS["cifar10"] / "batches.meta").unlink()
    with pytest.raises(UserError, match="not found"):
        build_test_set("cifar10", root, verify_checksum=False)


def test_failed_download_is_a_user_error(tmp_path, monkeypatch):
    # A closed local port refuses at once, so this neither needs nor uses the network.
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    try:
        with pytest.raises(UserError, match="downloading CIFAR-10 failed") as caught:
            build_test_set("cifar10", tmp_path, download=True)
    finally:
        socket.setdefaulttimeout(previous_timeout)
    assert str(tmp_path / FOLDERS["cifar10"]) in str(caught.value)
    assert "data.download=true" not in str(caught.value), "it was just tried"


def test_unreadable_file_is_a_user_error(cifar10_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(cifar10_root, root)
    (root / FOLDERS["cifar10"] / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="could not be read"):
        build_test_set("cifar10", root, verify_checksum=False)


# --- augmentations -------------------------------------------------------------------------

def test_none_is_deterministic_and_basic_is_random(cifar10_root):
    plain = build_train_set("cifar10", cifar10_root, augment="none", verify_checksum=False)
    basic = build_train_set("cifar10", cifar10_root, augment="basic", verify_checksum=False)
    torch.manual_seed(0)
    assert all(torch.equal(plain[i][0], plain[i][0]) for i in range(5))
    draws = [(basic[i][0], basic[i][0]) for i in range(5)]
    assert all(a.shape == (3, 32, 32) and 0 <= a.min() and a.max() <= 1 for a, _ in draws)
    assert any(not torch.equal(a, b) for a, b in draws)


@pytest.mark.parametrize("augment", ["autoaug", "cutout"])
def test_dual_view_batches(augment, cifar100_root):
    dataset = build_train_set("cifar100", cifar100_root, augment=augment, verify_checksum=False)
    torch.manual_seed(0)
    views, labels = next(iter(make_loader(dataset, batch_size=8, shuffle=False)))
    assert isinstance(views, list) and len(views) == 2
    x_basic, x_augmented = views
    assert x_basic.shape == x_augmented.shape == (8, 3, 32, 32)
    assert x_augmented.dtype == torch.float32 and 0 <= x_augmented.min() and x_augmented.max() <= 1
    assert labels.tolist() == list(range(8))
    assert not torch.equal(x_basic, x_augmented)
    if augment == "cutout":
        # The smallest hole, centred in a corner, is 8x8; noise alone rarely zeroes all channels.
        zeroed = (x_augmented == 0).all(dim=1).flatten(1).sum(dim=1)
        assert (zeroed >= 64).all()


def test_cutout_zeroes_one_clipped_square():
    cutout = Cutout(16)
    seen_whole, seen_clipped = False, False
    for seed in range(100):
        torch.manual_seed(seed)
        image = cutout(torch.ones(3, 32, 32))
        zero = image == 0
        assert torch.equal(zero, zero[:1].expand_as(zero)), "the hole must cover every channel"
        rows = zero[0].any(dim=1).nonzero().flatten()
        columns = zero[0].any(dim=0).nonzero().flatten()
        top, bottom = int(rows.min()), int(rows.max()) + 1
        left, right = int(columns.min()), int(columns.max()) + 1
        assert zero[0, top:bottom, left:right].all(), "the hole must be one rectangle"
        assert int(zero[0].sum()) == (bottom - top) * (right - left)
        assert 8 <= bottom - top <= 16 and 8 <= right - left <= 16
        touches_border = top == 0 or left == 0 or bottom == 32 or right == 32
        if touches_border:
            seen_clipped |= (bottom - top) * (right - left) < 16 * 16
        else:
            assert (bottom - top, right - left) == (16, 16)
            seen_whole = True
        torch.manual_seed(seed)
        assert torch.equal(cutout(torch.ones(3, 32, 32)), image), "seeding torch reproduces the hole"
    assert seen_whole and seen_clipped


# --- subsets and loaders -------------------------------------------------------------------

def test_first_examples(cifar10_root):
    dataset = build_test_set("cifar10", cifar10_root, verify_checksum=False)
    subset = first_examples(dataset, 7)
    assert len(subset) == 7
    for index in range(7):
        assert torch.equal(subset[index][0], dataset[index][0]) and subset[index][1] == dataset[index][1]
    assert first_examples(dataset, None) is dataset
    assert first_examples(dataset, len(dataset)) is dataset and first_examples(dataset, 10**6) is dataset
    with pytest.raises(UserError, match="positive"):
        first_examples(dataset, 0)


def epoch_order(loader, epoch):
    set_epoch(loader, epoch)
    return torch.cat([batch for (batch,) in loader]).tolist()


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    dataset = TensorDataset(torch.arange(40))
    loader = make_loader(dataset, batch_size=8, shuffle=True, seed=3)
    orders = [epoch_order(loader, epoch) for epoch in range(4)]
    assert all(sorted(order) == list(range(40)) for order in orders)
    assert epoch_order(loader, 2) == orders[2]
    assert len({tuple(order) for order in orders}) == 4

    resumed = make_loader(dataset, batch_size=8, shuffle=True, seed=3)
    assert epoch_order(resumed, 2) == orders[2] and epoch_order(resumed, 3) == orders[3]
    other_seed = make_loader(dataset, batch_size=8, shuffle=True, seed=4)
    assert epoch_order(other_seed, 2) != orders[2]

    unshuffled = make_loader(dataset, batch_size=8, shuffle=False, drop_last=True)
    assert epoch_order(unshuffled, 5) == list(range(40))


def test_make_loader_defaults_to_epoch_zero():
    dataset = TensorDataset(torch.arange(30))
    fresh = make_loader(dataset, batch_size=10, shuffle=True, seed=1)
    first = torch.cat([batch for (batch,) in fresh]).tolist()
    assert first == epoch_order(make_loader(dataset, batch_size=10, shuffle=True, seed=1), 0)


class RandomDraws(Dataset):
    """Each item is a fresh draw from torch's RNG, standing in for a random augmentation."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.rand(())


def test_worker_randomness_follows_the_loader_seed():
    def draws(epoch):
        loader = make_loader(RandomDraws(), batch_size=4, shuffle=True, num_workers=2, seed=7)
        set_epoch(loader, epoch)
        return torch.cat(list(loader))

    first = draws(1)
    assert torch.equal(draws(1), first)
    assert not torch.equal(draws(2), first)


def test_set_epoch_needs_a_loader_from_make_loader():
    with pytest.raises(TypeError, match="make_loader"):
        set_epoch(DataLoader(TensorDataset(torch.arange(4))), 1)
