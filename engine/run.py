"""A run's life, shared by both trainers: its start (`start_run`: folder, resume, logger), the end
of each epoch (`Run.end_epoch`: RNG states, last.pt, stop_after), its logger (metrics.jsonl,
TensorBoard, results.json, curves.png), last.pt with every state a run needs to continue
exactly, and the stop on a non-finite loss. Each trainer keeps its own epoch loop between.

The files themselves are named, written and read by `engine.run_folder`.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from .config import RunConfig, changed_keys, to_dict, to_yaml
from .distributed import gather_objects, is_main_process, log, rank, world_size
from .errors import NonFiniteLossError, UserError
from .file_io import load_file, writing
from .optim import use_kernel
from .run_folder import RunFolder
from .runtime import capture_rng_state, environment_info, restore_rng_state


class RunLogger:
    """Per-epoch metrics to metrics.jsonl and TensorBoard; inert on non-zero ranks.

    ``completed_epochs`` is the last epoch the checkpoint holds: on resume, lines and
    TensorBoard events of later epochs (written before an interruption) are dropped, so
    every epoch appears exactly once.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, completed_epochs: int = 0):
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(run_dir)
        self.enabled = enabled
        self.writer = None
        self.last_record: Optional[Dict[str, Any]] = None  # the newest epoch's metrics, logged or read back
        if not enabled:
            return
        kept = [m for m in self.folder.read_metrics(log=print) if m.get("epoch", 0) <= completed_epochs]
        self.folder.write_metrics(kept)
        self.last_record = kept[-1] if kept else None
        from torch.utils.tensorboard import SummaryWriter

        with writing(self.folder.tensorboard):
            self.writer = SummaryWriter(str(self.folder.tensorboard), purge_step=completed_epochs + 1)

    def log_epoch(self, epoch: int, metrics: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"epoch": epoch, **metrics}
        self.folder.append_metrics(record)
        self.last_record = record
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def write_results(self, results: Dict[str, Any]) -> Optional[Path]:
        if not self.enabled:
            return None
        return self.folder.write_results(results)

    def finish(self, results: Dict[str, Any]) -> None:
        """The end of a completed run: results.json, curves.png and the line that says where they are."""
        if not self.enabled:
            return
        if self.last_record is None:
            print(
                f"note: {self.folder.metrics} holds no epoch, so results.json has no final metrics "
                f"(the weights and best-so-far are complete)",
                flush=True,
            )
        self.write_results(results)
        curves = self.plot()
        where = f", curves in {curves}" if curves is not None else ""
        print(f"Done. Results in {self.folder.results}{where}", flush=True)

    def plot(self) -> Optional[Path]:
        """curves.png of the run so far; a run whose metrics.jsonl is gone goes on without it."""
        if not self.enabled:
            return None
        from .plot import plot_run  # here: matplotlib's import is slow, and only the main process draws

        try:
            return plot_run(self.run_dir)
        except UserError as error:
            print(f"note: no curves.png ({error})", flush=True)
            return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- last.pt: everything a run needs to continue exactly -------------------------------

