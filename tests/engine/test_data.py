"""engine.data on small CIFAR-format files read by torchvision's real CIFAR classes, small
ImageFolder trees of PNG files read by torchvision's ImageFolder, and scikit-learn's digits."""

import os
import pickle
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets, transforms
from torchvision.transforms import functional as TF

from engine.data import (
    AUGMENTATIONS,
    NORMALIZE_STATS,
    Cutout,
    WithIndices,
    autoaugment_cifar,
    build_test_set,
    build_train_set,
    dataset_num_classes,
    first_examples,
    global_batch_sizes,
    make_eval_loader,
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
def test_official_checksums_reject_locally_written_files_by_name(name, roots):
    with pytest.raises(UserError, match="not match the official CIFAR-1.* checksums") as caught:
        build_test_set(name, roots[name])
    message, folder = str(caught.value), roots[name] / FOLDERS[name]
    assert "data.verify_checksum=false" in message
    # every written file differs from the official one, and each is named
    names = TRAIN_FILES[name] + ["test_batch" if name == "cifar10" else "test"]
    assert all(str(folder / file) in message for file in names), message


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
    with pytest.raises(UserError) as caught:
        build_test_set("cifar10", root, verify_checksum=False)
    assert str(caught.value).startswith(f"{root / FOLDERS['cifar10'] / 'test_batch'} is not a CIFAR python batch")


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


def _rotate_only(policy):
    """The policy forced to one sub-policy: rotate by the largest magnitude (30 degrees), always."""
    policy.policies = [(("Rotate", 1.0, 9), ("Rotate", 0.0, 0))]
    return policy


def test_autoaugment_fills_uncovered_areas_grey_as_the_reference():
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    torch.manual_seed(0)
    rotated = np.asarray(_rotate_only(autoaugment_cifar())(white))
    corners = rotated[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 128).all(), corners  # the reference's fill colour (128, 128, 128)
    assert (rotated[12:20, 12:20] == 255).all()  # the image itself is kept
    torch.manual_seed(0)
    black_fill = np.asarray(_rotate_only(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))(white))
    assert (black_fill[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()  # torchvision's default, which we override


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_the_training_pipeline_uses_the_grey_filled_autoaugment(dataset, cifar10_root, cifar100_root):
    root = cifar10_root if dataset == "cifar10" else cifar100_root
    train_set = build_train_set(dataset, root, augment="autoaug", verify_checksum=False)
    steps = train_set.transform.augmented.transforms
    policies = [step for step in steps if isinstance(step, transforms.AutoAugment)]
    assert len(policies) == 1 and policies[0].fill == [128, 128, 128]
    assert policies[0].policy == transforms.AutoAugmentPolicy.CIFAR10
    _rotate_only(policies[0])
    torch.manual_seed(0)
    (_, augmented), _ = train_set[0]
    assert torch.allclose(augmented[:, 0, 0], torch.full((3,), 128 / 255))


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


class Indices(Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_processes_share_each_global_training_batch_of_one_process(world_size, drop_last):
    size, batch = 51, 12  # a last global batch of 3 images
    one = make_loader(Indices(size), batch_size=batch, shuffle=True, seed=5, drop_last=drop_last)
    set_epoch(one, 2)
    expected = [b.tolist() for b in one]
    shares = []
    for rank in range(world_size):
        loader = make_loader(
            Indices(size), batch_size=batch, shuffle=True, seed=5, drop_last=drop_last, rank=rank, world_size=world_size
        )
        set_epoch(loader, 2)
        shares.append([b.tolist() for b in loader])
        assert len(loader) == len(shares[-1])
        sizes = global_batch_sizes(loader)  # known on the host by every process alike
        assert sizes == [len(b) for b in (expected[:-1] if not drop_last and world_size == 4 else expected)]
    # a last batch of 3 images is kept for 2 or 3 processes, dropped for 4 (one would get nothing)
    if not drop_last and world_size == 4:
        expected = expected[:-1]
    assert [sum((share[i] for share in shares), []) for i in range(len(shares[0]))] == expected
    assert global_batch_sizes(one) is None  # one process: its batches are the global ones
    for share in shares:  # contiguous, near-equal parts
        assert all(abs(len(part) - len(first)) <= 1 for part, first in zip(share, shares[0]))


def test_a_global_batch_that_does_not_divide_by_the_processes_is_refused():
    with pytest.raises(UserError, match="batch size 10 is the global batch.*multiple of 4"):
        make_loader(Indices(20), batch_size=10, shuffle=True, rank=0, world_size=4)


@pytest.mark.parametrize("size, batch, world_size", [(450, 64, 2), (450, 64, 3), (10, 4, 4), (10, 4, 1), (3, 8, 2)])
def test_evaluation_batches_are_one_process_batches_dealt_in_turn(size, batch, world_size):
    one = [b.tolist() for b in make_eval_loader(Indices(size), batch_size=batch)]
    assert one == [list(range(start, min(start + batch, size))) for start in range(0, size, batch)]
    dealt = {}
    for rank in range(world_size):
        loader = make_eval_loader(Indices(size), batch_size=batch, rank=rank, world_size=world_size)
        batches = [b.tolist() for b in loader]
        assert len(loader) == len(batches)
        dealt.update({rank + k * world_size: b for k, b in enumerate(batches)})
    # every batch is exactly one of one process's batches; no image is missing or repeated
    assert [dealt[i] for i in range(len(dealt))] == one


def test_evaluating_draws_nothing_from_the_global_random_stream():
    before = torch.get_rng_state()
    for _ in range(2):
        list(make_eval_loader(Indices(10), batch_size=4))
    assert torch.equal(torch.get_rng_state(), before)


def test_with_indices_appends_the_index_of_each_item():
    images = TensorDataset(torch.arange(10.0).view(5, 2), torch.tensor([3, 1, 4, 1, 5]))
    items = [WithIndices(images)[i] for i in range(5)]
    assert len(WithIndices(images)) == 5
    assert [(x.tolist(), int(y), i) for x, y, i in items] == [
        ([2.0 * i, 2.0 * i + 1], t, i) for i, t in enumerate([3, 1, 4, 1, 5])
    ]
    _, _, indices = next(iter(make_eval_loader(WithIndices(images), batch_size=2, rank=1, world_size=2)))
    assert indices.tolist() == [2, 3]


def test_workers_of_other_processes_draw_other_augmentations():
    def draws(rank, world_size):
        loader = make_loader(
            RandomDraws(), batch_size=4, shuffle=True, num_workers=1, seed=7, rank=rank, world_size=world_size
        )
        set_epoch(loader, 1)
        return torch.cat([b.flatten() for b in loader])

    one, rank0, rank1 = draws(0, 1), draws(0, 2), draws(1, 2)
    # rank 0 keeps the worker seeds of one process: its draws are the first ones of that stream
    assert torch.equal(rank0, one[: len(rank0)])
    assert len(rank1) == len(rank0) and not torch.equal(rank1, rank0)
    assert torch.equal(draws(1, 2), rank1)  # still reproducible


def test_set_epoch_needs_a_loader_from_make_loader():
    with pytest.raises(TypeError, match="make_loader"):
        set_epoch(DataLoader(TensorDataset(torch.arange(4))), 1)


# --- normalisation -------------------------------------------------------------------------

# The published statistics, written out here rather than read from NORMALIZE_STATS.
MDISTILLER_CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
TORCHVISION_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalised(image, stats):
    """(x - mean) / std per channel, in float64."""
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in stats)
    return (image.double() - mean) / std


def assert_normalised(image, plain, stats):
    assert image.shape == plain.shape and image.dtype == torch.float32
    assert torch.allclose(image.double(), normalised(plain, stats), atol=1e-5)


def test_dataset_stats():
    assert NORMALIZE_STATS["cifar100"] == MDISTILLER_CIFAR100
    assert NORMALIZE_STATS["imagenet"] == TORCHVISION_IMAGENET
    assert set(NORMALIZE_STATS) == {"cifar10", "cifar100", "imagenet"}
    for mean, std in NORMALIZE_STATS.values():
        assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean) and all(0 < s < 1 for s in std)


def test_cifar100_normalize_is_an_affine_map_of_the_pixels(cifar100_root):
    for split in ("train", "test"):
        build = build_train_set if split == "train" else build_test_set
        kwargs = {"augment": "none"} if split == "train" else {}
        plain = build("cifar100", cifar100_root, verify_checksum=False, **kwargs)
        normal = build("cifar100", cifar100_root, verify_checksum=False, normalize=True, **kwargs)
        for index in (0, 17, len(plain) - 1):
            assert normal[index][1] == plain[index][1]
            assert_normalised(normal[index][0], plain[index][0], MDISTILLER_CIFAR100)
        assert normal[0][0].min() < 0, "normalised pixels leave [0, 1]"


@pytest.mark.parametrize("augment", ["basic", "autoaug", "cutout"])
def test_cifar100_normalize_applies_to_every_view(augment, cifar100_root):
    plain = build_train_set("cifar100", cifar100_root, augment=augment, verify_checksum=False)
    normal = build_train_set("cifar100", cifar100_root, augment=augment, verify_checksum=False, normalize=True)
    for index in range(4):
        torch.manual_seed(index)
        x_plain, _ = plain[index]
        torch.manual_seed(index)
        x_normal, _ = normal[index]
        if augment == "basic":
            x_plain, x_normal = (x_plain,), (x_normal,)
        assert len(x_plain) == len(x_normal)
        for view_plain, view_normal in zip(x_plain, x_normal):
            assert_normalised(view_normal, view_plain, MDISTILLER_CIFAR100)


# --- ImageNet ------------------------------------------------------------------------------


def folder_classes(root, split):
    return sorted(entry.name for entry in os.scandir(root / split) if entry.is_dir())


def test_imagenet_train_items_and_labels(imagenet_root):
    dataset = build_train_set("imagenet", imagenet_root)
    classes = folder_classes(imagenet_root, "train")
    assert num_classes("imagenet") == 1000 and dataset_num_classes(dataset) == 3
    assert dataset.classes == classes and len(dataset) == 12
    for path, label in dataset.samples:
        assert os.path.basename(os.path.dirname(path)) == classes[label]
    assert sorted(dataset.targets) == [0] * 4 + [1] * 4 + [2] * 4
    torch.manual_seed(0)
    for index in (0, 5, 11):
        image, label = dataset[index]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert label == dataset.targets[index]
    torch.manual_seed(0)
    first = dataset[0][0]
    assert not all(torch.equal(first, dataset[0][0]) for _ in range(3)), "random crops"


def test_imagenet_labels_match_the_image_colours(imagenet_root):
    # Each class has its own colour: an image is closer to its class's mean colour.
    dataset = build_test_set("imagenet", imagenet_root)
    colours = torch.stack([dataset[i][0].mean(dim=(1, 2)) for i in range(len(dataset))])
    labels = torch.tensor(dataset.targets)
    centres = torch.stack([colours[labels == c].mean(dim=0) for c in range(3)])
    assert torch.equal(torch.cdist(colours, centres).argmin(dim=1), labels)


def test_imagenet_test_transform_is_deterministic_and_standard(imagenet_root):
    dataset = build_test_set("imagenet", imagenet_root)
    assert len(dataset) == 6 and dataset.classes == folder_classes(imagenet_root, "val")
    path, _ = dataset.samples[3]
    with Image.open(path) as file:
        raw = file.convert("RGB")
    assert raw.size == (40, 30)
    # Resize(256) scales the shorter side (30) to 256: 341x256, then the central 224x224.
    expected = TF.to_tensor(TF.center_crop(TF.resize(raw, 256), 224))
    torch.manual_seed(0)
    first = dataset[3][0]
    torch.manual_seed(1)
    assert torch.equal(first, dataset[3][0]) and torch.equal(first, expected)
    assert first.shape == (3, 224, 224)
    # augment="none" is the test transform, on the training images.
    plain_train = build_train_set("imagenet", imagenet_root, augment="none")
    path, _ = plain_train.samples[0]
    with Image.open(path) as file:
        expected = TF.to_tensor(TF.center_crop(TF.resize(file.convert("RGB"), 256), 224))
    assert torch.equal(plain_train[0][0], expected)


def test_imagenet_normalize(imagenet_root):
    plain = build_test_set("imagenet", imagenet_root)
    normal = build_test_set("imagenet", imagenet_root, normalize=True)
    image, plain_image = normal[0][0], plain[0][0]
    assert_normalised(image, plain_image, TORCHVISION_IMAGENET)
    # One pixel by hand: channel 1 (green), row 100, column 50.
    expected = (float(plain_image[1, 100, 50]) - 0.456) / 0.224
    assert float(image[1, 100, 50]) == pytest.approx(expected, abs=1e-5)

    train_plain = build_train_set("imagenet", imagenet_root)
    train_normal = build_train_set("imagenet", imagenet_root, normalize=True)
    torch.manual_seed(3)
    x_plain, _ = train_plain[7]
    torch.manual_seed(3)
    x_normal, _ = train_normal[7]
    assert_normalised(x_normal, x_plain, TORCHVISION_IMAGENET)


def test_imagenet_rejects_cifar_augmentations(imagenet_root):
    for augment in ("autoaug", "cutout"):
        with pytest.raises(UserError, match=f"'{augment}' is not available for ImageNet.*none, basic"):
            build_train_set("imagenet", imagenet_root, augment=augment)
    with pytest.raises(UserError, match="unknown augmentation"):
        build_train_set("imagenet", imagenet_root, augment="randaug")


@pytest.mark.parametrize("download", [False, True])
def test_imagenet_missing_tree_says_what_to_put_where(download, tmp_path):
    for build in (build_train_set, build_test_set):
        with pytest.raises(UserError) as caught:
            build("imagenet", tmp_path, download=download)
        message = str(caught.value)
        assert str(tmp_path / "train") in message and str(tmp_path / "val") in message
        assert "one sub-folder per class" in message and "n01440764/" in message
        assert "data.root=" in message and "cannot be downloaded automatically" in message
        assert ("data.download=true" in message) == download
        assert "\n" not in message


def test_imagenet_missing_val_is_named(image_folder_writer, tmp_path):
    root = image_folder_writer(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    shutil.rmtree(root / "val")
    with pytest.raises(UserError, match="val is missing") as caught:
        build_train_set("imagenet", root)
    assert str(root / "val") in str(caught.value)


def test_imagenet_class_folders_must_agree(image_folder_writer, tmp_path):
    root = image_folder_writer(tmp_path, num_classes=3, train_per_class=1, val_per_class=1)
    classes = folder_classes(root, "val")
    (root / "val" / classes[0]).rename(root / "val" / "n99999999")
    (root / "train" / "n99999998").mkdir()
    shutil.copy(next((root / "train" / classes[1]).iterdir()), root / "train" / "n99999998" / "copy.png")
    for build in (build_train_set, build_test_set):
        with pytest.raises(UserError, match="differ: 2 only in train/.*1 only in val/ \\(n99999999\\)"):
            build("imagenet", root)


def test_imagenet_flat_or_empty_folders(image_folder_writer, tmp_path):
    root = image_folder_writer(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    for folder in folder_classes(root, "val"):  # the official val archive: images, no classes
        for image in (root / "val" / folder).iterdir():
            image.rename(root / "val" / image.name)
        (root / "val" / folder).rmdir()
    with pytest.raises(UserError, match="no class sub-folders.*unpacks flat"):
        build_test_set("imagenet", root)

    root = image_folder_writer(tmp_path / "empty_class", num_classes=2, train_per_class=1, val_per_class=1)
    for image in (root / "train" / folder_classes(root, "train")[0]).iterdir():
        image.unlink()
    with pytest.raises(UserError, match="could not read .*train.*no valid file"):
        build_train_set("imagenet", root)


def test_imagenet_loader_and_subset(imagenet_root):
    dataset = build_train_set("imagenet", imagenet_root, normalize=True)
    loader = make_loader(dataset, batch_size=5, shuffle=True, seed=2)
    set_epoch(loader, 1)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [5, 5, 2]
    assert batches[0][0].shape == (5, 3, 224, 224)
    subset = first_examples(build_test_set("imagenet", imagenet_root), 4)
    assert len(subset) == 4 and dataset_num_classes(subset) == 3


# --- digits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    raw = load_digits()
    return {
        "train": build_train_set("digits", None),
        "test": build_test_set("digits", None),
        "raw": raw.data,
        "labels": raw.target,
    }


def test_digits_sizes_shapes_and_range(digits):
    train, test = digits["train"], digits["test"]
    assert (len(train), len(test)) == (1347, 450)
    assert num_classes("digits") == 10 and dataset_num_classes(train) == 10
    for dataset in (train, test):
        image, label = dataset[0]
        assert image.shape == (1, 8, 8) and image.dtype == torch.float32
        assert type(label) is int and 0 <= label < 10
        everything = torch.stack([dataset[i][0] for i in range(len(dataset))])
        assert everything.min() == 0.0 and everything.max() == 1.0
        assert set(dataset.targets) == set(range(10))


def test_digits_pixels_are_sklearns_over_16(digits):
    for dataset in (digits["train"], digits["test"]):
        image, label = dataset[0]
        row = int(dataset.indices[0])
        assert torch.equal(image.flatten().double(), torch.from_numpy(digits["raw"][row] / 16.0))
        assert label == int(digits["labels"][row])


def test_digits_split_is_disjoint_complete_and_fixed(digits):
    # Every image of load_digits is distinct, so its bytes identify its row.
    row_of = {(np.rint(row).astype(np.uint8)).tobytes(): index for index, row in enumerate(digits["raw"])}
    assert len(row_of) == 1797

    def rows(dataset):
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        as_bytes = (images * 16).round().to(torch.uint8).flatten(1).numpy()
        return [row_of[image.tobytes()] for image in as_bytes]

    train_rows, test_rows = rows(digits["train"]), rows(digits["test"])
    assert train_rows == list(digits["train"].indices) and test_rows == list(digits["test"].indices)
    assert not set(train_rows) & set(test_rows)
    assert sorted(train_rows + test_rows) == list(range(1797))
    assert [digits["labels"][r] for r in test_rows] == digits["test"].targets

    # The documented split, recomputed here.
    expected_train, expected_test = train_test_split(
        np.arange(1797), test_size=450, stratify=digits["labels"], random_state=0
    )
    assert train_rows == expected_train.tolist() and test_rows == expected_test.tolist()

    again = build_test_set("digits", "/ignored", download=True, verify_checksum=False)
    assert again.targets == digits["test"].targets
    assert all(torch.equal(again[i][0], digits["test"][i][0]) for i in range(len(again)))


def test_digits_split_is_stratified(digits):
    per_class = np.bincount(digits["labels"], minlength=10)
    in_test = np.bincount(digits["test"].targets, minlength=10)
    in_train = np.bincount(digits["train"].targets, minlength=10)
    assert (in_test + in_train == per_class).all()
    # Each class's share of the 450 test images, within one image.
    assert (np.abs(in_test - per_class * 450 / 1797) <= 1).all()
    assert (np.abs(in_test - 45) <= 2).all()


def test_digits_augmentations_and_normalize(digits):
    basic = build_train_set("digits", None, augment="basic")
    plain = build_train_set("digits", None, augment="none")
    assert all(torch.equal(basic[i][0], plain[i][0]) for i in range(10)), "no augmentation"
    for augment in ("autoaug", "cutout"):
        with pytest.raises(UserError, match=f"'{augment}' is not available for digits.*none, basic"):
            build_train_set("digits", None, augment=augment)
    with pytest.raises(UserError, match="normalize=True is not supported for digits"):
        build_test_set("digits", None, normalize=True)


def test_digits_items_are_copies(digits):
    image, _ = digits["test"][0]
    image.fill_(5.0)
    assert digits["test"][0][0].max() <= 1.0


def test_digits_loader(digits):
    loader = make_loader(digits["train"], batch_size=512, shuffle=True, seed=0)
    set_epoch(loader, 3)
    images, labels = next(iter(loader))
    assert images.shape == (512, 1, 8, 8) and labels.dtype == torch.int64
    assert len(first_examples(digits["test"], 100)) == 100


def test_cifar_and_imagenet_need_a_root():
    for name in ("cifar10", "imagenet"):
        with pytest.raises(UserError, match="data.root"):
            build_test_set(name, None)


@pytest.mark.parametrize("train, filename", [(True, "data_batch_1"), (False, "test_batch")])
def test_unchecked_cifar_batches_that_would_run_code_are_refused_by_name(train, filename, cifar_writer, tmp_path):
    root = cifar_writer(tmp_path, "cifar10", num_train=50, num_test=20)
    marker = tmp_path / "code-ran"
    crafted = root / "cifar-10-batches-py" / filename
    crafted.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # a pickle running a shell
    build = build_train_set if train else build_test_set
    with pytest.raises(UserError, match=f"refused to read {crafted}: it asks for (os|posix).system"):
        build("cifar10", root, verify_checksum=False)
    assert not marker.exists()
    # The refusal is specific to that file: the official-format batches still read.
    clean = cifar_writer(tmp_path / "clean", "cifar10", num_train=50, num_test=20)
    assert len(build("cifar10", clean, verify_checksum=False)) == (50 if train else 20)
