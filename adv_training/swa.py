r"""Post-hoc exponential averaging of saved epochs: the reference's ``swa.py``, same command line.

    python -m adv_training.swa RUN_DIR TAU START END

reads ``RUN_DIR/ours-model-epoch{i}.pt`` for i = START..END and computes (`engine.ema.EpochAverage`,
which the trainer also keeps during training when ``epoch_average.enabled``, so that no epoch files are needed)

.. math::

    \bar\theta_{START} = \theta_{START}, \qquad
    \bar\theta_i = (1 - \tau)\, \theta_i + \tau\, \bar\theta_{i-1} \quad (i > START),

then writes :math:`\bar\theta_{END}` as a weights file (``{"model": state_dict, "epoch": END}``, the
format of every weights file of a run: `engine.checkpoint.weights_file`) to
``RUN_DIR/ours-model-epoch-SWA{tau}{start}{end}.pt`` (the reference's name, e.g.
``ours-model-epoch-SWA0.91200.pt`` for ``0.9 1 200``).

Differences from the reference, none of which changes a floating-point result:

* integer entries (BatchNorm's ``num_batches_tracked``) keep the latest epoch's value;
  the reference pushes them through the same formula, which turns the counters into
  floats that mean nothing;
* only epochs START..END are read (the reference also loads, and ignores, 1..START-1);
  all of them are checked to exist before any is read;
* ``{"model": state_dict}`` wrappers and DataParallel's ``module.`` prefix are accepted,
  and the output is written without the prefix;
* every read goes through `load_file` (``weights_only``) and the write is atomic.
"""

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from engine.checkpoint import weights_file
from engine.cli import command
from engine.ema import EpochAverage
from engine.errors import UserError
from engine.file_io import PathLike, load_file, require_finite
from engine.run_folder import RunFolder

_PREFIX = "module."


def _state_dict(obj, path: Path) -> Dict[str, torch.Tensor]:
    """The plain state dict inside an epoch file, without a DataParallel prefix."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a model state dict (a dict of tensors, or {{'model': state_dict}})")
    if all(key.startswith(_PREFIX) for key in obj):
        obj = {key[len(_PREFIX) :]: value for key, value in obj.items()}
    return obj


def average_checkpoints(
    run_dir: PathLike, tau: float, start: int, end: int, *, log: Callable[[str], None] = print
) -> Path:
    """Average epochs ``start..end`` of ``run_dir`` as the reference does; returns the output path.

    Raises `UserError` for tau outside [0, 1), start > end, a missing epoch file, or
    epochs whose entries differ.
    """
    folder = RunFolder(run_dir)
    if not 0 <= tau < 1:
        raise UserError(f"TAU must be in [0, 1), got {tau}")
    if start < 1 or start > end:
        raise UserError(f"START ({start}) must be an epoch (1 or more) not after END ({end})")
    paths = [folder.epoch_weights(epoch) for epoch in range(start, end + 1)]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more epoch files)" if len(missing) > 1 else ""
        raise UserError(
            f"epoch checkpoint not found: {missing[0]}{more}; averaging needs every epoch from "
            f"{start} to {end}, so train with save_every=1"
        )

    average = EpochAverage(tau)
    for index, path in enumerate(paths):
        log(f"reading {path}")
        state = _state_dict(load_file(path, map_location="cpu"), path)
        require_finite(state, path)
        try:
            average.add(state)
        except ValueError as error:
            raise _misfit(paths, index, state, error) from None

    destination = folder.save(weights_file(average.average, end), folder.epoch_average(tau, start, end))
    log(f"wrote {destination}")
    return destination


def _layout(state: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _misfit(paths, index: int, state: Dict[str, torch.Tensor], error: ValueError) -> UserError:
    """The error for epoch file ``index``, which does not fit the ones before it. The earlier files agree
    with each other, so ``paths[index]`` is the odd one, unless only one file came before: then the
    next file, when there is one, says which of the two differs from the rest."""
    odd = paths[index]
    if index == 1 and len(paths) > 2:
        following = _state_dict(load_file(paths[2], map_location="cpu"), paths[2])
        if _layout(following) == _layout(state):  # the second and the third agree: the first is the odd one
            odd = paths[0]
    elif index == 1:
        return UserError(
            f"{paths[0]} and {paths[1]} do not fit each other ({error}); were they saved from the same model?"
        )
    others = "the other epochs" if odd == paths[0] else "the earlier epochs"
    return UserError(f"{odd} does not fit {others} ({error}); were they saved from the same model?")


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adv_training.swa",
        description="Exponential average of the saved epochs START..END of a run: "
        "avg = (1 - TAU) * epoch + TAU * avg (the reference's swa.py).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder holding ours-model-epoch{i}.pt")
    parser.add_argument("tau", metavar="TAU", type=float, help="weight of the running average, in [0, 1), e.g. 0.9")
    parser.add_argument("start", metavar="START", type=int, help="first epoch, copied as the initial average")
    parser.add_argument("end", metavar="END", type=int, help="last epoch (inclusive)")
    args = parser.parse_args(argv)
    average_checkpoints(args.run_dir, args.tau, args.start, args.end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
