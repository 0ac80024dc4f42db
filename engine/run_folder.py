"""The run folder: every file a training run writes, named, written and read here only.

One run writes one folder::

    config.yaml            the resolved configuration (defaults + YAML + overrides)
    config.previous.yaml   the config the run had before a resume that changed it
    environment.json       task, seed, versions, hardware, git commit
    metrics.jsonl          one JSON line per epoch
    tensorboard/           the same scalars for TensorBoard
    curves.png             the curves of metrics.jsonl (`engine.plot`)
    last.pt                everything needed to continue exactly (``resume=true``), written every epoch
    best.pt                the best epoch so far, by the metric the run selects by
    ema.pt                 the weight average (adversarial training, ema.enabled)
    ours-model-epoch{N}.pt the weights of epoch N (``save_every``; `adv_training.swa` reads them)
    ours-model-epoch-SWA{tau}{start}{end}.pt   the epoch average (the reference's swa.py name)
    results.json           written once the run completes: {"final": {...}, "best_epoch", ...}
    *.json                 AutoAttack reports (`adv_training.auto_attacks.eval`), anywhere below the folder

What last.pt and the weights files hold is decided by `engine.checkpoint`: every weights file
is ``{"model": state_dict, "epoch": N, <metric name>: value, ...}`` with the numbers measured for
those weights. Every file is written atomically (a temporary file, then a rename), so a run killed at any
moment leaves each file either as it was or complete. `RunFolder.weights` picks the file that
stands for a run (what AutoAttack evaluates and export publishes); `metric_key` names the
per-epoch numbers that results.json's ``final`` holds.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import yaml

from .errors import UserError
from .file_io import PathLike, atomic_save, atomic_write_text, remove_stale_temporaries, writing

CONFIG = "config.yaml"
PREVIOUS_CONFIG = "config.previous.yaml"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CURVES = "curves.png"
LAST = "last.pt"
BEST = "best.pt"
EMA = "ema.pt"
RESULTS = "results.json"
EPOCH_WEIGHTS = "ours-model-epoch{}.pt"
EPOCH_AVERAGE = "ours-model-epoch-SWA{}{}{}.pt"
EPOCH_AVERAGE_GLOB = "ours-model-epoch-SWA*.pt"

# The weights a run folder holds, by the name `--which` gives them (AutoAttack, export, report).
NAMED_WEIGHTS = {"ema": EMA, "best": BEST, "last": LAST}
# What an AutoAttack report (JSON) holds at least; the report and the model card read it by these keys.
AUTOATTACK_REPORT_KEYS = frozenset({"robust_acc", "clean_acc", "checkpoint_file", "checkpoint_sha256", "which"})
# Whose numbers a per-epoch record holds, and the prefix of their keys.
OWNER_PREFIXES = {"model": "", "ema": "ema_", "swa": "swa_"}


def metric_key(name: str, *, split: str = "test", owner: str = "model") -> str:
    """The key of a per-epoch number: ``metric_key("robust_acc", split="val", owner="ema")`` is
    ``ema_val_robust_acc``; ``metric_key("top1")`` is ``test_top1``."""
    return f"{OWNER_PREFIXES[owner]}{split}_{name}"


def evaluation_keys(
    record: Dict[str, Any], splits: Iterable[str] = ("test", "val"), owners: Iterable[str] = tuple(OWNER_PREFIXES)
) -> Dict[str, Any]:
    """The evaluation numbers of an epoch record (of the given owners and splits; by default all of them:
    results.json's ``final``)."""
    prefixes = tuple(f"{OWNER_PREFIXES[owner]}{split}_" for owner in owners for split in splits)
    return {key: value for key, value in record.items() if key.startswith(prefixes)}


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested past Python's stack
        return None
    return data if isinstance(data, dict) else None


class RunFolder:
    """The files of one run folder: ``RunFolder("runs/x").best`` is ``runs/x/best.pt``."""

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- names ---------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def previous_config(self) -> Path:
        return self.path / PREVIOUS_CONFIG

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def ema(self) -> Path:
        return self.path / EMA

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def epoch_weights(self, epoch: int) -> Path:
        return self.path / EPOCH_WEIGHTS.format(epoch)

    def epoch_average(self, tau: float, start: int, end: int) -> Path:
        """The reference's name, ``'{}{}{}'.format(tau, start, end)`` of the parsed values
        (``ours-model-epoch-SWA0.91200.pt`` for ``swa.py 0.9 1 200``)."""
        return self.path / EPOCH_AVERAGE.format(float(tau), int(start), int(end))

    def is_run(self) -> bool:
        """A run folder is one holding config.yaml."""
        return self.config.is_file()

    # --- writing -------------------------------------------------------------------------
    def prepare(self, *, config_yaml: str, environment: Dict[str, Any], resume: bool) -> None:
        """Create (or, when resuming, reuse) the folder and record config and environment.

        A folder that already holds a run is never overwritten by a fresh start: the user
        either resumes it or names another folder.
        """
        if resume and not self.last.is_file():
            raise UserError(
                f"resume=true but {self.last} does not exist; start without resume=true, or check out_dir/name"
            )
        if not resume and self.last.is_file():
            raise UserError(
                f"{self.path} already holds a run ({LAST}); pass resume=true to continue it, "
                f"or choose another folder with name=..."
            )
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        if resume and self.config.is_file():
            saved = self.config.read_text(encoding="utf-8")
            if _without_resume(saved) != _without_resume(config_yaml):
                atomic_write_text(saved, self.previous_config)
        atomic_write_text(config_yaml, self.config)
        atomic_write_text(json.dumps(environment, indent=2) + "\n", self.environment)

    def write_metrics(self, records: List[Dict[str, Any]]) -> None:
        atomic_write_text("".join(json.dumps(record) + "\n" for record in records), self.metrics)

    def append_metrics(self, record: Dict[str, Any]) -> None:
        with writing(self.metrics), open(self.metrics, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def write_results(self, results: Dict[str, Any]) -> Path:
        return atomic_write_text(json.dumps(results, indent=2) + "\n", self.results)

    def save(self, obj: Any, path: Path) -> Path:
        """``obj`` to ``path`` (one of this folder's names) with `torch.save`, atomically."""
        return atomic_save(obj, path)

    # --- reading -------------------------------------------------------------------------
    def read_config(self) -> Dict[str, Any]:
        """config.yaml as a mapping; a `UserError` when it is missing or not YAML."""
        try:
            config = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
            raise UserError(f"{self.config} cannot be read ({type(error).__name__}: {error})") from None
        if not isinstance(config, dict):
            raise UserError(f"{self.config} does not hold a mapping of config keys")
        return config

    def read_config_or_empty(self) -> Dict[str, Any]:
        try:
            return self.read_config()
        except UserError:
            return {}

    def read_environment(self) -> Dict[str, Any]:
        return _read_json(self.environment) or {}

    def read_results(self) -> Optional[Dict[str, Any]]:
        """results.json, or None while the run is unfinished (or the file is damaged: `results_damaged`)."""
        return _read_json(self.results)

    def results_damaged(self) -> bool:
        return self.results.exists() and self.read_results() is None

    def final_metrics(self) -> Dict[str, Any]:
        return (self.read_results() or {}).get("final") or {}

    def read_metrics(self, log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
        """The epoch records of metrics.jsonl (empty when there is none).

        A last line cut short (a kill while it was written, or a trainer appending it right
        now) is dropped, and said through ``log``; a damaged line before it is a `UserError`.
        """
        path = self.metrics
        if not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path} is damaged (not UTF-8 at byte {error.start}); cut it after the last good "
                f"line, or delete it (the run resumes without it)"
            ) from None
        lines = [line for line in text.splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except RecursionError:  # nested deeper than Python's stack: no trainer wrote it
                raise UserError(
                    f"{path}, line {number}, is nested too deeply to be an epoch record; delete it"
                ) from None
            except json.JSONDecodeError as error:
                if number == len(lines):
                    if log is not None:
                        log(f"note: dropped the incomplete last line of {path} (a run stopped while writing it)")
                    break
                raise UserError(
                    f"{path}, line {number}, is not JSON ({error.msg}); delete that line to continue"
                ) from None
            if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
                records.append(record)
        return records

    def autoattack_reports(self) -> List[Tuple[Path, Dict[str, Any]]]:
        """The AutoAttack reports anywhere below the folder, newest first."""
        reports = []
        for path in self.path.rglob("*.json"):
            report = _read_json(path)
            if report and AUTOATTACK_REPORT_KEYS <= set(report):
                reports.append((path, report))
        return sorted(reports, key=lambda item: str(item[1].get("finished", "")), reverse=True)

    # --- the weights that stand for the run --------------------------------------------------
    def configured_epoch_average(self) -> Optional[Path]:
        """The epoch average the run's config names, else the newest ``ours-model-epoch-SWA*.pt``."""
        try:
            config = self.read_config()
            average = config.get("epoch_average") or config.get("swa") or {}  # swa: the section's earlier name
            named = self.epoch_average(average["tau"], average["start"], average.get("end") or config.get("epochs"))
            if named.is_file():
                return named
        except (UserError, KeyError, TypeError, ValueError, AttributeError):
            pass  # no config, or one without the epoch average: fall back to the files present
        present = sorted(self.path.glob(EPOCH_AVERAGE_GLOB))
        return max(present, key=lambda p: p.stat().st_mtime) if present else None

    def weights(self, which: Optional[str] = None) -> Tuple[Path, str]:
        """(file, which): ``which`` (swa, ema, best or last), else the weights that stand for the run:
        the epoch average, else the EMA, else best.pt.

        The epoch average (the reference's swa.py) comes first because it is what the authors
        release and report; the in-training EMA is an extra of this repository.
        """
        average = self.configured_epoch_average()
        if which == "swa":
            if average is None:
                raise UserError(
                    f"{self.path} holds no {EPOCH_AVERAGE_GLOB}; write one with "
                    f"python -m adv_training.swa {self.path} 0.9 1 EPOCHS"
                )
            return average, which
        if which is not None:
            path = self.path / NAMED_WEIGHTS[which]
            if not path.is_file():
                candidates = [self.path / name for name in NAMED_WEIGHTS.values()] + ([average] if average else [])
                present = ", ".join(p.name for p in candidates if p.is_file()) or "no weights"
                raise UserError(f"{path} does not exist (--which {which}); the run folder holds: {present}")
            return path, which
        for choice, path in (("swa", average), ("ema", self.ema), ("best", self.best)):
            if path is not None and path.is_file():
                return path, choice
        raise UserError(
            f"{self.path} holds no weights to evaluate ({EPOCH_AVERAGE_GLOB}, {EMA} or {BEST}); "
            f"pass --which last for {LAST}, or a checkpoint file"
        )


def _without_resume(config_yaml: str) -> str:
    """The config text minus its ``resume:`` line, which differs between a start and its resume."""
    return "\n".join(line for line in config_yaml.splitlines() if not line.startswith("resume:"))


def find_run_folders(paths: Iterable[Path]) -> List[RunFolder]:
    """The run folders named by, or below, ``paths`` (each once, in order)."""
    found: List[Path] = []
    for path in paths:
        if RunFolder(path).is_run():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(config.parent for config in path.rglob(CONFIG)))
    return [RunFolder(path) for path in dict.fromkeys(p.resolve() for p in found)]
