"""CIFAR-10/100 datasets, training augmentations and reproducibly shuffled loaders.

Images come out as float tensors in [0, 1] with no normalisation: models that expect
normalised inputs normalise inside, so adversarial budgets stay in pixel units.

The data is read by torchvision's own ``CIFAR10``/``CIFAR100`` classes. A missing or
corrupted dataset becomes one `UserError` saying what to fetch and where to put it.

Training augmentations (``augment``) follow the reference code of the DKL paper:

* ``none``: the image as it is;
* ``basic``: random 32x32 crop of the 4-pixel zero-padded image, then a random horizontal flip;
* ``autoaug`` and ``cutout``: two views per image, ``((x_basic, x_augmented), y)``, where
  ``x_basic`` is a ``basic`` draw and ``x_augmented`` is another crop/flip followed by
  AutoAugment's CIFAR-10 policy, or by one 16x16 Cutout hole. Batched by the default
  collate, they arrive as ``[x_basic_batch, x_augmented_batch], y_batch``.

Randomness. Every random transform draws from torch's RNG. With ``num_workers=0`` that is
the main process's global RNG, which the trainer saves and restores with its checkpoints.
With workers, DataLoader seeds each worker's RNGs (torch, ``random``, numpy) from a base seed
it draws from the loader's generator at the start of each epoch; as `set_epoch` reseeds
that generator, the augmentations of epoch ``e`` then depend only on (seed, epoch,
num_workers), like the shuffle order.
"""
import os
import pickle
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from .errors import UserError

PathLike = Union[str, os.PathLike]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
AUGMENTATIONS = ("none", "basic", "autoaug", "cutout")

_DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def num_classes(dataset: str) -> int:
    """The number of classes of ``dataset`` ("cifar10" or "cifar100")."""
    _check_dataset_name(dataset)
    return NUM_CLASSES[dataset]


def _check_dataset_name(dataset: str) -> None:
    if dataset not in NUM_CLASSES:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(NUM_CLASSES)}")


# --- reading the files ---------------------------------------------------------------------

def _without_checksums(entries):
    # torchvision's check_integrity(path, None) only tests that the file exists.
    return [[filename, None] for filename, _ in entries]


