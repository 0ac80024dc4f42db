"""Resumable AutoAttack: the AutoAttack package's own attacks, with progress saved after every batch.

AutoAttack's ``run_standard_evaluation`` runs its attacks one after the other. Each attack
sees only the points that every earlier attack failed on, split in index order into batches
of ``batch_size`` points, and each batch is attacked from the same seed. The batches are
therefore independent: calling the package once per batch with that one attack gives the
same adversarial examples as one call over the whole set (RobustBench's way), and lets this
module save after every batch the robust flags, the adversarial examples found so far, the
attack in progress and the next batch. Rerunning with the same state file continues at that
batch; the adversarial examples and accuracies are those of an uninterrupted run.

pyautoattack's own ``state_path`` is not used because it survives an interruption less
well: it keeps the robust flags, but then returns the clean images for the points broken
before the interruption, restarts the interrupted attack on all points still robust (in
other batches), and records a finished attack at most once a minute.

Several processes (torchrun) share the work and give one process's result exactly: the batches of
each attack are dealt in rounds, batch ``k * N + r`` to process ``r`` (N processes), each attacked
from the same seed one process would use; after every round the processes exchange their batches'
results and apply them in batch order, so every process holds the same state, and rank 0 logs the
round's batches as one process would and saves the state. A kill of any process loses at most the
round in progress; a rerun with any number of processes continues from the saved batch.

The price of going batch by batch: the package's sanity checks run once per batch instead of
once, about 9 forward passes per batch against APGD-CE's 100 forward-backward passes (a few
percent of that attack, far less of the others; an estimate, not a measurement).
"""

import math
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from engine.distributed import broadcast_object, gather_objects, is_main_process, rank, world_size
from engine.errors import UserError
from engine.file_io import atomic_save, load_file, remove_stale_temporaries

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
VERSIONS = ("standard", "plus", "rand", "custom")
# The cheap custom version of the authors' eval.py (and of AutoAttack's example script).
CUSTOM_ATTACKS = ("apgd-ce", "fab")
CUSTOM_RESTARTS = 2
STATE_FORMAT = 1
SEQUENTIAL = "autoattack"  # the name of the one run of a non-individual evaluation


def import_autoattack() -> Tuple[type, str, bool]:
    """(AutoAttack class, "package version", keyword-only API?): pyautoattack, else upstream autoattack."""
    try:
        import pyautoattack
    except ImportError:
        pass
    else:
        return pyautoattack.AutoAttack, f"pyautoattack {pyautoattack.__version__}", True
    try:
        import autoattack
    except ImportError:
        raise UserError(
            "AutoAttack is not installed: pip install pyautoattack "
            "(or the upstream package: pip install git+https://github.com/fra31/auto-attack)"
        ) from None
    try:
        version = metadata.version("autoattack")
    except metadata.PackageNotFoundError:
        version = "(version unknown)"
    return autoattack.AutoAttack, f"autoattack {version}", False


class Adversary:
    """One AutoAttack object configured for ``version``; runs one attack on one batch per call."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        norm: str,
        eps: float,
        version: str,
        attacks: Optional[Sequence[str]],
        device: torch.device,
        seed: int,
    ):
        if version != "custom" and attacks:
            raise UserError(f"--attacks only goes with --version custom (version {version} has its own attacks)")
        if version == "custom" and not attacks:
            attacks = CUSTOM_ATTACKS
        cls, self.package, keyword_api = import_autoattack()
        custom = list(attacks) if version == "custom" else None
        if keyword_api:
            self.autoattack = cls(model, norm=norm, eps=eps, version=version, device=device, seed=seed, attacks=custom)
        else:
            self.autoattack = cls(
                model,
                norm=norm,
                eps=eps,
                version=version,
                device=device,
                seed=seed,
                attacks_to_run=custom or [],
                verbose=False,
            )
        self._keyword_api = keyword_api
        if version == "custom":
            self.autoattack.apgd.n_restarts = CUSTOM_RESTARTS
            self.autoattack.fab.n_restarts = CUSTOM_RESTARTS
        # Its per-call progress lines would describe one batch; `run_autoattack` writes
        # whole-run lines in the same format instead. Warnings of its checks still come.
        self.autoattack.verbose = False
        self.attacks: List[str] = list(self.autoattack.attacks_to_run)
        self.norm = norm
        self.eps = eps

    def __call__(self, attack: str, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(adversarial images, predicted labels) of one batch, on the CPU."""
        self.autoattack.attacks_to_run = [attack]
        if self._keyword_api:
            x_adv, y_adv = self.autoattack.run_standard_evaluation(x, y, batch_size=len(x))
        else:
            x_adv, y_adv = self.autoattack.run_standard_evaluation(x, y, bs=len(x), return_labels=True)
        return x_adv.detach().cpu(), y_adv.detach().cpu()


