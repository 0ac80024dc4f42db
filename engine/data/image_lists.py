"""Datasets read from image lists, as ImageNet-LT is published, and long-tailed subsamples.

An image list is a text file of ``relative/path/to/image.JPEG label`` lines, one per image,
the paths relative to a dataset folder (``root``) and the labels integers in
0..num_classes-1. ImageNet-LT (Liu et al., "Large-Scale Long-Tailed Recognition in an Open
World", CVPR 2019) is three such lists over the ImageNet folder: ``ImageNet_LT_train.txt``
(115,846 images of 1000 classes, 1280 down to 5 a class), ``ImageNet_LT_val.txt`` (20,000)
and ``ImageNet_LT_test.txt`` (50,000, 50 a class), with paths such as
``train/n01440764/n01440764_10026.JPEG``.

`ImageListDataset` checks the whole list against the folder when it is built, so that a
wrong path or a damaged list ends in one `UserError` before training starts rather than in a
worker's traceback hours later. `long_tailed_indices` cuts an exponential long-tailed profile
out of a larger list, for small demos and tests.
"""

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from ..errors import UserError

IMAGENET_LT_LISTS = ("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt")
IMAGENET_LT_SOURCE = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR"

_LINE_FORMAT = "`relative/path/to/image.JPEG label` (a path, a space, an integer label)"


def _load_rgb(path: str):
    # torchvision's ImageFolder loader (PIL, converted to RGB), so both datasets give the same images.
    from torchvision.datasets.folder import default_loader  # here: torchvision's import is slow

    return default_loader(path)


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")


