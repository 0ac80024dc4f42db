"""Per-epoch numbers: running sums kept on the device while an epoch runs.

`RunningSums` is what both training loops count with: named sums that stay on the device
(adding costs no host synchronisation), read once per progress update (one transfer for
all of them) and summed over processes at the end of the epoch.
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