class _CIFAR10FilesOnly(datasets.CIFAR10):
    """torchvision's CIFAR10 checking that the files exist rather than their MD5 sums.

    For CIFAR-format data written locally (tests, subsets), which cannot match the
    official checksums. Reading, metadata and transforms are torchvision's, unchanged.
    """

    train_list = _without_checksums(datasets.CIFAR10.train_list)
    test_list = _without_checksums(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class _CIFAR100FilesOnly(datasets.CIFAR100):
    """`_CIFAR10FilesOnly` for CIFAR-100."""

    train_list = _without_checksums(datasets.CIFAR100.train_list)
    test_list = _without_checksums(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


_CLASSES = {
    ("cifar10", True): datasets.CIFAR10,
    ("cifar10", False): _CIFAR10FilesOnly,
    ("cifar100", True): datasets.CIFAR100,
    ("cifar100", False): _CIFAR100FilesOnly,
}


def _expected_files(cls) -> list:
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _open(dataset: str, root: PathLike, *, train: bool, transform: Callable, download: bool,
          verify_checksum: bool) -> Dataset:
    _check_dataset_name(dataset)
    cls = _CLASSES[dataset, verify_checksum]
    name = _DISPLAY_NAMES[dataset]
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    unreadable = f"the {name} files in {folder} could not be read as CIFAR python batches"
    try:
        return cls(root, train=train, transform=transform, download=download)
    except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
        cause = error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        # Only reachable with verify_checksum=False: the official files are checked first.
        raise UserError(f"{unreadable} ({type(error).__name__}: {error})") from None

    if all((folder / filename).is_file() for filename in _expected_files(cls)):
        # With checksums on, torchvision refuses present files only when their MD5 differs
        # (and download=True then tries, and here failed, to fetch them again).
        if verify_checksum:
            raise UserError(
                f"the {name} files in {folder} do not match the official checksums (a corrupted or "
                f"incomplete download?): delete the folder and download it again (data.download=true); "
                f"only for CIFAR-format data you generated yourself, set data.verify_checksum=false"
            )
        raise UserError(f"{unreadable} ({type(cause).__name__}: {cause})")
    if download:
        failed, alternative = f"downloading {name} failed ({type(cause).__name__}: {cause}); ", ""
    else:
        failed, alternative = "", ", or set data.download=true to fetch it"
    raise UserError(
        f"{failed}{name} not found: expected the folder {folder} holding "
        f"{', '.join(_expected_files(cls))}. Get {cls.url} and extract it inside {root} (it unpacks "
        f"to {cls.base_folder}/){alternative}, or point data.root=... at the folder that contains "
        f"{cls.base_folder}"
    )


# --- augmentations -------------------------------------------------------------------------

class Cutout:
    """Zero one ``size`` x ``size`` square of a CHW tensor image, at a random place.

    As in DeVries & Taylor (2017), which the reference code uses: the centre is uniform over
    all pixels and the square is clipped at the borders, so holes near an edge are smaller.
    The centre is drawn from torch's RNG, so seeding torch reproduces the holes.
    """

    def __init__(self, size: int = 16):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        centre_y = int(torch.randint(height, ()))
        centre_x = int(torch.randint(width, ()))
        top, bottom = max(centre_y - self.size // 2, 0), min(centre_y + self.size // 2, height)
        left, right = max(centre_x - self.size // 2, 0), min(centre_x + self.size // 2, width)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class TwoViews:
    """Return ``(basic(image), augmented(image))``: two independent draws of one image."""

    def __init__(self, basic: Callable, augmented: Callable):
        self.basic = basic
        self.augmented = augmented

    def __call__(self, image):
        return self.basic(image), self.augmented(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(basic={self.basic!r}, augmented={self.augmented!r})"


def _crop_flip() -> list:
    return [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]


def _train_transform(augment: str) -> Callable:
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return transforms.ToTensor()
    basic = transforms.Compose([*_crop_flip(), transforms.ToTensor()])
    if augment == "basic":
        return basic
    if augment == "autoaug":
        # AutoAugment works on the PIL image, before the conversion to a tensor.
        policy = transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10)
        augmented = transforms.Compose([*_crop_flip(), policy, transforms.ToTensor()])
    else:
        augmented = transforms.Compose([*_crop_flip(), transforms.ToTensor(), Cutout(16)])
    return TwoViews(basic, augmented)


# --- public constructors -------------------------------------------------------------------

def build_train_set(dataset: str, root: PathLike, *, augment: str = "basic", download: bool = False,
                    verify_checksum: bool = True) -> Dataset:
    """The training split of ``dataset`` under ``root``, with the ``augment`` transform.

    ``verify_checksum=False`` skips only the MD5 check of the official files (for locally
    written CIFAR-format data); the files must still all be there.
    """
    transform = _train_transform(augment)
    return _open(dataset, root, train=True, transform=transform, download=download,
                 verify_checksum=verify_checksum)


def build_test_set(dataset: str, root: PathLike, *, download: bool = False,
                   verify_checksum: bool = True) -> Dataset:
    """The test split of ``dataset`` under ``root``, as plain [0, 1] tensors."""
    return _open(dataset, root, train=False, transform=transforms.ToTensor(), download=download,
                 verify_checksum=verify_checksum)


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


# --- loaders -------------------------------------------------------------------------------

class SeededDataLoader(DataLoader):
    """A DataLoader whose ``generator`` (shuffle order, worker seeds) `set_epoch` reseeds."""

    def __init__(self, *args, seed: int, **kwargs):
        self.seed = seed
        super().__init__(*args, **kwargs)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct for distinct (seed, epoch) pairs while seeds are >= 0 and epochs < 100_003.
    return seed * 100_003 + epoch


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int = 0,
                drop_last: bool = False, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffle order and worker seeds come from a generator seeded by ``seed``.

    The generator starts in the state `set_epoch` gives epoch 0. Call ``set_epoch(loader, e)``
    before each epoch so that epoch ``e`` has the same order whether or not the run was
    interrupted and resumed before it.
    """
    generator = torch.Generator()
    generator.manual_seed(_epoch_seed(seed, 0))
    # persistent_workers stays off: a worker kept across epochs would not see the reseeding.
    return SeededDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                            drop_last=drop_last, pin_memory=pin_memory, generator=generator,
                            persistent_workers=False, seed=seed)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reseed ``loader``'s generator so that epoch ``epoch`` depends only on (seed, epoch)."""
    if not isinstance(loader, SeededDataLoader):
        raise TypeError(f"set_epoch needs a loader built by make_loader, got {type(loader).__name__}")
    loader.generator.manual_seed(_epoch_seed(loader.seed, epoch))
