r"""Generated images mixed into every training batch with real CIFAR images.

**Mixing** (`MixedBatchSampler`, Wang et al.'s ``SemiSupervisedSampler``): every batch of
``B`` holds ``int(unsup_fraction * B)`` generated images, drawn with replacement, and the rest
real images, taken in turn from a random permutation of the real set (a new permutation
when one runs out, a batch cut short there being topped up with generated images); an
epoch is ``ceil(50,000 / B)`` batches whatever N, so training time does not grow with the
data. The draws depend only on (seed, epoch): an epoch resumed after a stop is the epoch an
uninterrupted run trains. Under several processes every process draws the same global
batch, shuffles it (as the reference shuffles each batch) and takes its contiguous share.

**Augmentation** (`crop_flip`): the reference's ``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip`` on real and generated images alike (and for CIFAR-100 its
``RandomRotation(15)`` after them, `rotate_nearest`), done on a whole uint8 batch by
one gather, with a generator seeded by (seed, epoch, batch): the same batch gets the same
crops whichever DataLoader worker builds it and however many processes share it. Batches come out as uint8 NCHW tensors (a
quarter of float32's bytes to copy to the GPU); `as_float_images` turns them into [0, 1]
floats, the values ``ToTensor`` gives.
"""

import math
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.data import (
    crop_flip,
    draw_crop_flip,
    draw_rotations,
    keyed_generator,
    require_global_batch_divides,
    shard_bounds,
)
from engine.errors import UserError

from .store import IMAGE_SHAPE, REFERENCE_EPOCH_IMAGES, GeneratedSet


class MixedBatchSampler(Sampler["BatchKey"]):
    """Per epoch, ``epoch_batches`` global batches of ``batch_size`` indices: real images are
    ``0 .. num_real - 1``, generated ones ``num_real .. num_real + num_generated - 1``.

    Yields a `BatchKey` per batch: this process's indices and where they lie in the global
    batch. See the module's docstring.
    """

    def __init__(
        self,
        num_real: int,
        num_generated: int,
        *,
        batch_size: int,
        unsup_fraction: float,
        epoch_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= unsup_fraction < 1:
            raise UserError(f"unsup_fraction must lie in [0, 1), got {unsup_fraction}")
        require_global_batch_divides(batch_size, world_size)
        self.generated_per_batch = int(batch_size * unsup_fraction)  # the reference's int(): a floor
        if num_generated == 0 or num_real == 0:
            raise UserError(
                f"mixing needs real and generated images; got {num_real} real and {num_generated} generated"
            )
        self.num_real, self.num_generated = num_real, num_generated
        self.batch_size, self.epoch_batches, self.seed = batch_size, epoch_batches, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> Iterator[torch.Tensor]:
        """This epoch's global batches, every process alike."""
        generator = keyed_generator(self.seed, self.epoch)
        real_per_batch = self.batch_size - self.generated_per_batch
        order, position = torch.randperm(self.num_real, generator=generator), 0
        for _ in range(self.epoch_batches):
            if position >= self.num_real:
                order, position = torch.randperm(self.num_real, generator=generator), 0
            real = order[position : position + real_per_batch]
            position += len(real)
            generated = self.num_real + torch.randint(
                self.num_generated, (self.batch_size - len(real),), generator=generator
            )
            batch = torch.cat([real, generated])
            yield batch[torch.randperm(self.batch_size, generator=generator)]

    def __iter__(self) -> Iterator["BatchKey"]:
        start, end = shard_bounds(self.batch_size, self.rank, self.world_size)
        for number, batch in enumerate(self.global_batches()):
            yield BatchKey(self.epoch, number, self.batch_size, start, batch[start:end].tolist())

    def global_sizes(self) -> List[int]:
        """The size of every global batch of an epoch: all are full."""
        return [self.batch_size] * self.epoch_batches

    def __len__(self) -> int:
        return self.epoch_batches


@dataclass(frozen=True)
class BatchKey:
    """This process's part of global batch ``number`` of ``epoch``: ``indices``, which are the
    global batch's positions ``start ..`` of ``global_size``."""

    epoch: int
    number: int
    global_size: int
    start: int
    indices: List[int]


class MixedBatches(Dataset):
    """Indexed by the sampler's `BatchKey`: the augmented uint8 batch (NCHW) and its labels.

    The crops and flips of a global batch are drawn from a generator seeded by (seed, epoch,
    batch number), and each process applies its slice of them: N processes feed the model
    the very images one process would.
    """

    def __init__(
        self,
        real_images: np.ndarray,
        real_labels: Sequence[int],
        generated: GeneratedSet,
        *,
        seed: int,
        augment: bool = True,
        rotate_degrees: float = 0.0,
    ):
        self.real_images, self.real_labels = real_images, np.asarray(real_labels, dtype=np.int64)
        self.generated, self.seed, self.augment = generated, seed, augment
        self.rotate_degrees = rotate_degrees

    def __getitem__(self, key: BatchKey):
        indices = np.asarray(key.indices, dtype=np.int64)
        is_real = indices < len(self.real_images)
        images = np.empty((len(indices), *IMAGE_SHAPE), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        images[is_real] = self.real_images[indices[is_real]]
        labels[is_real] = self.real_labels[indices[is_real]]
        positions = indices[~is_real] - len(self.real_images)
        if len(positions):
            order = np.argsort(positions, kind="stable")  # ascending reads from the memory map
            gathered = np.empty((len(positions), *IMAGE_SHAPE), dtype=np.uint8)
            gathered[order] = self.generated.images[positions[order]]
            images[~is_real] = gathered
            labels[~is_real] = self.generated.labels[positions]
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        if not self.augment:
            return images.permute(0, 3, 1, 2).contiguous(), labels
        generator = keyed_generator(self.seed, key.epoch, key.number)
        drawn = draw_crop_flip(key.global_size, generator)
        part = slice(key.start, key.start + len(indices))
        angles = None
        if self.rotate_degrees:  # after crop and flip, as Wang et al.'s CIFAR-100 transform
            angles = draw_rotations(key.global_size, generator, self.rotate_degrees)[part]
        return crop_flip(images, *(values[part] for values in drawn), angles=angles), labels

    def __len__(self) -> int:
        raise TypeError("MixedBatches has no length: MixedBatchSampler's keys say what is drawn")


def epoch_batches(num_reference_images: int, batch_size: int) -> int:
    """Batches per epoch: ``ceil(num_reference_images / batch_size)`` (Wang et al.: the real
    training set's 50,000, whatever the amount of generated data)."""
    return math.ceil(num_reference_images / batch_size)


def make_mixed_loader(
    real_images: np.ndarray,
    real_labels: Sequence[int],
    generated: GeneratedSet,
    *,
    batch_size: int,
    unsup_fraction: float,
    seed: int,
    epoch_images: int = REFERENCE_EPOCH_IMAGES,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    augment: bool = True,
    rotate_degrees: float = 0.0,
) -> DataLoader:
    """The training loader of a generated-data run: uint8 batches, this process's share of each
    global batch. Call ``loader.sampler.set_epoch(e)`` (or `engine.data.set_epoch`) before each epoch."""
    sampler = MixedBatchSampler(
        len(real_images),
        len(generated),
        batch_size=batch_size,
        unsup_fraction=unsup_fraction,
        epoch_batches=epoch_batches(epoch_images, batch_size),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    dataset = MixedBatches(
        real_images, real_labels, generated, seed=seed, augment=augment, rotate_degrees=rotate_degrees
    )
    # batch_size=None: the sampler's keys are whole batches; the generator only feeds worker seeds.
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )
