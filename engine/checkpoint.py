"""What goes into every checkpoint a run writes, decided here only.

Two kinds of files:

* **last.pt** (`training_state`, read back by `resume_training_state`): everything a run needs to
  continue exactly: model, optimizer, best-so-far record, RNG states of every process, the config,
  the task id, and the state of every object the trainer names (the class prior, the EMA, AWP, the
  epoch average, the method: anything with ``state_dict()``).
* **weights files** (`weights_file`): best.pt, ema.pt, the per-epoch files and the epoch average,
  all ``{"model": state_dict, "epoch": N, <metric name>: value, ...}``, where the metric names are
  the per-epoch keys of metrics.jsonl (`engine.run_folder.metric_key`: ``test_robust_acc``,
  ``ema_val_robust_acc``, ``test_top1``) of the numbers measured for those weights. Every reader
  (`models.load_weights`, `adv_training.swa`) takes the ``model`` entry, and plain state dicts too.

Files written by earlier versions still load: a last.pt whose task is its config class's name
(``ATConfig``, ``KDConfig``), whose best-so-far record is ``{"robust_acc" | "top1": value, "epoch"}``,
or whose method state sits under an older key (`TrainingMethod.state_from_older_checkpoint`).
"""

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from .config import changed_keys, to_dict, with_current_keys
from .distributed import gather_objects, rank, world_size
from .environment import capture_rng_state, restore_rng_state
from .errors import UserError
from .file_io import load_file, require_finite
from .view_batchnorm import basic_view_state

CHECKPOINT_FORMAT = 1
LAST_KEYS = frozenset({"format", "task", "epoch", "model", "optimizer", "best", "rng", "rng_per_rank", "config"})


def task_id(cfg) -> str:
    """The task a config trains (``adv_training``, ``knowledge_distillation``): in last.pt and environment.json."""
    return type(cfg).TASK


def weights_file(model_state: Mapping[str, torch.Tensor], epoch: int, metrics: Optional[Mapping[str, float]] = None):
    """The one format of every weights file: ``{"model", "epoch", <metric name>: value, ...}``. The model is
    the architecture's plain state dict: without the augmented views' BatchNorms of a model that has them
    (`engine.view_batchnorm`; last.pt keeps them)."""
    metrics = dict(metrics or {})
    reserved = {"model", "epoch"} & set(metrics)
    if reserved:
        raise ValueError(f"metric names may not be {sorted(reserved)}: weights files use those keys")
    return {"model": basic_view_state(model_state), "epoch": int(epoch), **metrics}


def new_best(metric: str) -> Dict[str, Any]:
    """The best-so-far record of a fresh run that selects by ``metric`` (a key of metrics.jsonl)."""
    return {"metric": metric, "value": -math.inf, "epoch": 0}


def _best_record(saved: Any, metric: str) -> Dict[str, Any]:
    """last.pt's best-so-far record, also as earlier versions wrote it (``{"robust_acc" | "top1": value,
    "epoch"}``, whose value is the metric this run selects by)."""
    if isinstance(saved, dict) and {"metric", "value", "epoch"} <= set(saved):
        return dict(saved)
    if isinstance(saved, dict) and "epoch" in saved and len(saved) == 2:
        (value,) = (v for k, v in saved.items() if k != "epoch")
        return {"metric": metric, "value": -math.inf if value < 0 else value, "epoch": saved["epoch"]}
    raise UserError(f"last.pt's best-so-far record is damaged ({saved!r}); start a new run")


def capture_every_rng_state() -> List[Dict[str, Any]]:
    """Every process's RNG states, by rank (a collective: every process calls it, before rank 0
    writes last.pt), so that a resumed run draws what an uninterrupted one would on each process."""
    return gather_objects(capture_rng_state())


