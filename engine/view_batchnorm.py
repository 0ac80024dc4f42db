r"""BatchNorms of their own for the augmented views of a batch (DAJAT's WideResNet, ``batch_norm='auto'``).

DAJAT (Addepalli et al., NeurIPS 2022) trains on the basic view of each image and on AutoAugment
views of it; the augmented views go through a second set of BatchNorm layers, shared by all of them,
while every convolution and the classifier are shared by all views. Its forwards take one view at a
time, so each view is normalised with its own batch statistics, and the attack on an augmented view
runs with the augmented BatchNorms too.

`add_view_batchnorms` turns every ``nn.BatchNorm2d`` of a model into a `ViewBatchNorm2d` in place:
the layer keeps its own parameters, buffers and state-dict keys (the basic view's), and gains a
child ``augmented_view_bn``, a BatchNorm of the same shape for the augmented views. A forward inside
``batch_views(model, rows)`` (``rows``: the rows of each view of the batch, basic view first, as the
trainer stacks them) normalises each view's rows separately, the basic view's with the layer itself
and every other view's with ``augmented_view_bn``; in training mode each view's statistics update
its set's running statistics, view after view, as separate forwards do. Outside ``batch_views`` the
layer is the plain BatchNorm of the basic view: evaluation, the export and the weights files
(`basic_view_state`) see the architecture's own model.

For each view :math:`v` with rows :math:`x_v` and BatchNorm set :math:`s(v)` (0 for the basic
view, 1 for the others): :math:`y_v = \mathrm{BN}_{s(v)}(x_v)`, and :math:`y` their concatenation.
"""

import contextlib
import copy
import re
from typing import Iterator, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

AUGMENTED = "augmented_view_bn"
_AUGMENTED_KEY = re.compile(rf"(^|\.){AUGMENTED}\.")


class ViewBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d (the basic view's) with a second one, ``augmented_view_bn``, for the augmented views."""

    view_rows: Optional[Tuple[int, ...]] = None  # set by `batch_views`; None: every row is the basic view's

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = self.view_rows
        if rows is None:
            return super().forward(input)
        if sum(rows) != input.shape[0]:
            raise ValueError(f"batch_views says the batch has rows {list(rows)} per view, got {input.shape[0]} rows")
        views = input.split(list(rows))
        outputs = [super().forward(views[0])] + [getattr(self, AUGMENTED)(view) for view in views[1:]]
        return torch.cat(outputs)


def add_view_batchnorms(model: nn.Module) -> int:
    """Every ``nn.BatchNorm2d`` of ``model`` becomes a `ViewBatchNorm2d`, in place, whose augmented
    BatchNorm starts as a copy of it (a fresh layer's: weight 1, bias 0, statistics 0 and 1); returns
    how many layers it converted."""
    layers = [module for module in model.modules() if type(module) is nn.BatchNorm2d]  # listed first
    for module in layers:
        augmented = copy.deepcopy(module)
        module.__class__ = ViewBatchNorm2d
        module.add_module(AUGMENTED, augmented)
    return len(layers)


def has_view_batchnorms(model: nn.Module) -> bool:
    return any(isinstance(module, ViewBatchNorm2d) for module in model.modules())


@contextlib.contextmanager
def batch_views(model: nn.Module, rows: Optional[Sequence[int]]) -> Iterator[None]:
    """Inside, every `ViewBatchNorm2d` of ``model`` normalises the batch as views of ``rows`` rows each
    (basic view first); None: as one basic view. A model without them is untouched. Restored after."""
    layers = [module for module in model.modules() if isinstance(module, ViewBatchNorm2d)]
    previous = [layer.view_rows for layer in layers]
    value = tuple(int(count) for count in rows) if rows is not None else None
    try:
        for layer in layers:
            layer.view_rows = value
        yield
    finally:
        for layer, saved in zip(layers, previous):
            layer.view_rows = saved


def basic_view_state(state: Mapping[str, torch.Tensor]) -> dict:
    """``state`` without the augmented views' BatchNorms: the architecture's plain state dict."""
    return {key: value for key, value in state.items() if not _AUGMENTED_KEY.search(key)}
