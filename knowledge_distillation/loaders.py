"""The loaders of a distillation run, as its config chooses them.

Training: the dataset's training set with crops and flips (none on the 8x8 digits), in seeded
DataLoader workers, each process taking its share of every global batch (`engine.data.samplers`);
with each sample's index when the distiller reads it (CRD's memory bank). Validation: the test
set, dealt to the processes in whole batches, so that the counts equal one process's exactly.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from engine import data as data_lib
from engine.distributed import rank, world_size

from .config import KDConfig


@dataclass
class Loaders:
    num_classes: int
    train: DataLoader
    val: DataLoader
    train_targets: Optional[torch.Tensor]  # the training labels, when the samples come with their indices


def build_loaders(cfg: KDConfig, device: torch.device, with_indices: bool) -> Loaders:
    """The training and validation loaders of ``cfg`` on ``device``; ``with_indices``: training
    samples are ``(image, label, index)`` and the labels of the whole set are kept."""
    data = cfg.data
    augment = "none" if data.dataset == "digits" else "basic"
    kwargs = dict(download=data.download, verify_checksum=data.verify_checksum, normalize=data.normalize)
    train_set = data_lib.build_train_set(data.dataset, data.root, augment=augment, **kwargs)
    train_targets = None
    if with_indices:
        train_set = data_lib.WithIndices(train_set)
        train_targets = torch.as_tensor(train_set.dataset.targets)
    val_set = data_lib.build_test_set(data.dataset, data.root, **kwargs)
    pin = device.type == "cuda"
    shard = dict(rank=rank(), world_size=world_size())  # the training batch is global: each process takes its share
    train = data_lib.make_loader(
        train_set,
        batch_size=data.batch_size,
        shuffle=True,
        num_workers=data.num_workers,
        seed=cfg.seed,
        pin_memory=pin,
        **shard,
    )
    val = data_lib.make_eval_loader(
        val_set, batch_size=data.test_batch_size, num_workers=data.num_workers, pin_memory=pin, **shard
    )
    return Loaders(data_lib.num_classes(data.dataset), train, val, train_targets)
