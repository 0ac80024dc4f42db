"""A run's life, shared by both trainers: its start (`start_run`: folder, resume, logger), its
weights files (`Run.save_weights`, `Run.offer_best`), the end of each epoch (`Run.end_epoch`: RNG
states, last.pt, stop_after), its logger (metrics.jsonl, TensorBoard, results.json, curves.png),
and the stop on a non-finite loss. Each trainer keeps its own epoch loop between.

What a checkpoint holds is decided by `engine.checkpoint`; the files themselves are named,
written and read by `engine.run_folder`.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .checkpoint import (
    capture_every_rng_state,
    new_best,
    resume_training_state,
    task_id,
    training_state,
    weights_file,
)
from .config import RunConfig, to_yaml
from .distributed import is_main_process, log
from .environment import environment_info
from .errors import NonFiniteLossError, UserError
from .file_io import writing
from .optim import use_kernel
from .run_folder import RunFolder


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
    train and the best-so-far record (``{"metric", "value", "epoch"}``, kept by `Run.offer_best`)."""

    cfg: RunConfig
    folder: RunFolder
    logger: RunLogger
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    states: Mapping[str, Optional[Any]]
    start_epoch: int
    best: Dict[str, Any]

    def save_weights(
        self, path: Path, weights: Union[torch.nn.Module, Mapping], epoch: int, metrics: Optional[Mapping] = None
    ) -> Optional[Path]:
        """A weights file of this run (`engine.checkpoint.weights_file`: a module's or a state dict's
        weights, the epoch, and the named ``metrics`` measured for them), written by rank 0 only."""
        if not is_main_process():
            return None
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        return self.folder.save(weights_file(state, epoch, metrics), path)

    def offer_best(self, epoch: int, metrics: Mapping[str, Any], model: torch.nn.Module) -> bool:
        """best.pt becomes ``model`` when this epoch's ``metrics`` hold the run's selecting metric and it
        beats the best so far (a tie keeps the earlier epoch); True when it did."""
        name = self.best["metric"]
        value = metrics.get(name)
        if value is None or not value > self.best["value"]:
            return False
        self.best = {"metric": name, "value": value, "epoch": epoch}
        self.save_weights(self.folder.best, model, epoch, {name: value})
        return True

    def best_results(self) -> Dict[str, Any]:
        """results.json's record of best.pt: ``best_epoch``, ``best_metric``, ``best_value`` (None when
        no epoch measured it) and the same value under ``best_<metric>``."""
        value = self.best["value"] if math.isfinite(self.best["value"]) else None
        metric = self.best["metric"]
        return {"best_epoch": self.best["epoch"], "best_metric": metric, "best_value": value, f"best_{metric}": value}

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
    device: torch.device,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    states: Mapping[str, Optional[Any]],
    selects_by: str,
    describe: str,
    optimizer_implementation: str,
) -> Run:
    """The run folder prepared (config and environment written by rank 0), last.pt read back with
    ``resume=true`` (model, optimizer, every object of ``states``, RNGs), and the logger opened.

    ``selects_by`` is the key of metrics.jsonl whose largest value picks best.pt; ``describe`` names
    the architecture for the message of a last.pt that does not fit; the optimizer's update kernel is
    set again after a resume (the saved parameter groups carry the old kernel's flags).
    """
    folder = RunFolder(Path(cfg.out_dir) / cfg.run_name())
    if is_main_process():
        folder.prepare(
            config_yaml=to_yaml(cfg),
            resume=cfg.resume,
            environment={"task": task_id(cfg), "seed": cfg.seed, **environment_info(), "device": str(device)},
        )
    start_epoch, best = 1, new_best(selects_by)
    if cfg.resume:
        state = resume_training_state(
            folder.last, cfg, model, optimizer, states, log=log, describe=describe, selects_by=selects_by
        )
        use_kernel(optimizer, optimizer_implementation, device)
        best, start_epoch = state["best"], state["epoch"] + 1
        log(f"Resumed {folder.path} after epoch {state['epoch']}")
        del state
    logger = RunLogger(folder.path, enabled=is_main_process(), completed_epochs=start_epoch - 1)
    if cfg.resume and start_epoch > 1:
        logger.plot()  # the picture of what the interrupted run had done
    return Run(cfg, folder, logger, model, optimizer, states, start_epoch, best)
