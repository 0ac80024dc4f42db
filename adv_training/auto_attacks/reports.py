"""Reading the AutoAttack reports of a run folder: which of them count for the run's numbers.

A report counts when it is the standard AutoAttack (all four attacks) at the run's own threat
model and evaluated exactly the weights now in the folder (same sha256). Quick checks (custom
attack lists, other budgets) and reports of weights since overwritten do not count. The model
card (`adv_training.export`) and the report of many runs (`experiments.report`) read them so.
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from engine.errors import UserError
from engine.file_io import sha256_file
from engine.run_folder import RunFolder


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(path: Path, report: Dict[str, Any], key: str, ok: bool, wanted: str) -> None:
    if not ok:
        raise UserError(
            f"{path}: field '{key}' must be {wanted}, got {report.get(key)!r:.80}; the report is damaged: "
            f"run the evaluation again, or delete the file"
        )


def check_autoattack_report(path: Path, report: Dict[str, Any]) -> Dict[str, Any]:
    """``report`` (an AutoAttack JSON) when every field the model card and the kit read has its type and
    range; a `UserError` naming the file and the field otherwise (reports are data: a damaged or
    hand-edited one never reaches a card)."""
    for key in ("clean_acc", "robust_acc"):
        value = report.get(key)
        _require(path, report, key, _number(value) and 0 <= value <= 100, "a number in [0, 100]")
    n_ex = report.get("n_ex")
    _require(path, report, "n_ex", n_ex is None or (isinstance(n_ex, int) and n_ex > 0), "a positive integer")
    _require(path, report, "epsilon", _number(report.get("epsilon")) and report["epsilon"] > 0, "a positive number")
    for key in ("version", "norm"):
        _require(path, report, key, isinstance(report.get(key), str), "text")
    return report


def check_corruptions_report(path: Path, report: Dict[str, Any]) -> Dict[str, Any]:
    """`check_autoattack_report` for a corruption evaluation (`corruptions`' JSON)."""
    value = report.get("corruptions_acc")
    _require(path, report, "corruptions_acc", _number(value) and 0 <= value <= 100, "a number in [0, 100]")
    per_severity = report.get("n_ex_per_severity")
    ok = isinstance(per_severity, int) and not isinstance(per_severity, bool) and per_severity > 0
    _require(path, report, "n_ex_per_severity", ok, "a positive integer")
    return report


def threat_model(config: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    """(norm, epsilon) a run was trained for and is evaluated at: eval.epsilon, else attack.epsilon."""
    attack, evaluation = config.get("attack") or {}, config.get("eval") or {}
    epsilon = evaluation.get("epsilon") if evaluation.get("epsilon") is not None else attack.get("epsilon")
    return str(attack.get("norm", "linf")).lower(), epsilon


def is_standard_autoattack(report: Dict[str, Any], norm: str, epsilon: Optional[float]) -> bool:
    """The standard AutoAttack (all four attacks) at the run's own threat model: what counts."""
    return (
        report.get("version") == "standard"
        and str(report.get("norm", "")).lower() == norm
        and epsilon is not None
        and abs(float(report.get("epsilon", -1)) - float(epsilon)) < 1e-9
    )


def matching_autoattack(
    run_dir: Path, weights: Path, norm: str, epsilon: Optional[float]
) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest standard AutoAttack report at (norm, epsilon) in ``run_dir`` that evaluated
    exactly the file ``weights`` (by sha256)."""
    digest = sha256_file(weights)
    return next(
        (
            (path, report)
            for path, report in RunFolder(run_dir).autoattack_reports()
            if report["checkpoint_sha256"] == digest
            and is_standard_autoattack(check_autoattack_report(path, report), norm, epsilon)
        ),
        None,
    )


def matching_corruptions(run_dir: Path, weights: Path) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest corruption evaluation (`corruptions`' JSON) in ``run_dir`` of exactly the file ``weights``."""
    digest = sha256_file(weights)
    found = []
    for path in Path(run_dir).rglob("*.json"):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            continue
        if isinstance(report, dict) and "corruptions_acc" in report and report.get("checkpoint_sha256") == digest:
            found.append((path, check_corruptions_report(path, report)))
    return max(found, key=lambda item: str(item[1].get("finished", "")), default=None)