@dataclass
class Result:
    """Accuracies are fractions in [0, 1]."""

    clean_acc: float
    robust_acc: float  # points that withstood every attack
    robust_after: Dict[str, float]  # sequential: after each attack; individual: each attack alone
    x_adv: Dict[str, torch.Tensor]  # per run: SEQUENTIAL, or each attack name with --individual
    y_adv: Dict[str, torch.Tensor]
    seconds: float  # attack time summed over all sessions
    resumed: bool


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels, on the CPU."""
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        )


def run_autoattack(
    adversary: Adversary,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    individual: bool = False,
    state_path: Optional[Path] = None,
    fingerprint: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> Result:
    """AutoAttack on (x, y) in [0, 1] on the CPU, continuing from ``state_path`` when it exists.

    Sequential (the standard way): each attack runs on the points all earlier ones failed on.
    ``individual``: each attack runs alone on all correctly classified points (AutoAttack's
    ``run_standard_evaluation_individual``). ``fingerprint`` (plain values) identifies the
    evaluation; a state file with another fingerprint is refused.
    """
    fingerprint = dict(fingerprint or {})
    plan = {attack: [attack] for attack in adversary.attacks} if individual else {SEQUENTIAL: adversary.attacks}
    main = is_main_process()
    state = None
    if main:  # rank 0 reads or starts the state; every process then holds rank 0's
        if state_path is not None:
            remove_stale_temporaries(state_path.parent, [state_path.name])  # left by a run killed while saving
        state = _load_state(state_path, fingerprint, x, y) if state_path is not None and state_path.exists() else None
    resumed = broadcast_object(state is not None)
    if not resumed:
        clean_pred = predict(model, x, batch_size, device)
        state = {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint,
            "labels": y.clone(),
            "clean_pred": clean_pred,
            "runs": {name: _new_run(clean_pred == y, x, clean_pred) for name in plan},
        }
        if main:
            _save(state, state_path)
    else:
        state = broadcast_object(state)
        done = sum(len(run["done"]) for run in state["runs"].values())
        log(f"resuming from {state_path}: {done} of {sum(map(len, plan.values()))} attack runs finished")

    def save() -> None:
        if main:
            _save(state, state_path)

    correct = state["clean_pred"] == y
    log(f"initial accuracy: {correct.float().mean().item():.2%}")
    for name, attacks in plan.items():
        run = state["runs"][name]
        for attack in attacks:
            if attack in run["done"]:
                accuracy = run["done"][attack]
                log(f"robust accuracy after {attack.upper()}: {accuracy:.2%} (finished in an earlier session)")
                continue
            _run_attack(adversary, attack, run, x, y, batch_size, save, log)
        if individual:
            log(f"robust accuracy by {name.upper()}: {run['done'][name]:.2%} (time attack: {run['seconds']:.1f} s)")
        _log_final_check(adversary.norm, run["x_adv"], x, run["robust"], log)

    robust = torch.stack([run["robust"] for run in state["runs"].values()]).all(0)
    if individual:
        robust_after = {name: state["runs"][name]["done"][name] for name in plan}
    else:
        robust_after = dict(state["runs"][SEQUENTIAL]["done"])
    return Result(
        clean_acc=correct.float().mean().item(),
        robust_acc=robust.float().mean().item(),
        robust_after=robust_after,
        x_adv={name: run["x_adv"] for name, run in state["runs"].items()},
        y_adv={name: run["y_adv"] for name, run in state["runs"].items()},
        seconds=sum(run["seconds"] for run in state["runs"].values()),
        resumed=resumed,
    )


def _run_attack(adversary, attack: str, run: dict, x, y, batch_size: int, save, log) -> None:
    current = run["current"]
    if current is None or current["attack"] != attack:
        # Fixed at the start of the attack, as AutoAttack does, so resumed batches are the same batches.
        current = run["current"] = {"attack": attack, "indices": run["robust"].nonzero().flatten(), "next_batch": 0}
    indices = current["indices"]
    n_batches = math.ceil(len(indices) / batch_size)
    if n_batches == 0:
        log(f"no robust points left for {attack}")
    elif current["next_batch"]:
        log(f"{attack}: continuing at batch {current['next_batch'] + 1}/{n_batches}")
    processes, me = world_size(), rank()

    def batch_of(batch_index: int) -> torch.Tensor:
        return indices[batch_index * batch_size : (batch_index + 1) * batch_size]

    # Rounds of one batch per process (one process: one batch a round); the results are applied in
    # batch order on every process, then saved, exactly as one process applies and saves them.
    for first in range(current["next_batch"], n_batches, processes):
        mine = first + me
        outcome = None
        if mine < n_batches:
            started = time.perf_counter()
            batch = batch_of(mine)
            x_adv, y_adv = adversary(attack, x[batch], y[batch])
            fooled = y_adv != y[batch]
            outcome = (mine, fooled, x_adv[fooled], y_adv[fooled], time.perf_counter() - started)
        for done in gather_objects(outcome):
            if done is None:
                continue
            batch_index, fooled, x_fooled, y_fooled, seconds = done
            batch = batch_of(batch_index)
            broken = batch[fooled]
            run["robust"][broken] = False
            run["x_adv"][broken] = x_fooled
            run["y_adv"][broken] = y_fooled
            current["next_batch"] = batch_index + 1
            run["seconds"] += seconds
            log(
                f"{attack} - {batch_index + 1}/{n_batches} - {int(fooled.sum())} out of {len(batch)} "
                "successfully perturbed"
            )
        save()
    run["done"][attack] = run["robust"].float().mean().item()
    run["current"] = None
    save()
    log(f"robust accuracy after {attack.upper()}: {run['done'][attack]:.2%} (total time {run['seconds']:.1f} s)")


def _log_final_check(norm: str, x_adv: torch.Tensor, x: torch.Tensor, robust: torch.Tensor, log) -> None:
    """AutoAttack's closing lines: the largest perturbation and the range of the images."""
    delta = (x_adv - x).flatten(1)
    size = {"Linf": delta.abs().max(1)[0], "L2": delta.norm(dim=1), "L1": delta.abs().sum(1)}[norm]
    log(
        f"max {norm} perturbation: {size.max().item():.5f}, nan in tensor: {int(torch.isnan(x_adv).sum())}, "
        f"max: {x_adv.max().item():.5f}, min: {x_adv.min().item():.5f}"
    )
    log(f"robust accuracy: {robust.float().mean().item():.2%}")