CHECKPOINT_FORMAT = 1


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
    EMA, AWP, the epoch average, ...), or None for the ones a run does not use."""
    reserved = {"format", "task", "epoch", "model", "optimizer", "best", "rng", "config"} & set(states)
    if reserved:
        raise ValueError(f"extra states may not be named {sorted(reserved)}: last.pt uses those keys itself")
    return {
        "format": CHECKPOINT_FORMAT,
        "task": type(cfg).__name__,
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


def resume_training_state(
    path: Path,
    cfg,
    model,
    optimizer,
    states: Mapping[str, Optional[Any]],
    *,
    describe: str,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Load ``last.pt`` into model, optimizer, every object of ``states`` and the RNGs; return it.

    Settings that differ from the ones the run was started with are listed (the user may
    mean it, e.g. more epochs); a checkpoint of another task or architecture, or one without
    the state of an object this run uses (started with it switched off), is a `UserError`.

    The file is read onto the CPU, whatever the run's device: each ``load_state_dict`` copies
    its tensors to where its object lives (the optimizer to its parameters' device), and the
    RNG states must be CPU tensors (NumPy's key cannot be read from a GPU tensor).
    """
    state = load_file(path, map_location="cpu")
    if (
        not isinstance(state, dict)
        or state.get("format") != CHECKPOINT_FORMAT
        or state.get("task") != type(cfg).__name__
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
    changed = [c for c in changed_keys(state["config"], to_dict(cfg)) if not c.startswith("resume:")]
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
    for name, obj in states.items():
        if obj is None:
            continue
        if name not in state:
            raise UserError(
                f"{path} holds no {name} state: it was written by an earlier version of this code "
                f"that had none; resume with {name} switched off, or start a new run"
            )
        if state[name] is None:
            raise UserError(
                f"{path} holds no {name} state: the run was started with {name} switched off; "
                f"resume with the settings it was started with"
            )
        try:
            obj.load_state_dict(state[name])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # RuntimeError: an nn.Module's strict load
            raise UserError(
                f"{path}: its {name} state does not fit this run ({str(error).splitlines()[0]}); resume with the settings "
                f"the run was started with, or start a new run"
            ) from None
    per_rank = state.get("rng_per_rank")
    restore_rng_state(per_rank[rank()] if per_rank and len(per_rank) == world_size() else state["rng"])
    return state


def raise_if_not_finite(mean_loss: float, *, epoch: int, batch: int, advice: str) -> None:
    """Stop a run whose running mean loss is NaN or infinite; last.pt (the previous epoch) stays."""
    if not math.isfinite(mean_loss):
        kept = (
            f"last.pt still holds epoch {epoch - 1} (resume=true continues from it)"
            if epoch > 1
            else "no epoch had finished, so there is no last.pt: start again"
        )
        raise NonFiniteLossError(
            f"the training loss became {mean_loss} in epoch {epoch} (by batch {batch}); "
            f"the run stopped and {kept}. {advice}"
        )


# --- one run, start to end -----------------------------------------------------------------------


@dataclass
class Run:
    """A started (or resumed) run: its folder and logger, what last.pt saves, the first epoch to
    train and the best-so-far record (which the trainer updates when it writes best.pt)."""

    cfg: RunConfig
    folder: RunFolder
    logger: RunLogger
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    states: Mapping[str, Optional[Any]]
    start_epoch: int
    best: Dict[str, Any]

    def end_epoch(self, epoch: int) -> bool:
        """Every process calls it after the epoch's own files (best.pt, ...): the RNG states of
        every process (a collective), then last.pt from rank 0. True when ``stop_after`` ends the
        run here (last.pt kept; resume=true continues)."""
        rng_states = capture_every_rng_state()
        if is_main_process():
            state = training_state(self.cfg, epoch, self.model, self.optimizer, self.best, self.states, rng_states)
            self.folder.save(state, self.folder.last)
        if epoch == self.cfg.stop_after and epoch < self.cfg.epochs:
            log(f"Stopped after epoch {epoch} as asked (stop_after={self.cfg.stop_after}); resume=true continues")
            return True
        return False

    def stopped(self, epoch: int) -> Dict[str, Any]:
        """What a run stopped by ``stop_after`` returns instead of its results."""
        return {"run_dir": str(self.folder.path), "stopped_after": epoch}


def start_run(
    cfg: RunConfig,
    *,
    task: str,
    device: torch.device,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    states: Mapping[str, Optional[Any]],
    best: Dict[str, Any],
    describe: str,
    optimizer_implementation: str,
) -> Run:
    """The run folder prepared (config and environment written by rank 0), last.pt read back with
    ``resume=true`` (model, optimizer, every object of ``states``, RNGs), and the logger opened.

    ``best`` is the best-so-far record of a fresh start; ``describe`` names the architecture for
    the message of a last.pt that does not fit; the optimizer's update kernel is set again after
    a resume (the saved parameter groups carry the old kernel's flags).
    """
    folder = RunFolder(Path(cfg.out_dir) / cfg.run_name())
    if is_main_process():
        folder.prepare(
            config_yaml=to_yaml(cfg),
            resume=cfg.resume,
            environment={"task": task, "seed": cfg.seed, **environment_info(), "device": str(device)},
        )
    start_epoch = 1
    if cfg.resume:
        state = resume_training_state(folder.last, cfg, model, optimizer, states, log=log, describe=describe)
        use_kernel(optimizer, optimizer_implementation, device)
        best, start_epoch = state["best"], state["epoch"] + 1
        log(f"Resumed {folder.path} after epoch {state['epoch']}")
        del state
    logger = RunLogger(folder.path, enabled=is_main_process(), completed_epochs=start_epoch - 1)
    if cfg.resume and start_epoch > 1:
        logger.plot()  # the picture of what the interrupted run had done
    return Run(cfg, folder, logger, model, optimizer, states, start_epoch, best)
