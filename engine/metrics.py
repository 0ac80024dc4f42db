"""Per-epoch numbers: running sums kept on the device while an epoch runs, and top-k accuracy.

`RunningSums` is what both training loops count with: named sums that stay on the device
(adding costs no host synchronisation), read once per progress update (one transfer for
all of them) and summed over processes at the end of the epoch. `topk_accuracy` is the
distillation runs' evaluation (top-1 and top-5 over a loader, summed over processes); given
the training set's class counts it also gives the long-tailed benchmarks' shot-wise top-1
(`SHOT_BINS`, `shot_accuracy`).
"""

from typing import Dict, List, Optional, Sequence

import torch

from .distributed import reduce_sum
from .errors import UserError

# The long-tailed benchmarks' groups of classes by their number of training images, as inclusive
# (min, max) ranges, None for no bound: many-shot more than 100, medium-shot 20..100, few-shot
# fewer than 20 (Liu et al., CVPR 2019, the paper that defined ImageNet-LT, and the code of the
# work after it; the OLTR release's own `shot_acc` puts exactly 100 in many and exactly 20 in few).
SHOT_BINS = {"many": (101, None), "medium": (20, 100), "few": (0, 19)}


class RunningSums:
    """Named float64 sums on one device, and the number of samples they cover.

        sums = RunningSums(("loss", "correct"), device)
        sums.add(len(targets), loss=loss.detach().double() * len(targets), correct=(pred == targets).sum())
        sums.totals()                          # {"loss": ..., "correct": ..., "count": n}: one host sync
        sums.totals(across_processes=True)     # the same summed over every process (all-reduce)

    Each ``add`` must name every sum; values are 0-dim tensors on the device (or numbers).
    """

    def __init__(self, names: Sequence[str], device: torch.device):
        if "count" in names or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct and not 'count', got {list(names)}")
        self.names = tuple(names)
        self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, count: int, **values) -> None:
        if set(values) != set(self.names):
            raise ValueError(f"add() needs exactly {list(self.names)}, got {sorted(values)}")
        self._sums += torch.stack(
            [torch.as_tensor(values[name], device=self._sums.device).double() for name in self.names]
        )
        self.count += count

    def totals(self, across_processes: bool = False) -> Dict[str, float]:
        if across_processes:
            *sums, count = reduce_sum(torch.cat([self._sums, self._sums.new_tensor([self.count])])).tolist()
        else:
            sums, count = self._sums.tolist(), self.count
        return {**dict(zip(self.names, sums)), "count": count}


def shot_groups(train_counts: Sequence[int]) -> Dict[str, List[int]]:
    """The classes of each `SHOT_BINS` group, by ``train_counts[c]``, class c's training images."""
    return {
        group: [c for c, count in enumerate(train_counts) if low <= count and (high is None or count <= high)]
        for group, (low, high) in SHOT_BINS.items()
    }


def shot_accuracy(
    class_hits: Sequence[float], class_images: Sequence[float], train_counts: Sequence[int]
) -> Dict[str, Optional[float]]:
    """``many_shot_top1``, ``medium_shot_top1`` and ``few_shot_top1`` in percent, from each class's
    correct top-1 predictions (``class_hits``) and test images (``class_images``).

    Each is the mean over the group's classes of their accuracy, as OLTR's ``shot_acc``
    computes it, not the accuracy over the group's images: the two differ when the classes
    have different numbers of test images, and agree on ImageNet-LT's balanced test set (50
    a class). As there, a class without test images is left out of the mean; a group with no
    class left (none in `SHOT_BINS`'s range, or none tested) is None.
    """
    accuracy = {}
    for group, classes in shot_groups(train_counts).items():
        tested = [c for c in classes if class_images[c] > 0]
        mean = sum(class_hits[c] / class_images[c] for c in tested) / len(tested) if tested else None
        accuracy[f"{group}_shot_top1"] = None if mean is None else 100.0 * mean
    return accuracy


@torch.no_grad()
def topk_accuracy(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    channels_last: bool = False,
    train_counts: Optional[Sequence[int]] = None,
) -> Dict[str, Optional[float]]:
    """Top-1 and top-5 accuracy of ``model`` over ``loader`` in percent, summed over processes (each
    evaluates its share of the batches); fp32, eval mode, the previous mode restored.

    With ``train_counts`` (the training images of each class the model predicts, e.g.
    `engine.data.class_counts` of the training set's targets) also the shot-wise top-1 of
    `shot_accuracy`, from per-class counts summed over processes in the same one all-reduce.
    """
    was_training = model.training
    model.eval()
    num_classes = 0 if train_counts is None else len(train_counts)
    counts = torch.zeros(3, dtype=torch.long, device=device)  # top-1, top-5, seen
    per_class = torch.zeros(2, num_classes, dtype=torch.long, device=device)  # each class's top-1 hits, images
    seen = 0  # counted on the host: a count sent to the device per batch would be a blocking copy
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets.unsqueeze(1)
        counts[:2] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        seen += targets.numel()
        if train_counts is not None:
            if logits.shape[1] != num_classes:
                model.train(was_training)
                raise UserError(
                    f"shot-wise accuracy: train_counts has {num_classes} classes but the model gives "
                    f"{logits.shape[1]} logits an image; pass the training images of each class the model "
                    f"predicts (engine.data.class_counts(train_set.targets, num_classes))"
                )
            # index_add_ rather than bincount: bincount on CUDA reads the largest label back to the host.
            per_class.index_add_(1, targets, torch.stack([hits[:, 0].long(), torch.ones_like(targets)]))
    model.train(was_training)
    counts[2] = seen
    totals = reduce_sum(torch.cat([counts, per_class.flatten()])).tolist()
    top1, top5, seen = totals[:3]
    accuracy = {"top1": 100.0 * top1 / max(seen, 1), "top5": 100.0 * top5 / max(seen, 1)}
    if train_counts is not None:
        accuracy.update(shot_accuracy(totals[3 : 3 + num_classes], totals[3 + num_classes :], train_counts))
    return accuracy