# --- the state file ------------------------------------------------------------------------


def _new_run(correct: torch.Tensor, x: torch.Tensor, clean_pred: torch.Tensor) -> dict:
    # As in AutoAttack: a point not yet broken keeps its clean image and clean prediction.
    return {
        "robust": correct.clone(),
        "x_adv": x.clone(),
        "y_adv": clean_pred.clone(),
        "done": {},
        "current": None,
        "seconds": 0.0,
    }


def _save(state: dict, path: Optional[Path]) -> None:
    if path is not None:
        atomic_save(_as_saved(state), path)


def _as_saved(state: dict) -> dict:
    """Only the adversarial images of broken points are stored; the others are the clean images."""
    runs = {}
    correct = state["clean_pred"] == state["labels"]
    for name, run in state["runs"].items():
        index = (~run["robust"] & correct).nonzero().flatten()
        saved = {k: v for k, v in run.items() if k != "x_adv"}
        saved["adv_index"] = index
        saved["adv_images"] = run["x_adv"][index].clone()
        runs[name] = saved
    return {**state, "runs": runs}


def _load_state(path: Path, fingerprint: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    saved = load_file(path)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise UserError(
            f"{path} is not an AutoAttack state file written by this evaluation; delete it or pass another --state_path"
        )
    different = sorted(
        k for k in set(fingerprint) | set(saved["fingerprint"]) if fingerprint.get(k) != saved["fingerprint"].get(k)
    )
    if different:
        details = "; ".join(
            f"{key}: {saved['fingerprint'].get(key)!r} there, {fingerprint.get(key)!r} now" for key in different
        )
        raise UserError(
            f"the state file {path} belongs to another evaluation ({details}). Delete it to start "
            f"over, or pass another --state_path"
        )
    if not torch.equal(saved["labels"], y):
        raise UserError(
            f"the state file {path} was written for other images (its labels differ); delete it "
            f"to start over, or pass another --state_path"
        )
    for run in saved["runs"].values():
        run["x_adv"] = x.clone()
        run["x_adv"][run.pop("adv_index")] = run.pop("adv_images")
    return saved
