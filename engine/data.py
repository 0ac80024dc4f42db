"""Datasets (CIFAR-10/100, ImageNet, scikit-learn's digits), augmentations and seeded loaders.

Images come out as float tensors in [0, 1] unless ``normalize=True``. Adversarial training
keeps the default: its budgets (eps = 8/255, step sizes) are in pixel units and its clip to
[0, 1] is the valid image range, so the attack must see raw pixels; models that want
normalised inputs normalise inside (see ``models/dm_wide_resnet.py``). Knowledge
distillation passes ``normalize=True``, as mdistiller does: its teachers were trained on
normalised inputs and normalise nothing inside. The statistics are `DATASET_STATS`.

Datasets (``dataset``):

* ``cifar10``, ``cifar100``: read by torchvision's own ``CIFAR10``/``CIFAR100`` classes under
  ``root``. A missing or corrupted dataset becomes one `UserError` saying what to fetch and
  where to put it.
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

Training augmentations (``augment``) follow the reference code of the DKL paper on CIFAR:

* ``none``: the image as it is;
* ``basic``: random 32x32 crop of the 4-pixel zero-padded image, then a random horizontal flip;
* ``autoaug`` and ``cutout``: two views per image, ``((x_basic, x_augmented), y)``, where
  ``x_basic`` is a ``basic`` draw and ``x_augmented`` is another crop/flip followed by
  AutoAugment's CIFAR-10 policy (grey fill, as the reference; see `autoaugment_cifar`), or by
  one 16x16 Cutout hole. Batched by the default
  collate, they arrive as ``[x_basic_batch, x_augmented_batch], y_batch``.

ImageNet takes ``basic`` (RandomResizedCrop(224) and a horizontal flip, the standard recipe
of torchvision and mdistiller) and ``none`` (the test transform: Resize(256), CenterCrop(224)).
Digits take ``none`` and ``basic``, which both mean no augmentation: a 4-pixel crop of an
8x8 image or a flip (which turns some digits into others) are no sensible defaults. The other
combinations raise `UserError`. With ``normalize=True``, normalisation is the last step of
every view, after Cutout, so a normalised item is exactly ``(x - mean) / std`` of the
unnormalised one (Cutout's holes are black pixels, as without normalisation).

Randomness. Every random transform draws from torch's RNG. With ``num_workers=0`` that is
the main process's global RNG, which the trainer saves and restores with its checkpoints.
With workers, DataLoader seeds each worker's RNGs (torch, ``random``, numpy) from a base seed
it draws from the loader's generator at the start of each epoch; as `set_epoch` reseeds
that generator, the augmentations of epoch ``e`` then depend only on (seed, epoch,
num_workers), like the shuffle order.
"""
import contextlib
import functools
import os
import pickle
import random
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, Subset
from torchvision import datasets, transforms
from torchvision.datasets import cifar as cifar_module

from .errors import UserError
from .runtime import RANK_SEED_STRIDE

PathLike = Union[str, os.PathLike]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "digits": 10}
AUGMENTATIONS = ("none", "basic", "autoaug", "cutout")

# Per-channel (mean, std) of the training images in [0, 1], for ``normalize=True``.
# CIFAR-100 and ImageNet: mdistiller's numbers (mdistiller/dataset/cifar100.py, imagenet.py),
# which its released teachers were trained with. CIFAR-10 (mdistiller has none): the usual
# training-set statistics, as in models/dm_wide_resnet.py. (DeepMind's CIFAR-100 numbers in
# that file differ from mdistiller's in the fourth decimal; each model keeps its own.)
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Augmentations each dataset supports (see the module docstring for why).
_DATASET_AUGMENTATIONS = {
    "cifar10": AUGMENTATIONS,
    "cifar100": AUGMENTATIONS,
    "imagenet": ("none", "basic"),
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


# --- CIFAR files ---------------------------------------------------------------------------

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


class _CIFARBatchUnpickler(pickle.Unpickler):
    """Builds only what the official CIFAR python batches hold: dicts, lists, strings, bytes,
    numbers and numpy arrays. Any other global a file asks for (a crafted file's os.system,
    say) is refused before anything is built, naming the file."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3's pickle protocol 2 writes bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        source = getattr(self._file, "name", "a CIFAR batch file")
        raise UserError(f"refused to read {source}: it asks for {module}.{name}, which official CIFAR batches "
                        f"never hold (a crafted or foreign file?); replace it with the official file")

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._file = file


class _RestrictedPickle:
    """Stands in for the ``pickle`` module inside torchvision's CIFAR reader (see `_restricted_cifar_reads`)."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _CIFARBatchUnpickler(file, **kwargs).load()


@contextlib.contextmanager
def _restricted_cifar_reads():
    """torchvision reads CIFAR batches with plain ``pickle.load``; files whose MD5 is not checked
    (data.verify_checksum=false) are read with `_CIFARBatchUnpickler` instead, through the
    same torchvision code."""
    previous = cifar_module.pickle
    cifar_module.pickle = _RestrictedPickle
    try:
        yield
    finally:
        cifar_module.pickle = previous


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
        with contextlib.nullcontext() if verify_checksum else _restricted_cifar_reads():
            return cls(root, train=train, transform=transform, download=download)
    except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
        cause = error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError) as error:
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
        return datasets.ImageFolder(folder, transform=transform)
    except OSError as error:  # FileNotFoundError: a class folder without any image file
        raise UserError(f"ImageNet: could not read {folder}: {error}") from None