def _read_list(list_file: Path, num_classes: int) -> List[Tuple[int, str, int]]:
    """The (line number, relative path, label) of every non-blank line of ``list_file``."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"image list {list_file} not found. ImageNet-LT's lists ({', '.join(IMAGENET_LT_LISTS)}) are "
            f"published by the OLTR authors: follow the data-preparation link of {IMAGENET_LT_SOURCE}, "
            f"download them and pass the path of one"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"could not read the image list {list_file} as text: {error}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue  # blank lines (a trailing one is common) list nothing
        if len(fields) != 2:
            raise UserError(f"{list_file}, line {number}: expected {_LINE_FORMAT}, got {line.strip()!r}")
        path, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(
                f"{list_file}, line {number}: the label {label_text!r} is not an integer; expected {_LINE_FORMAT}"
            ) from None
        if not 0 <= label < num_classes:
            raise UserError(
                f"{list_file}, line {number}: label {label} is out of range: labels are 0..{num_classes - 1} "
                f"(num_classes={num_classes})"
            )
        entries.append((number, path, label))
    if not entries:
        raise UserError(f"image list {list_file} lists no images (it is empty); expected one {_LINE_FORMAT} per line")
    return entries


def _check_images_exist(root: Path, list_file: Path, entries: List[Tuple[int, str, int]]) -> None:
    where = (
        f"root must be the folder that the paths of {list_file} are relative to "
        f"(for ImageNet-LT, the ImageNet folder that holds train/ and val/)"
    )
    if not root.is_dir():
        raise UserError(f"the image folder {root} does not exist or is not a folder; {where}")
    # One stat per image: about a second for ImageNet-LT's 115,846 training images.
    missing = [(number, path) for number, path, _ in entries if not os.path.isfile(os.path.join(root, path))]
    if missing:
        number, path = missing[0]
        raise UserError(
            f"{list_file}: {len(missing)} of {len(entries)} listed images are missing under {root}; "
            f"the first is on line {number}: {path} (looked for {os.path.join(root, path)}). {where}"
        )


def class_counts(targets: Sequence[int], num_classes: int) -> List[int]:
    """How many of ``targets`` are each class 0..num_classes-1 (zero for a class absent)."""
    _check_num_classes(num_classes)
    counts = [0] * num_classes
    for target in targets:
        if not 0 <= target < num_classes:
            raise UserError(f"label {target} is out of range: labels are 0..{num_classes - 1}")
        counts[target] += 1
    return counts


class ImageListDataset(Dataset):
    """The images an image list names under ``root``: ``(image, label)`` items.

    ``list_file`` holds ``relative/path label`` lines (blank lines are skipped); images are
    read as ImageFolder reads them (PIL, RGB) and passed through ``transform`` when given.
    ``samples`` holds the (full path, label) of every image in the list's order, ``targets``
    their labels, ``classes`` the names "0".."num_classes-1" (a list names no classes).

    Built only from a list whose every line parses, whose labels are in 0..num_classes-1 and
    whose every image is a file under ``root``; with ``require_all_classes`` also every class
    must have an image. Anything else is one `UserError` naming the list, the line and the fix.
    """

    def __init__(
        self,
        root,
        list_file,
        transform: Optional[Callable] = None,
        num_classes: int = 1000,
        *,
        require_all_classes: bool = False,
    ):
        _check_num_classes(num_classes)
        self.root = Path(root).expanduser()
        self.list_file = Path(list_file).expanduser()
        self.transform = transform
        entries = _read_list(self.list_file, num_classes)
        _check_images_exist(self.root, self.list_file, entries)
        self.samples = [(os.path.join(self.root, path), label) for _, path, label in entries]
        self.targets = [label for _, label in self.samples]
        self.classes = [str(label) for label in range(num_classes)]
        if require_all_classes:
            empty = [label for label, count in enumerate(class_counts(self.targets, num_classes)) if count == 0]
            if empty:
                first = ", ".join(str(label) for label in empty[:5]) + (", ..." if len(empty) > 5 else "")
                raise UserError(
                    f"{self.list_file}: {len(empty)} of {num_classes} classes have no image (classes {first}); "
                    f"require_all_classes needs an image of every class 0..{num_classes - 1}: check that the "
                    f"list is complete and that num_classes={num_classes} is right"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = _load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(list_file={self.list_file}, root={self.root}, size={len(self)})"


def long_tailed_profile(max_per_class: int, min_per_class: int, num_classes: int) -> List[int]:
    """The images each class keeps: round(max * (min / max) ** (c / (num_classes - 1))) for class c.

    An exponential decay from ``max_per_class`` (class 0) to ``min_per_class`` (the last
    class), the profile of the long-tailed CIFAR and ImageNet-LT literature.
    """
    _check_num_classes(num_classes)
    if not 1 <= min_per_class <= max_per_class:
        raise UserError(
            f"a long-tailed profile needs 1 <= min_per_class <= max_per_class, "
            f"got min_per_class={min_per_class}, max_per_class={max_per_class}"
        )
    if num_classes == 1:
        return [max_per_class]  # the formula's exponent would divide by zero; one class is the head
    ratio = min_per_class / max_per_class
    return [round(max_per_class * ratio ** (label / (num_classes - 1))) for label in range(num_classes)]


def long_tailed_indices(targets: Sequence[int], max_per_class: int, min_per_class: int, num_classes: int) -> List[int]:
    """The indices of a long-tailed subsample of ``targets``, in their order (for `torch.utils.data.Subset`).

    Class c keeps its first n_c images in order, n_c from `long_tailed_profile`: class 0 the
    most, class num_classes-1 the fewest. A class with fewer than n_c images is a `UserError`.
    """
    wanted = long_tailed_profile(max_per_class, min_per_class, num_classes)
    available = class_counts(targets, num_classes)
    short = [label for label in range(num_classes) if available[label] < wanted[label]]
    if short:
        label = short[0]
        raise UserError(
            f"a long-tailed subsample from {max_per_class} down to {min_per_class} images a class needs "
            f"{wanted[label]} images of class {label}, which has {available[label]} "
            f"({len(short)} class{'es are' if len(short) > 1 else ' is'} short); "
            f"lower max_per_class or min_per_class, or start from a list with more images"
        )
    kept = [0] * num_classes
    indices = []
    for index, target in enumerate(targets):
        if kept[target] < wanted[target]:
            kept[target] += 1
            indices.append(index)
    return indices
