"""Samplers: which images each process takes from each batch.

One rule for every loader: a training batch is the global batch one process would draw, and
process ``rank`` takes the contiguous part `shard_bounds` gives it (`ShardedBatchSampler`; the
device-resident loader and the generated-data mixing sampler cut their global batches the
same way), so N processes see, batch for batch, the images one process sees. Evaluation deals
whole batches to the processes instead (`DealtBatchSampler`), so every count equals one
process's bit for bit.
"""

from typing import Iterator, List, Tuple

from torch.utils.data import Sampler

from ..errors import UserError


def require_global_batch_divides(batch_size: int, world_size: int) -> None:
    """The global training batch must split evenly over the processes."""
    if world_size > 1 and batch_size % world_size:
        raise UserError(
            f"the batch size {batch_size} is the global batch and must divide by the {world_size} "
            f"processes; choose a multiple of {world_size}"
        )


def shard_bounds(size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[start, end) of process ``rank``'s contiguous part of ``size`` items (sizes differ by at most one)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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