def _imagenet_test_steps() -> list:
    return [transforms.Resize(256), transforms.CenterCrop(224)]


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
    train_rows, test_rows = train_test_split(rows, test_size=DIGITS_TEST_SIZE, stratify=digits.target,
                                             random_state=DIGITS_SPLIT_SEED)
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


def _check_augment(dataset: str, augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    supported = _DATASET_AUGMENTATIONS[dataset]
    if augment not in supported:
        why = {
            "imagenet": "the two-view augmentations follow the CIFAR recipe with its 32x32 crops",
            "digits": "8x8 digits are not augmented; none and basic both give the plain images",
        }[dataset]
        raise UserError(f"augmentation {augment!r} is not available for {_DISPLAY_NAMES[dataset]} ({why}); "
                        f"choose one of: {', '.join(supported)}")


def _check_normalize(dataset: str, normalize: bool) -> None:
    if normalize and dataset not in DATASET_STATS:
        raise UserError(f"normalize=True is not supported for {_DISPLAY_NAMES[dataset]}: it has no "
                        f"normalisation statistics (its pixels are in [0, 1]); use normalize=False")


def _tensor_steps(dataset: str, normalize: bool) -> list:
    """ToTensor, then Normalize with the dataset's statistics when ``normalize``."""
    if not normalize:
        return [transforms.ToTensor()]
    mean, std = DATASET_STATS[dataset]
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]


def _compose(steps: list) -> Callable:
    return steps[0] if len(steps) == 1 else transforms.Compose(steps)


def _test_transform(dataset: str, normalize: bool) -> Callable:
    resize = _imagenet_test_steps() if dataset == "imagenet" else []
    return _compose([*resize, *_tensor_steps(dataset, normalize)])


# The reference's AutoAugment (autoaug.py, CIFAR10Policy) fills the areas that rotation, shear
# and translation uncover with grey (128, 128, 128); torchvision fills black unless told.
AUTOAUGMENT_FILL = [128, 128, 128]


def autoaugment_cifar() -> transforms.AutoAugment:
    """torchvision's AutoAugment with the CIFAR-10 policy and the reference's grey fill.

    It works on the PIL image, before the conversion to a tensor. The 25 sub-policies and
    their probabilities are the reference's. What still differs from the reference's own
    implementation: it shears with bicubic resampling (torchvision: nearest); it always
    rotates counter-clockwise (torchvision: a random sign); its solarize thresholds are
    linspace(256, 0) (torchvision: linspace(255, 0)); torchvision rounds translations to whole
    pixels; and it draws from Python's unseeded ``random`` (torchvision: torch's RNG, which
    the seed controls).
    """
    return transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10, fill=AUTOAUGMENT_FILL)


def _train_transform(dataset: str, augment: str, normalize: bool) -> Callable:
    _check_augment(dataset, augment)
    if augment == "none" or dataset == "digits":
        return _test_transform(dataset, normalize)
    to_tensor = _tensor_steps(dataset, normalize)
    if dataset == "imagenet":
        return transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   *to_tensor])
    basic = transforms.Compose([*_crop_flip(), *to_tensor])
    if augment == "basic":
        return basic
    if augment == "autoaug":
        policy = autoaugment_cifar()
        augmented = transforms.Compose([*_crop_flip(), policy, *to_tensor])
    else:
        # The hole is cut before normalising, so it is black whether or not one normalises.
        augmented = transforms.Compose([*_crop_flip(), transforms.ToTensor(), Cutout(16), *to_tensor[1:]])
    return TwoViews(basic, augmented)


