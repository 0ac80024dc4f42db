"""The datasets: CIFAR-10/100, ImageNet folders and scikit-learn's digits, with their transforms.

A missing or damaged dataset is one `UserError` saying what to fetch and where to put it.

Datasets (``dataset``):

* ``cifar10``, ``cifar100``: read by torchvision's own ``CIFAR10``/``CIFAR100`` classes under
  ``root`` (files whose MD5 is not checked, ``verify_checksum=False``, through a restricted
  unpickler).
* ``imagenet``: an ``ImageFolder`` tree, ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``,
  read by torchvision's ``ImageFolder`` (labels are the indices of the class folders in
  sorted order). It cannot be downloaded. Both splits must hold the same class folders.
  ``num_classes("imagenet")`` is 1000, the benchmark's, used to build models and load
  released weights; a tree with fewer classes (a subset, a test tree) still works, and
  `dataset_num_classes` says how many classes a built set holds.
* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits, shipped inside scikit-learn (no
  download; ``root``, ``download`` and ``verify_checksum`` are ignored), as [1, 8, 8] tensors
  in [0, 1], split once and for all into 1,347 training and 450 test images, stratified by
  class. A small real dataset for smoke tests and examples.

Each dataset admits the augmentations of `DATASET_AUGMENTATIONS` (`engine.data.transforms`):
ImageNet ``none`` and ``basic``; digits ``none`` and ``basic``, which both mean none (a 4-pixel
crop of an 8x8 image, or a flip that turns some digits into others, are no sensible defaults).
"""

import functools
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from .transforms import AUGMENTATIONS, NORMALIZE_STATS, evaluation_transform, training_transform

PathLike = Union[str, os.PathLike]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "digits": 10}

# Augmentations each dataset supports (see the module docstring for why).
DATASET_AUGMENTATIONS = {
    "cifar10": AUGMENTATIONS,
    "cifar100": AUGMENTATIONS,
    "imagenet": ("none", "basic", "randaugment"),
    "digits": ("none", "basic"),
}

_DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "digits": "digits"}


def num_classes(dataset: str) -> int:
    """The number of classes of the benchmark ``dataset`` (one of `NUM_CLASSES`), for building models.

    For ImageNet this is 1000 whatever the tree at ``root`` holds; see `dataset_num_classes`.
    """
    _check_dataset_name(dataset)
    return NUM_CLASSES[dataset]


def dataset_num_classes(dataset: Dataset) -> int:
    """The number of classes a built dataset (or a `Subset` of one) holds: ``len(dataset.classes)``.

    Equal to `num_classes` for the full benchmarks; smaller for an ImageNet subset tree.
    """
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise TypeError(f"dataset_num_classes needs a dataset with a `classes` list, got {type(dataset).__name__}")
    return len(classes)


def _check_dataset_name(dataset: str) -> None:
    if dataset not in NUM_CLASSES:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(NUM_CLASSES)}")