def training_state(
    cfg,
    epoch: int,
    model,
    optimizer,
    best: Dict[str, Any],
    states: Mapping[str, Optional[Any]],
    rng_states: Optional[List[Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """What ``last.pt`` holds: model, optimizer, best-so-far, RNG states and the config, plus the
    state of every object in ``states`` (anything with ``state_dict()``: the class prior, the
    EMA, AWP, the epoch average, the method, ...), or None for the ones a run does not use."""
    reserved = (LAST_KEYS | {"world_size"}) & set(states)
    if reserved:
        raise ValueError(f"extra states may not be named {sorted(reserved)}: last.pt uses those keys itself")
    return {
        "format": CHECKPOINT_FORMAT,
        "task": task_id(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best": best,
        "rng": rng_states[0] if rng_states else capture_rng_state(),
        "rng_per_rank": rng_states or None,
        "config": to_dict(cfg),
        "world_size": world_size(),
        **{name: (obj.state_dict() if obj is not None else None) for name, obj in states.items()},
    }


def _saved_state(path: Path, state: Dict[str, Any], name: str, obj) -> Any:
    """The state of ``obj`` (named ``name`` in last.pt), or where an earlier version kept it."""
    if name in state and state[name] is not None:
        return state[name]
    older = getattr(obj, "state_from_older_checkpoint", None)
    found = older(state) if older is not None and name not in state else None
    if found is not None:
        return found
    if name not in state and not _older_key_says_off(obj, state):
        raise UserError(
            f"{path} holds no {name} state: it was written by an earlier version of this code "
            f"that had none; resume with {name} switched off, or start a new run"
        )
    raise UserError(
        f"{path} holds no {name} state: the run was started with {name} switched off; "
        f"resume with the settings it was started with"
    )


def _older_key_says_off(obj, state: Dict[str, Any]) -> bool:
    """Whether a last.pt of an earlier version holds the older key of ``obj``'s state, as None (the run
    was started with it switched off)."""
    older_key = getattr(obj, "OLDER_CHECKPOINT_KEY", None)
    return older_key is not None and older_key in state and state[older_key] is None


def resume_training_state(
    path: Path,
    cfg,
    model,
    optimizer,
    states: Mapping[str, Optional[Any]],
    *,
    describe: str,
    selects_by: str,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Load ``last.pt`` into model, optimizer, every object of ``states`` and the RNGs; return it,
    its best-so-far record in today's form (``selects_by``: the metric this run selects by).

    Settings that differ from the ones the run was started with are listed (the user may
    mean it, e.g. more epochs); a checkpoint of another task or architecture, or one without
    the state of an object this run uses (started with it switched off), is a `UserError`.

    The file is read onto the CPU, whatever the run's device: each ``load_state_dict`` copies
    its tensors to where its object lives (the optimizer to its parameters' device), and the
    RNG states must be CPU tensors (NumPy's key cannot be read from a GPU tensor).
    """
    state = load_file(path, map_location="cpu")
    task = state.get("task") if isinstance(state, dict) else None
    if (
        not isinstance(state, dict)
        or state.get("format") != CHECKPOINT_FORMAT
        or (task != task_id(cfg) and task != type(cfg).__name__)  # the class name: what earlier versions wrote
    ):
        raise UserError(
            f"{path} is not a last.pt written by this training entry point; start a new run with another name=..."
        )
    saved_world = state.get("world_size", 1)
    if saved_world != world_size() and not getattr(cfg, "allow_world_size_change", False):
        raise UserError(
            f"{path} was written by {saved_world} process(es) and this run has {world_size()}: resume "
            f"with NPROC={saved_world} (torchrun --nproc_per_node), or pass allow_world_size_change=true "
            f"(the data order then differs from an uninterrupted run)"
        )
    saved_config = with_current_keys(state["config"], type(cfg))  # an earlier version's config, today's key names
    used = {name: _saved_state(path, state, name, obj) for name, obj in states.items() if obj is not None}
    # Damaged state never trains: a NaN in the weights, the optimizer's momentum or any state a run uses
    # (a method's networks, CRD's memory, the class prior, the averages) is refused before anything loads.
    require_finite({"model": state["model"], "optimizer": state["optimizer"], **used}, path)
    changed = [c for c in changed_keys(saved_config, to_dict(cfg)) if not c.startswith("resume:")]
    if changed:
        log("note: resuming with changed settings: " + "; ".join(changed))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(
            f"{path} does not fit {describe}: {str(error).splitlines()[0]}; resume with the config the run was started with"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as error:  # other parameter groups or sizes: another model or method than the run's
        raise UserError(
            f"{path}: its optimizer state does not fit this run ({error}); resume with the config the run was "
            f"started with"
        ) from None
    for name, saved in used.items():
        obj = states[name]
        try:
            obj.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # RuntimeError: an nn.Module's strict load
            raise UserError(
                f"{path}: its {name} state does not fit this run ({str(error).splitlines()[0]}); resume with the settings "
                f"the run was started with, or start a new run"
            ) from None
    per_rank = state.get("rng_per_rank")
    restore_rng_state(per_rank[rank()] if per_rank and len(per_rank) == world_size() else state["rng"])
    best = _best_record(state.get("best"), selects_by)
    if best["metric"] != selects_by:  # eval.select, eval.split or eval.pgd_steps changed: another metric
        log(
            f"note: best.pt was chosen by {best['metric']} and this run selects by {selects_by}; "
            f"the best-so-far record starts anew (best.pt is replaced at the next evaluation)"
        )
        best = new_best(selects_by)
    state["best"] = best
    return state
