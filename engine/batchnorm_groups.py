r"""BatchNorm as the authors' ``nn.DataParallel`` computes it, on any number of processes.

The authors train on G GPUs with DataParallel: every forward splits the batch into G chunks
(``torch.chunk``: ``ceil(B / G)`` rows each, the last one smaller), each replica normalises its
chunk with that chunk's own mean and variance, and the outputs are joined in order. The
replica on the first GPU shares the module's buffers, so the running statistics are those
of the first chunk alone; the other replicas' updates are thrown away.

``batchnorm_groups = G`` reproduces that on P processes (G a multiple of P): every process
splits its share of the global batch (process r holds rows r*B/P ... of it, `shard_bounds`)
into G / P chunks the same way, and the trainers' `broadcast_buffers_` (adversarial training's
before each batch, distillation's at the end of each epoch) gives every process rank 0's running
statistics, which are those of the global batch's first chunk. Adversarial training's dual-view
batches ([basic; augmented], as the authors concatenate them) need every process chunk to lie in
one view: on several processes G must be a multiple of 2P.
The chunks equal DataParallel's whenever the process shares and the chunks line up, which
they do when the global batch divides by G (CIFAR's 50,000 images in batches of 128 end with
a batch of 80); otherwise only on one process. G = 1 keeps one group per process (plain
BatchNorm, or SyncBatchNorm with ``sync_bn``).

For a training forward in train mode that is, per chunk :math:`c` of a BatchNorm input,

.. math::

    y_c = \frac{x_c - \mu_c}{\sqrt{\sigma^2_c + \epsilon}}\, w + b, \qquad
    \hat\mu \leftarrow (1 - m)\, \hat\mu + m\, \mu_1, \quad
    \hat\sigma^2 \leftarrow (1 - m)\, \hat\sigma^2 + m\, \tfrac{n_1}{n_1 - 1} \sigma^2_1

(biased variance inside, unbiased in the running estimate, as torch's BatchNorm). Evaluation
mode is untouched. The layers keep their class's parameters, buffers and state-dict keys
(`group_batch_norm` changes the class of the existing modules in place), so checkpoints,
optimisers and copies (AWP's proxy, the EMA) are those of plain BatchNorm.
"""

import math
import os
from typing import Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .config import ConfigError


class _GroupedBatchNormMixin:
    """``forward`` of a BatchNorm class whose training forwards normalise ``groups`` chunks."""

    groups: int = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups <= 1:
            return super().forward(input)
        chunks = input.chunk(self.groups)
        # The first chunk goes through BatchNorm itself, which updates the running statistics
        # (and num_batches_tracked) as DataParallel's first replica does; the others are
        # normalised with their own statistics and update nothing.
        first = super().forward(chunks[0])
        others = [F.batch_norm(chunk, None, None, self.weight, self.bias, True, 0.0, self.eps) for chunk in chunks[1:]]
        return torch.cat([first, *others]) if others else first

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


class GroupedBatchNorm1d(_GroupedBatchNormMixin, nn.BatchNorm1d):
    pass


class GroupedBatchNorm2d(_GroupedBatchNormMixin, nn.BatchNorm2d):
    pass


class GroupedBatchNorm3d(_GroupedBatchNormMixin, nn.BatchNorm3d):
    pass


_GROUPED: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.BatchNorm1d: GroupedBatchNorm1d,
    nn.BatchNorm2d: GroupedBatchNorm2d,
    nn.BatchNorm3d: GroupedBatchNorm3d,
}


def groups_per_process(groups: int, world_size: int, views: int = 1) -> int:
    """How many chunks each of ``world_size`` processes splits its batch into for ``groups``
    BatchNorm groups per global batch; a `ConfigError` when the processes cannot hold them.

    With ``views`` views per image (adversarial training's dual-view augmentation) DataParallel
    chunks the global batch [basic; augmented]; a process holds its share of each view, so on
    several processes each of its chunks must lie within one view: groups a multiple of
    ``world_size * views``."""
    if groups < 1:
        raise ConfigError(f"config key 'batchnorm_groups' must be at least 1, got {groups}")
    if groups == 1:
        return 1
    if world_size > 1 and views > 1 and groups % (world_size * views) == 0:
        return groups // world_size
    if world_size > 1 and views > 1:
        raise ConfigError(
            f"batchnorm_groups={groups} with {views} views of every image cannot be split over {world_size} "
            f"processes as DataParallel splits them: each process holds its share of every view, so each group "
            f"must lie within one view (a multiple of {world_size * views} groups); use fewer processes "
            f"(NPROC={max(1, groups // views)} or 1), or batchnorm_groups=1"
        )
    if groups % world_size:
        raise ConfigError(
            f"batchnorm_groups={groups} cannot be split over {world_size} processes: use a multiple of "
            f"{world_size} (each process normalises batchnorm_groups / processes chunks of its share), "
            f"or batchnorm_groups=1 for one group per process"
        )
    return groups // world_size


def require_whole_groups(groups: int, batch_size: int, views: int = 1, world_size: Optional[int] = None) -> None:
    """A `ConfigError` unless torch.chunk, as DataParallel splits a batch, gives every process's full
    batch (``views`` x ``batch_size`` / processes rows) exactly its ``groups`` / processes pieces: with more
    groups than rows, or rows that chunk into fewer pieces (128 rows in 100 groups: 64 pieces of 2), the
    groups would silently be fewer than asked (DataParallel would leave GPUs idle). The processes are
    torchrun's WORLD_SIZE unless given."""
    processes = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if groups <= 1 or groups % processes:
        return  # one group, or a split `chunks_per_process` refuses with its own message
    rows, pieces = views * batch_size // processes, groups // processes
    if rows < 1:
        return
    given = math.ceil(rows / math.ceil(rows / pieces))
    if pieces > rows or given != pieces:
        raise ConfigError(
            f"config key 'batchnorm_groups' ({groups}) does not fit the batch: torch.chunk, as DataParallel, "
            f"splits each process's {rows} rows into {min(given, rows)} pieces, not {pieces}; use a divisor of "
            f"{rows} (times {processes} processes), or batchnorm_groups=1"
        )


def group_batch_norm(module: nn.Module, groups: int, world_size: int = 1, views: int = 1) -> nn.Module:
    """Make every BatchNorm layer of ``module`` normalise its training inputs in the chunks that
    ``groups`` BatchNorm groups per global batch give each of ``world_size`` processes (see the
    module docstring). In place (the layers keep their parameters and buffers); returns
    ``module``. A SyncBatchNorm layer cannot be grouped: sync_bn and batchnorm_groups > 1 are
    refused by the configs."""
    per_process = groups_per_process(groups, world_size, views)
    if per_process == 1:
        return module
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and not isinstance(layer, _GroupedBatchNormMixin):
            grouped = _GROUPED.get(type(layer))
            if grouped is None:
                raise ConfigError(
                    f"batchnorm_groups > 1 cannot group a {type(layer).__name__} layer (only "
                    "BatchNorm1d/2d/3d); use batchnorm_groups=1"
                    + (" or sync_bn=false" if isinstance(layer, nn.SyncBatchNorm) else "")
                )
            layer.__class__ = grouped
        if isinstance(layer, _GroupedBatchNormMixin):
            layer.groups = per_process
    return module
