"""The loaders of a distillation run, as its config chooses them.

Training: the dataset's training set (ImageNet-LT's list, or a long-tailed subset of it with ``data.long_tail``)
with crops and flips (none on the 8x8 digits; a strong RandAugment view beside it for MLKD), in seeded
DataLoader workers, each process taking its share of every global batch (`engine.data.samplers`);
with each sample's index when the distiller reads it (CRD's memory bank). Validation: the test
set, dealt to the processes in whole batches, so that the counts equal one process's exactly.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from engine import data as data_lib
from engine.data.transforms import evaluation_transform, training_transform
from engine.distributed import rank, world_size

from .config import KDConfig


@dataclass
class Loaders:
    num_classes: int
    train: DataLoader
    val: DataLoader
    train_targets: Optional[torch.Tensor]  # the training labels, when the samples come with their indices
    train_counts: Optional[List[int]] = None  # training images per class of a long-tailed set (shot-wise accuracy)


IMAGENET_LT_CLASSES = 1000


def imagenet_lt_sets(cfg: KDConfig, views: int = 1) -> Tuple[Dataset, Dataset]:
    """ImageNet-LT's training list and the evaluated list (``data.eval_list``) over the ImageNet folder
    ``data.root``, with ImageNet's training and evaluation transforms (`engine.data.ImageListDataset` checks
    every line and file)."""
    data = cfg.data
    lists = Path(data.lists)
    train_list, val_list, test_list = (lists / name for name in data_lib.IMAGENET_LT_LISTS)
    augment = "randaugment" if views == 2 else "basic"
    train_set = data_lib.ImageListDataset(
        data.root, train_list, training_transform("imagenet", augment, data.normalize), IMAGENET_LT_CLASSES
    )
    evaluated = test_list if data.eval_list == "test" else val_list
    eval_set = data_lib.ImageListDataset(
        data.root, evaluated, evaluation_transform("imagenet", data.normalize), IMAGENET_LT_CLASSES
    )
    return train_set, eval_set


def long_tailed_subset(train_set: Dataset, max_per_class: int, min_per_class: int, num_classes: int) -> Subset:
    """The first n_c training images of each class c, n_c from ``max_per_class`` down to ``min_per_class``
    (`engine.data.long_tailed_indices`), with their ``targets``."""
    indices = data_lib.long_tailed_indices(train_set.targets, max_per_class, min_per_class, num_classes)
    subset = Subset(train_set, indices)
    subset.targets = [train_set.targets[i] for i in indices]
    return subset


class RepeatedViews(Dataset):
    """``([image] * views, label)`` items of a dataset without augmentation (digits): a two-view distiller's weak
    and strong view are then the same plain image."""

    def __init__(self, dataset: Dataset, views: int):
        self.dataset, self.views = dataset, views
        self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return [image] + [image.clone() for _ in range(self.views - 1)], label


def build_loaders(cfg: KDConfig, device: torch.device, with_indices: bool, views: int = 1) -> Loaders:
    """The training and validation loaders of ``cfg`` on ``device``; ``with_indices``: training
    samples are ``(image, label, index)`` and the labels of the whole set are kept; ``views`` 2: the
    training image is a list [weak, strong] (MLKD's RandAugment view; on digits the plain image twice).
    A long-tailed set (imagenet_lt, or ``data.long_tail``) also gives its training images per class."""
    data = cfg.data
    augment = "none" if data.dataset == "digits" else ("randaugment" if views == 2 else "basic")
    kwargs = dict(download=data.download, verify_checksum=data.verify_checksum, normalize=data.normalize)
    train_counts = None
    if data.dataset == "imagenet_lt":
        train_set, val_set = imagenet_lt_sets(cfg, views)
        classes = IMAGENET_LT_CLASSES
    else:
        train_set = data_lib.build_train_set(data.dataset, data.root, augment=augment, **kwargs)
        val_set = data_lib.build_test_set(data.dataset, data.root, **kwargs)
        classes = data_lib.num_classes(data.dataset)
        if data.long_tail:
            train_set = long_tailed_subset(train_set, *data.long_tail, classes)
        if views > 1 and augment == "none":
            train_set = RepeatedViews(train_set, views)
    if data.dataset == "imagenet_lt" or data.long_tail:
        train_counts = data_lib.class_counts(train_set.targets, classes)
    train_targets = None
    if with_indices:
        train_set = data_lib.WithIndices(train_set)
        train_targets = torch.as_tensor(train_set.dataset.targets)
    pin = device.type == "cuda"
    shard = dict(rank=rank(), world_size=world_size())  # the training batch is global: each process takes its share
    train = data_lib.make_loader(
        train_set,
        batch_size=data.batch_size,
        shuffle=True,
        num_workers=data.num_workers,
        seed=cfg.seed,
        pin_memory=pin,
        drop_last=data.drop_last,
        **shard,
    )
    val = data_lib.make_eval_loader(
        val_set, batch_size=data.test_batch_size, num_workers=data.num_workers, pin_memory=pin, **shard
    )
    return Loaders(classes, train, val, train_targets, train_counts)
