"""Per-epoch numbers: running sums kept on the device while an epoch runs, and metrics.jsonl.

`RunningSums` is what both training loops count with: named sums that stay on the device
(adding costs no host synchronisation), read once per progress update (one transfer for
all of them) and summed over processes at the end of the epoch.
"""
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .distributed import reduce_sum
from .errors import UserError

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path, log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """The epoch records of a run folder's metrics.jsonl (empty when there is none).

    A last line cut short (a kill while it was written, or a trainer appending it right
    now) is dropped, and said through ``log``; a damaged line before it is a `UserError`.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is damaged (not UTF-8 at byte {error.start}); cut it after the last good line, "
                        f"or delete it (the run resumes without it)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                if log is not None:
                    log(f"note: dropped the incomplete last line of {path} (a run stopped while writing it)")
                break
            raise UserError(f"{path}, line {number}, is not JSON ({error.msg}); delete that line to continue") from None
        if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
            records.append(record)
    return records


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
        self._sums += torch.stack([torch.as_tensor(values[name], device=self._sums.device).double()
                                   for name in self.names])
        self.count += count

    def totals(self, across_processes: bool = False) -> Dict[str, float]:
        if across_processes:
            *sums, count = reduce_sum(torch.cat([self._sums, self._sums.new_tensor([self.count])])).tolist()
        else:
            sums, count = self._sums.tolist(), self.count
        return {**dict(zip(self.names, sums)), "count": count}