# --- public constructors -------------------------------------------------------------------

def _open_dataset(dataset: str, root: Optional[PathLike], *, train: bool, transform: Callable,
                  download: bool, verify_checksum: bool) -> Dataset:
    if dataset == "digits":
        return Digits(train=train)  # deterministic: the transform is the identity
    if root is None or str(root) == "":
        raise UserError(f"{_DISPLAY_NAMES[dataset]} needs data.root=... (the folder that holds the dataset)")
    if dataset == "imagenet":
        return _open_imagenet(root, train=train, transform=transform, download=download)
    return _open(dataset, root, train=train, transform=transform, download=download,
                 verify_checksum=verify_checksum)


def build_train_set(dataset: str, root: Optional[PathLike], *, augment: str = "basic", download: bool = False,
                    verify_checksum: bool = True, normalize: bool = False) -> Dataset:
    """The training split of ``dataset`` under ``root``, with the ``augment`` transform.

    ``verify_checksum=False`` skips only the MD5 check of the official CIFAR files (for
    locally written CIFAR-format data); the files must still all be there. ``normalize=True``
    ends every view with ``Normalize(*DATASET_STATS[dataset])`` (knowledge distillation;
    adversarial training keeps pixels in [0, 1]). ImageNet ignores ``verify_checksum``;
    digits ignore ``root``, ``download`` and ``verify_checksum`` and refuse ``normalize``.
    """
    _check_dataset_name(dataset)
    _check_normalize(dataset, normalize)
    transform = _train_transform(dataset, augment, normalize)
    return _open_dataset(dataset, root, train=True, transform=transform, download=download,
                         verify_checksum=verify_checksum)


def build_test_set(dataset: str, root: Optional[PathLike], *, download: bool = False,
                   verify_checksum: bool = True, normalize: bool = False) -> Dataset:
    """The test split of ``dataset`` under ``root`` (ImageNet: ``val/``), without augmentation.

    Plain [0, 1] tensors, or normalised ones with ``normalize=True``; ImageNet images are
    resized to 256 on the shorter side and centre-cropped to 224x224 first.
    """
    _check_dataset_name(dataset)
    _check_normalize(dataset, normalize)
    return _open_dataset(dataset, root, train=False, transform=_test_transform(dataset, normalize),
                         download=download, verify_checksum=verify_checksum)


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


