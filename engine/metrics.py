"""Per-epoch numbers: running sums kept on the device while an epoch runs, and top-k accuracy.

`RunningSums` is what both training loops count with: named sums that stay on the device
(adding costs no host synchronisation), read once per progress update (one transfer for
all of them) and summed over processes at the end of the epoch. `topk_accuracy` is the
distillation runs' evaluation (top-1 and top-5 over a loader, summed over processes).
"""

from typing import Dict, Sequence

import torch

from .distributed import reduce_sum


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


@torch.no_grad()
def topk_accuracy(
    model: torch.nn.Module, loader, device: torch.device, channels_last: bool = False
) -> Dict[str, float]:
    """Top-1 and top-5 accuracy of ``model`` over ``loader`` in percent, summed over processes (each
    evaluates its share of the batches); fp32, eval mode, the previous mode restored."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.long, device=device)  # top-1, top-5, seen
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
    model.train(was_training)
    counts[2] = seen
    top1, top5, seen = reduce_sum(counts).tolist()
    return {"top1": 100.0 * top1 / max(seen, 1), "top5": 100.0 * top5 / max(seen, 1)}
