"""Loaders: seeded DataLoaders for training and evaluation, and the CIFAR training set resident on
the device.

Randomness. Every random transform draws from torch's RNG. With ``num_workers=0`` that is
the main process's global RNG, which the trainer saves and restores with its checkpoints.
With workers, DataLoader seeds each worker's RNGs (torch, ``random``, numpy) from a base seed
it draws from the loader's generator at the start of each epoch; as `set_epoch` reseeds
that generator, the augmentations of epoch ``e`` then depend only on (seed, epoch,
num_workers), like the shuffle order.

`DeviceBatches` (``data.loader=device``) keeps the whole CIFAR training set on the device and
augments it there a batch at a time. A WRN-34-10 IKL-AT step on a recent GPU is short enough that DataLoader workers decoding,
cropping and flipping one PIL image at a time, then copying float batches to the GPU, can
starve it. `DeviceBatches` holds the 50,000 images once on the device as uint8 (150 MB),
draws each epoch's order and every batch's crops and flips there (`engine.data.transforms`, the
distribution of torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``)
and yields uint8 NCHW batches already on the device: no worker, no copy, no host
synchronisation.

Its draws come from a generator on the device seeded by (seed, epoch), so an epoch depends
only on them (a resumed run trains the epoch an uninterrupted one would) and on the device
type: the CPU and CUDA generators give different streams of the same distribution. Under N
processes every process draws the same global batch and takes its contiguous share, as
`engine.data.samplers.ShardedBatchSampler`.
"""

import functools
import random
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from ..environment import RANK_SEED_STRIDE
from ..errors import UserError
from .samplers import DealtBatchSampler, ShardedBatchSampler, _epoch_seed, require_global_batch_divides, shard_bounds
from .transforms import crop_flip, draw_crop_flip, keyed_generator


class SeededDataLoader(DataLoader):
    """A DataLoader whose ``generator`` (shuffle order, worker seeds) `set_epoch` reseeds."""

    def __init__(self, *args, seed: int, **kwargs):
        self.seed = seed
        super().__init__(*args, **kwargs)


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


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
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
    common = dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
        seed=seed,
        worker_init_fn=functools.partial(_seed_worker_for_rank, rank=rank) if rank > 0 else None,
    )
    if world_size == 1:
        return SeededDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)
    require_global_batch_divides(batch_size, world_size)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = ShardedBatchSampler(order, batch_size, drop_last, rank, world_size)
    return SeededDataLoader(dataset, batch_sampler=sampler, **common)


def make_eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """An evaluation DataLoader over ``dataset`` in order: whole batches of ``batch_size`` (per
    process), dealt to the processes (`DealtBatchSampler`). Sum the counts over processes.
    Iterating it draws nothing from the global random stream."""
    sampler = DealtBatchSampler(len(dataset), batch_size, rank, world_size)
    # Its own generator: a DataLoader draws its workers' base seed at every pass, and drawing it
    # from the global RNG would make evaluating shift the training's random stream.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def global_batch_sizes(loader) -> Optional[List[int]]:
    """The size of each global batch of an epoch of a training loader, known on the host: what
    `engine.distributed.global_batch_share` divides by. None for a one-process DataLoader (its
    batches are the global ones). Loaders that shard global batches say it themselves
    (``global_sizes()``: `ShardedBatchSampler`, `DeviceBatches`, the
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
    elif callable(getattr(loader, "set_epoch", None)):  # DeviceBatches
        loader.set_epoch(epoch)
    elif callable(getattr(loader.sampler, "set_epoch", None)):
        loader.sampler.set_epoch(epoch)
    else:
        raise TypeError(
            f"set_epoch needs a loader built by make_loader or a sampler with set_epoch, "
            f"got {type(loader).__name__} with {type(loader.sampler).__name__}"
        )


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

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        *,
        batch_size: int,
        device: torch.device,
        seed: int,
        augment: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(
                f"the device-resident loader needs uint8 N x H x W x C images, got {images.dtype} "
                f"{images.shape}; use data.loader=workers"
            )
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        require_global_batch_divides(batch_size, world_size)
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
            indices = order[position + start : position + end]
            position += size
            images = self.images[indices]
            if self.augment:
                images = crop_flip(images, top[start:end], left[start:end], flip[start:end])
            else:
                images = images.permute(0, 3, 1, 2).contiguous()
            yield images, self.labels[indices]