class ShardedBatchSampler(Sampler[List[int]]):
    """This process's share of every global batch: the global batches are those one process
    would draw from ``sampler`` (same order), and each is cut into ``world_size`` contiguous,
    near-equal parts, the ``rank``-th of which is yielded.

    So ``batch_size`` stays the global batch under any number of processes, and N processes
    see, batch for batch, the images one process sees. A last global batch smaller than the
    number of processes is dropped (some process would get no image); `shard_sizes` says how
    many images each process gets.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, rank: int, world_size: int):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world_size = rank, world_size

    def _global_batches(self) -> Iterator[List[int]]:
        batch: List[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last and len(batch) >= self.world_size:
            yield batch

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self._global_batches():
            start, end = shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:end]

    def global_sizes(self) -> List[int]:
        """The size of every global batch of an epoch, in order (the same on every process)."""
        full, rest = divmod(len(self.sampler), self.batch_size)
        keep_rest = rest and not self.drop_last and rest >= self.world_size
        return [self.batch_size] * full + ([rest] if keep_rest else [])

    def __len__(self) -> int:
        return len(self.global_sizes())


def shard_bounds(size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[start, end) of process ``rank``'s contiguous part of ``size`` items (sizes differ by at most one)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _seed_worker_for_rank(worker_id: int, rank: int) -> None:
    """``worker_init_fn`` of process ``rank`` > 0: move its workers' seeds off rank 0's.

    torch seeds worker ``w`` with ``base_seed + w``, and ``base_seed`` comes from the loader's
    generator, which every process seeds alike (they must agree on the shuffle order). Left
    so, worker ``w`` of every process would draw the same augmentations (crops, flips,
    AutoAugment) for its images. Rank 0 keeps torch's seeds, so a one-process run is unchanged.
    """
    seed = (torch.initial_seed() + RANK_SEED_STRIDE * rank) % 2**64
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int = 0,
                drop_last: bool = False, seed: int = 0, pin_memory: bool = False,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """A training DataLoader whose shuffle order and worker seeds come from a generator seeded by ``seed``.

    The generator starts in the state `set_epoch` gives epoch 0. Call ``set_epoch(loader, e)``
    before each epoch so that epoch ``e`` has the same order whether or not the run was
    interrupted and resumed before it. With ``world_size`` > 1, ``batch_size`` is the global
    batch and this process gets its share of each (`ShardedBatchSampler`), with the order of
    one process; its workers draw their own augmentations (`_seed_worker_for_rank`).
    """
    generator = torch.Generator()
    generator.manual_seed(_epoch_seed(seed, 0))
    # persistent_workers stays off: a worker kept across epochs would not see the reseeding.
    common = dict(num_workers=num_workers, pin_memory=pin_memory, generator=generator, persistent_workers=False, seed=seed,
                  worker_init_fn=functools.partial(_seed_worker_for_rank, rank=rank) if rank > 0 else None)
    if world_size == 1:
        return SeededDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)
    if batch_size % world_size != 0:
        raise UserError(f"the batch size {batch_size} is the global batch and must divide by the {world_size} "
                        f"processes; choose a multiple of {world_size}")
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = ShardedBatchSampler(order, batch_size, drop_last, rank, world_size)
    return SeededDataLoader(dataset, batch_sampler=sampler, **common)


class DealtBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size`` consecutive items (the last one may be smaller), dealt in turn:
    process ``rank`` gets batches ``rank``, ``rank + world_size``, ``rank + 2 * world_size``, ...

    For evaluation. Each batch is exactly one that a single process evaluates, so every
    image's result, and hence the counts summed over processes, equal one process's bit for
    bit (a batch cut into smaller parts could take other kernels and differ in the last
    bits, which a sign step of an attack turns into another answer). No image is padded in
    or counted twice; a process may get one batch fewer than another, or none.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int):
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size

    def __iter__(self) -> Iterator[List[int]]:
        for start in range(self.rank * self.batch_size, self.size, self.world_size * self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        batches = -(-self.size // self.batch_size)
        return len(range(self.rank, batches, self.world_size))


def make_eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                     rank: int = 0, world_size: int = 1) -> DataLoader:
    """An evaluation DataLoader over ``dataset`` in order: whole batches of ``batch_size`` (per
    process), dealt to the processes (`DealtBatchSampler`). Sum the counts over processes.
    Iterating it draws nothing from the global random stream."""
    sampler = DealtBatchSampler(len(dataset), batch_size, rank, world_size)
    # Its own generator: a DataLoader draws its workers' base seed at every pass, and drawing it
    # from the global RNG would make evaluating shift the training's random stream.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))


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


def global_batch_sizes(loader) -> Optional[List[int]]:
    """The size of each global batch of an epoch of a training loader, known on the host: what
    `engine.distributed.global_batch_share` divides by. None for a one-process DataLoader (its
    batches are the global ones). Loaders that shard global batches say it themselves
    (``global_sizes()``: `ShardedBatchSampler`, `engine.device_data.DeviceBatches`, the
    generated-data mixing sampler)."""
    for source in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if callable(getattr(source, "global_sizes", None)):
            return source.global_sizes()
    return None


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make epoch ``epoch`` of ``loader`` depend only on (seed, epoch): reseed the generator of a
    `make_loader` loader, or tell a loader or sampler that draws by epoch (``set_epoch``)."""
    if isinstance(loader, SeededDataLoader):
        loader.generator.manual_seed(_epoch_seed(loader.seed, epoch))
    elif callable(getattr(loader, "set_epoch", None)):  # engine.device_data.DeviceBatches
        loader.set_epoch(epoch)
    elif callable(getattr(loader.sampler, "set_epoch", None)):
        loader.sampler.set_epoch(epoch)
    else:
        raise TypeError(f"set_epoch needs a loader built by make_loader or a sampler with set_epoch, "
                        f"got {type(loader).__name__} with {type(loader.sampler).__name__}")
