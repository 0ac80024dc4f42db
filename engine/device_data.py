"""The whole CIFAR training set resident on the device, augmented there a batch at a time.

A WRN-34-10 IKL-AT step on a recent GPU is short enough that DataLoader workers decoding,
cropping and flipping one PIL image at a time, then copying float batches to the GPU, can
starve it. `DeviceBatches` holds the 50,000 images once on the device as uint8 (150 MB),
draws each epoch's order and every batch's crops and flips there (`engine.augment`, the
distribution of torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``)
and yields uint8 NCHW batches already on the device: no worker, no copy, no host
synchronisation.

Its draws come from a generator on the device seeded by (seed, epoch), so an epoch depends
only on them (a resumed run trains the epoch an uninterrupted one would) and on the device
type: the CPU and CUDA generators give different streams of the same distribution. Under N
processes every process draws the same global batch and takes its contiguous share, as
`engine.data.ShardedBatchSampler`.
"""
from typing import Iterator, Sequence, Tuple

import numpy as np
import torch

from .augment import crop_flip, draw_crop_flip, keyed_generator
from .data import shard_bounds
from .errors import UserError


class DeviceBatches:
    """Training batches of (uint8 NCHW images, int64 labels) on ``device``.

        loader = DeviceBatches(train_set.data, train_set.targets, batch_size=128, device=device, seed=0)
        loader.set_epoch(epoch)          # or engine.data.set_epoch(loader, epoch)
        for images, labels in loader: ...

    ``images`` is the dataset's N x H x W x C uint8 array (torchvision's CIFAR ``.data``);
    ``augment=False`` yields the images as stored (shuffled still). ``batch_size`` is the
    global batch; the last, smaller one is kept unless ``drop_last`` (or it has fewer images
    than processes).
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], *, batch_size: int, device: torch.device,
                 seed: int, augment: bool = True, drop_last: bool = False, rank: int = 0, world_size: int = 1):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(f"the device-resident loader needs uint8 N x H x W x C images, got {images.dtype} "
                            f"{images.shape}; use data.loader=workers")
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        if world_size > 1 and batch_size % world_size:
            raise UserError(f"the batch size {batch_size} is the global batch and must divide by the {world_size} "
                            f"processes; choose a multiple of {world_size}")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size, self.device, self.seed = batch_size, torch.device(device), seed
        self.augment, self.drop_last, self.rank, self.world_size = augment, drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_sizes(self) -> list:
        """The size of every global batch of an epoch, in order (the same on every process)."""
        full, rest = divmod(len(self.images), self.batch_size)
        keep_rest = rest and not self.drop_last and rest >= self.world_size
        return [self.batch_size] * full + ([rest] if keep_rest else [])

    def __len__(self) -> int:
        return len(self.global_sizes())

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        generator = keyed_generator(self.seed, self.epoch, device=self.device)
        order = torch.randperm(len(self.images), generator=generator, device=self.device)
        position = 0
        for size in self.global_sizes():
            # Drawn for the whole global batch (every process draws alike), then this process's share.
            top, left, flip = draw_crop_flip(size, generator)
            start, end = shard_bounds(size, self.rank, self.world_size)
            indices = order[position + start:position + end]
            position += size
            images = self.images[indices]
            if self.augment:
                images = crop_flip(images, top[start:end], left[start:end], flip[start:end])
            else:
                images = images.permute(0, 3, 1, 2).contiguous()
            yield images, self.labels[indices]
