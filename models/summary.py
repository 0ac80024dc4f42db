"""Print the model table of the README (section "Models") from the registry.

    python -m models.summary

Parameter counts are measured by building each model on the ``meta``
device (no memory, no initialisation cost).
"""

import torch

from .registry import FAMILY_DATASETS, entries, resolve

_INPUTS = {
    "cifar-at": "3×32×32 in [0, 1], no normalisation inside",
    "cifar-kd": "3×32×32, CIFAR-normalised by the data pipeline (as mdistiller)",
    "imagenet": "3×224×224, ImageNet-normalised by the data pipeline",
    "digits": "1×8×8 in [0, 1], no normalisation inside",
}
_DM_INPUT = "3×32×32 in [0, 1], CIFAR mean/std applied inside"


def parameter_count(name: str, family: str) -> int:
    entry = next(e for e in entries() if e.name == name and e.family == family)
    with torch.device("meta"):
        model = entry.build(entry.default_num_classes, entry.datasets[0])
    return sum(p.numel() for p in model.parameters())


def markdown_table() -> str:
    rows = [
        "| name | family | input | parameters (at num_classes) | published checkpoints it loads |",
        "| --- | --- | --- | --- | --- |",
    ]
    families = list(FAMILY_DATASETS)
    for e in sorted(entries(), key=lambda e: families.index(e.family)):
        name = f"`{e.name}`"
        if sum(o.name == e.name for o in entries()) > 1:
            name += f' (`dataset="{e.datasets[0]}"`)'
        if e.alias_of:
            name += f" (alias of `{e.alias_of}`)"
        if e.name == "WideResNet":
            name += " (`depth=34, widen_factor=10` by default)"
        inputs = _DM_INPUT if e.name.endswith("-swish") else _INPUTS[e.family]
        params = f"{parameter_count(e.name, e.family):,} ({e.default_num_classes})"
        rows.append(f"| {name} | {e.family} | {inputs} | {params} | {e.checkpoints or '—'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    resolve("WideResNet34")  # importing the package fills the registry
    print(markdown_table())