def _check_augment(dataset: str, augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    supported = DATASET_AUGMENTATIONS[dataset]
    if augment not in supported:
        why = {
            "imagenet": "autoaug and cutout follow the CIFAR recipe with its 32x32 crops",
            "digits": "8x8 digits are not augmented; none and basic both give the plain images",
        }[dataset]
        raise UserError(
            f"augmentation {augment!r} is not available for {_DISPLAY_NAMES[dataset]} ({why}); "
            f"choose one of: {', '.join(supported)}"
        )


def _check_normalize(dataset: str, normalize: bool) -> None:
    if normalize and dataset not in NORMALIZE_STATS:
        raise UserError(
            f"normalize=True is not supported for {_DISPLAY_NAMES[dataset]}: it has no "
            f"normalisation statistics (its pixels are in [0, 1]); use normalize=False"
        )


# --- ImageNet ------------------------------------------------------------------------------

_IMAGENET_SPLITS = ("train", "val")


def _class_folders(folder: Path) -> List[str]:
    # The rule of torchvision's find_classes: every sub-directory, sorted by name.
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _imagenet_not_found(root: Path, missing: List[str], download: bool) -> UserError:
    if download:
        opening = "ImageNet cannot be downloaded automatically (data.download=true does not fetch it) and "
    else:
        opening = "ImageNet cannot be downloaded automatically and "
    return UserError(
        f"{opening}was not found: {' and '.join(str(root / split) for split in missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing. Expected {root / 'train'} and {root / 'val'}, "
        f"each with one sub-folder per class holding that class's images (e.g. train/n01440764/"
        f"n01440764_10026.JPEG and val/n01440764/ILSVRC2012_val_00000293.JPEG). Get ILSVRC2012 from "
        f"https://image-net.org, unpack it into that layout (its validation archive is flat: sort the "
        f"images into class folders), and set data.root=... to the folder that contains train/ and val/"
    )


def _check_imagenet_tree(root: Path, download: bool) -> None:
    """Both split folders exist and hold the same class folders; else one `UserError`."""
    missing = [split for split in _IMAGENET_SPLITS if not (root / split).is_dir()]
    if missing:
        raise _imagenet_not_found(root, missing, download)
    classes = {}
    for split in _IMAGENET_SPLITS:
        classes[split] = _class_folders(root / split)
        if not classes[split]:
            flat = " (the official validation archive unpacks flat: sort its images into one folder per class)"
            raise UserError(
                f"ImageNet: {root / split} has no class sub-folders; expected one sub-folder per class "
                f"holding that class's images (e.g. {split}/n01440764/){flat if split == 'val' else ''}"
            )
    only_train = sorted(set(classes["train"]) - set(classes["val"]))
    only_val = sorted(set(classes["val"]) - set(classes["train"]))
    if only_train or only_val:

        def some(names):
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""

        raise UserError(
            f"ImageNet: the class folders of {root / 'train'} and {root / 'val'} differ: "
            f"{len(only_train)} only in train/{some(only_train)}, {len(only_val)} only in val/{some(only_val)}; "
            f"both splits need the same class folders, so that the labels (the folders' indices in "
            f"sorted order) mean the same classes"
        )


def _open_imagenet(root: PathLike, *, train: bool, transform: Callable, download: bool) -> Dataset:
    root = Path(root).expanduser()
    _check_imagenet_tree(root, download)
    folder = root / ("train" if train else "val")
    try:
        from torchvision.datasets import ImageFolder  # here: torchvision's import is slow

        return ImageFolder(folder, transform=transform)
    except OSError as error:  # FileNotFoundError: a class folder without any image file
        raise UserError(f"ImageNet: could not read {folder}: {error}") from None


# --- digits --------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 450  # of 1,797: 1,347 training images remain
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=None)
def _digits_split():
    """(images float64 [1797, 8, 8] in 0..16, labels, training rows, test rows), computed once."""
    # Imported here: scikit-learn's import is slow and only this dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows = np.arange(len(digits.target))
    train_rows, test_rows = train_test_split(
        rows, test_size=DIGITS_TEST_SIZE, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    for array in (digits.images, digits.target, train_rows, test_rows):
        array.setflags(write=False)  # shared by every Digits built in this process
    return digits.images, digits.target, train_rows, test_rows


class Digits(Dataset):
    """scikit-learn's handwritten digits: ``(image [1, 8, 8] float32 in [0, 1], label int)`` items.

    The 1,797 images of ``sklearn.datasets.load_digits`` (pixel values 0..16, divided by 16),
    split by ``train_test_split(test_size=450, stratify=labels, random_state=0)``: always the
    same 1,347 training and 450 test images. ``indices`` holds each item's row in
    ``load_digits()``. No transform: items are the images as they are.
    """

    classes = [str(digit) for digit in range(10)]

    def __init__(self, train: bool = True):
        images, labels, train_rows, test_rows = _digits_split()
        self.train = train
        self.indices = (train_rows if train else test_rows).copy()
        self.data = torch.from_numpy(images[self.indices] / 16.0).to(torch.float32).unsqueeze(1)
        self.targets = [int(label) for label in labels[self.indices]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        # A copy, so that a caller editing its image in place cannot change the dataset.
        return self.data[index].clone(), self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={'train' if self.train else 'test'}, size={len(self)})"


# --- public constructors -------------------------------------------------------------------


def _open_dataset(
    dataset: str, root: Optional[PathLike], *, train: bool, transform: Callable, download: bool, verify_checksum: bool
) -> Dataset:
    if dataset == "digits":
        return Digits(train=train)  # deterministic: the transform is the identity
    if root is None or str(root) == "":
        raise UserError(f"{_DISPLAY_NAMES[dataset]} needs data.root=... (the folder that holds the dataset)")
    if dataset == "imagenet":
        return _open_imagenet(root, train=train, transform=transform, download=download)
    _check_dataset_name(dataset)
    from .cifar import open_cifar  # here: torchvision's import is slow, and only CIFAR and ImageNet need it

    return open_cifar(
        dataset, root, train=train, transform=transform, download=download, verify_checksum=verify_checksum
    )


def build_train_set(
    dataset: str,
    root: Optional[PathLike],
    *,
    augment: str = "basic",
    download: bool = False,
    verify_checksum: bool = True,
    normalize: bool = False,
    padding_mode: str = "constant",
    rotate_degrees: float = 0.0,
    augmented_views: int = 1,
) -> Dataset:
    """The training split of ``dataset`` under ``root``, with the ``augment`` transform (autoaug and
    cutout: the basic view and ``augmented_views`` augmented ones).

    CIFAR's crops pad with ``padding_mode`` (constant or reflect) and are rotated by
    RandomRotation(``rotate_degrees``) when it is positive (`transforms.training_transform`);
    other datasets, and augment none, refuse anything but the defaults.

    ``verify_checksum=False`` skips only the MD5 check of the official CIFAR files (for
    locally written CIFAR-format data); the files must still all be there. ``normalize=True``
    ends every view with ``Normalize(*NORMALIZE_STATS[dataset])`` (knowledge distillation;
    adversarial training keeps pixels in [0, 1]). ImageNet ignores ``verify_checksum``;
    digits ignore ``root``, ``download`` and ``verify_checksum`` and refuse ``normalize``.
    """
    _check_dataset_name(dataset)
    _check_normalize(dataset, normalize)
    _check_augment(dataset, augment)
    try:
        transform = training_transform(
            dataset,
            augment,
            normalize,
            padding_mode=padding_mode,
            rotate_degrees=rotate_degrees,
            augmented_views=augmented_views,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    return _open_dataset(
        dataset, root, train=True, transform=transform, download=download, verify_checksum=verify_checksum
    )


def build_test_set(
    dataset: str,
    root: Optional[PathLike],
    *,
    download: bool = False,
    verify_checksum: bool = True,
    normalize: bool = False,
) -> Dataset:
    """The test split of ``dataset`` under ``root`` (ImageNet: ``val/``), without augmentation.

    Plain [0, 1] tensors, or normalised ones with ``normalize=True``; ImageNet images are
    resized to 256 on the shorter side and centre-cropped to 224x224 first.
    """
    _check_dataset_name(dataset)
    _check_normalize(dataset, normalize)
    return _open_dataset(
        dataset,
        root,
        train=False,
        transform=evaluation_transform(dataset, normalize),
        download=download,
        verify_checksum=verify_checksum,
    )


def first_examples(dataset: Dataset, num_examples: Optional[int]) -> Dataset:
    """The first ``num_examples`` items, in order; the whole set for None or a larger number.

    A fixed prefix rather than a random sample, as RobustBench evaluates the first N
    test images, so numbers on a subset compare with published ones.
    """
    if num_examples is None or num_examples >= len(dataset):
        return dataset
    if num_examples < 1:
        raise UserError(f"the number of examples must be positive (or null for all), got {num_examples}")
    return Subset(dataset, range(num_examples))


class WithIndices(Dataset):
    """``dataset``'s items with their index appended: ``(image, target, index)``.

    For randomness tied to the image rather than to the process or batch that sees it (the
    PGD monitor's attack starts, `adv_training.pgd_monitor`).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)
