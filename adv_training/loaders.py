"""The loaders of an adversarial-training run, as its config chooses them.

Training: the generated-data mixing loader (``generated.path``), the CIFAR training set resident
on the device (``data.loader``), or seeded DataLoader workers; each gives every process its
share of each global batch (`engine.data.samplers`). Evaluation: the first ``eval.num_examples``
test images, and the monitored set (those, or the ``data.validation_size`` held-out training
images), dealt to the processes in whole batches, so every count equals one process's.
"""

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from engine import data as data_lib
from engine.config import ConfigError
from engine.data import DeviceBatches
from engine.distributed import is_main_process, rank, world_size
from engine.errors import UserError

from .config import ATConfig
from .generated import make_mixed_loader, open_generated


@dataclass
class Loaders:
    num_classes: int
    train: Iterable  # a DataLoader, or DeviceBatches
    test: DataLoader  # clean accuracy on the first eval.num_examples test images
    monitor: DataLoader  # what the per-epoch PGD monitor attacks: the test loader, or the held-out images
    monitor_set: str  # "test" or "val": the key prefix of the monitor's numbers


def uses_device_loader(cfg: ATConfig, device: torch.device) -> bool:
    """data.loader resolved: device when asked, or for auto on CUDA where it applies (CIFAR,
    augment basic or none, no generated data, zero-padded crops without rotation)."""
    if cfg.data.loader != "auto":
        return cfg.data.loader == "device"
    return (
        device.type == "cuda"
        and not cfg.generated.path
        and cfg.data.dataset in ("cifar10", "cifar100")
        and cfg.data.augment in ("basic", "none")
        and cfg.data.padding_mode == "constant"  # its crops pad with zeros and never rotate
        and cfg.data.rotate_degrees == 0
    )


def held_out_indices(cfg: ATConfig, targets: Sequence[int]) -> np.ndarray:
    """The indices of the training images held out as the validation set, in the files' order: the first
    ``data.validation_size`` images (Wang et al.), or the first ``data.validation_per_class`` of each class
    (DAJAT's loop over the training set); none by default."""
    if cfg.data.validation_per_class:
        targets = np.asarray(targets)
        per_class = [np.flatnonzero(targets == label)[: cfg.data.validation_per_class] for label in np.unique(targets)]
        return np.sort(np.concatenate(per_class))
    return np.arange(min(cfg.data.validation_size, len(targets)))


def build_loaders(cfg: ATConfig, device: torch.device) -> Loaders:
    """The training, test and monitored loaders of ``cfg`` on ``device``."""
    num_classes = data_lib.num_classes(cfg.data.dataset)
    train_set = data_lib.build_train_set(
        cfg.data.dataset,
        cfg.data.root,
        augment=cfg.data.augment,
        download=cfg.data.download,
        verify_checksum=cfg.data.verify_checksum,
        padding_mode=cfg.data.padding_mode,
        rotate_degrees=cfg.data.rotate_degrees,
        augmented_views=cfg.data.augmented_views,
    )
    full_test_set = data_lib.build_test_set(
        cfg.data.dataset, cfg.data.root, download=cfg.data.download, verify_checksum=cfg.data.verify_checksum
    )
    if cfg.eval.num_examples is not None and cfg.eval.num_examples > len(full_test_set):
        raise ConfigError(
            f"config key 'eval.num_examples' ({cfg.eval.num_examples}) is more than the {len(full_test_set)} "
            f"images of the {cfg.data.dataset} test set; use eval.num_examples=null for all of them"
        )
    test_set = data_lib.first_examples(full_test_set, cfg.eval.num_examples)
    held_out = held_out_indices(cfg, train_set.targets)
    if len(held_out) >= len(train_set):
        key = "validation_per_class" if cfg.data.validation_per_class else "validation_size"
        raise UserError(
            f"data.{key}={getattr(cfg.data, key)} leaves no training image: the training set has {len(train_set)}"
        )
    kept = np.setdiff1d(np.arange(len(train_set)), held_out)  # the training images, in the files' order
    shard = dict(rank=rank(), world_size=world_size())  # the training batch is global: each process takes its share
    if cfg.generated.path:
        # Rank 0 rehashes (reading 154 GB once, not once per process); a mismatch stops it, and torchrun the rest.
        generated = open_generated(
            cfg.generated.path, num_classes, verify_hashes=cfg.generated.verify_hashes and is_main_process()
        )
        train_loader = make_mixed_loader(
            train_set.data[kept],
            np.asarray(train_set.targets)[kept].tolist(),
            generated,
            batch_size=cfg.data.batch_size,
            unsup_fraction=cfg.generated.unsup_fraction,
            seed=cfg.seed,
            epoch_images=cfg.generated.epoch_images,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            augment=cfg.data.augment == "basic",
            rotate_degrees=cfg.generated.rotate_degrees,
            **shard,
        )
    elif uses_device_loader(cfg, device):
        train_loader = DeviceBatches(
            train_set.data[kept],
            np.asarray(train_set.targets)[kept].tolist(),
            batch_size=cfg.data.batch_size,
            device=device,
            seed=cfg.seed,
            augment=cfg.data.augment == "basic",
            drop_last=cfg.data.drop_last,
            **shard,
        )
    else:
        train_loader = data_lib.make_loader(
            Subset(train_set, kept.tolist()) if len(held_out) else train_set,
            batch_size=cfg.data.batch_size,
            shuffle=True,
            num_workers=cfg.data.num_workers,
            drop_last=cfg.data.drop_last,
            seed=cfg.seed,
            pin_memory=device.type == "cuda",
            **shard,
        )

    # Evaluation deals whole batches to the processes: the counts equal one process's exactly.
    def eval_loader(dataset):
        return data_lib.make_eval_loader(
            data_lib.WithIndices(dataset),
            batch_size=cfg.data.test_batch_size,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            **shard,
        )

    test_loader = eval_loader(test_set)
    if cfg.eval.split == "validation":  # the held-out images, without augmentation, as Wang et al.
        validation_set = data_lib.build_train_set(
            cfg.data.dataset, cfg.data.root, augment="none", verify_checksum=cfg.data.verify_checksum
        )
        monitor_loader, monitor_set = eval_loader(Subset(validation_set, held_out.tolist())), "val"
    else:
        monitor_loader, monitor_set = test_loader, "test"
    return Loaders(num_classes, train_loader, test_loader, monitor_loader, monitor_set)
