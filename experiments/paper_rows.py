"""Every row of the paper's tables a config can name with ``paper_row``, over both tasks.

Each task keeps its published numbers beside its configs (`adv_training.paper_rows`,
`knowledge_distillation.paper_rows`, so that its config refuses a row of the other task);
the report reads them here. These are the authors' numbers, not runs of this code.
"""

from typing import Dict, Optional, Tuple

from adv_training.paper_rows import PAPER_ROWS as ADVERSARIAL_TRAINING_ROWS
from knowledge_distillation.paper_rows import PAPER_ROWS as DISTILLATION_ROWS

PAPER_ROWS = {**ADVERSARIAL_TRAINING_ROWS, **DISTILLATION_ROWS}


def paper_values(row: str, method: Optional[str]) -> Optional[Tuple[Dict[str, float], str]]:
    """(values, source) of ``row`` for ``method``; None when the paper has no number for it."""
    entry = PAPER_ROWS.get(row)
    if entry is None or method not in entry.values:
        return None
    return entry.values[method], entry.source
