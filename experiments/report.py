"""One table of many runs: the runs that differ only by seed grouped, mean ± std of each number.

    python -m experiments.report runs/digits_ikl runs/digits_trades       # folders of runs (a sweep's), or run folders
    python -m experiments.report 'runs/cifar100_*' --csv report.csv --plot curves.png
    python -m experiments.report runs/cifar100_ikl_a4b20t4 --which swa     # the epoch average's numbers (AT)

A run folder is one holding config.yaml; a folder above run folders stands for all of them.
Runs are grouped by their resolved config.yaml with the seed and what only says where or how
a run ran left out (name, out_dir, data.root, device, workers, ...). Each group is one row:

* adversarial training: clean and PGD accuracy of the last epoch on the monitored images
  (results.json; the model's, or with ``--which ema|swa`` the EMA's or the epoch average's),
  and AutoAttack's robust accuracy from the JSON files `adv_training.auto_attacks.eval`
  wrote into the run folder for the same weights (last.pt, ema.pt, the epoch average), checked
  by their sha256 against the files now in the folder;
* distillation: the best and the last epoch's top-1.

Cells are ``mean ± std`` (the sample standard deviation, n - 1; none for one run), with the
number of runs in the cell when it is not every finished run of the row. Runs without
results.json are in progress: counted apart (``+1 running``) and listed under the table, never
averaged in. A row whose runs name a paper row (``paper_row``) shows the paper's numbers beside
(experiments/paper_rows.py: values and sources). ``--csv`` writes the same table, one number per
column; ``--plot`` draws each row's accuracy curves, the mean over seeds with a band from the
lowest to the highest seed.
"""

import argparse
import csv
import glob
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from adv_training.auto_attacks.reports import is_standard_autoattack, threat_model
from engine.cli import error_exit
from engine.errors import UserError
from engine.file_io import atomic_write_text, sha256_file
from engine.plot import plot_groups
from engine.run_folder import OWNER_PREFIXES, RunFolder, metric_key
from engine.run_folder import find_run_folders as run_folders_below

from .paper_rows import paper_values
from .sweep import setting
from .tasks import TASKS, Task, task_of_run

# AutoAttack's --which for the weights each --which of the report stands for.
AUTOATTACK_WEIGHTS = {"model": "last", "ema": "ema", "swa": "swa"}


@dataclass
class Run:
    path: Path
    task: Task
    config: Dict[str, Any]
    finished: bool
    epochs_done: int
    numbers: Dict[str, float] = field(default_factory=dict)
    records: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    autoattack_images: Optional[int] = None


@dataclass
class Group:
    label: str
    runs: List[Run]
    setting: Dict[str, Any]

    @property
    def finished(self) -> List[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def running(self) -> List[Run]:
        return [run for run in self.runs if not run.finished]


def find_run_folders(patterns: Sequence[str]) -> List[Path]:
    """Run folders (holding config.yaml) named by, or under, the given paths and globs."""
    paths = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(pattern))] if glob.has_magic(pattern) else [Path(pattern)]
        if not matches or not any(path.exists() for path in matches):
            raise UserError(f"{pattern} does not exist")
        paths.extend(matches)
    folders = [folder.path for folder in run_folders_below(paths)]
    if not folders:
        raise UserError(f"no run folder (one holding config.yaml) in or under {' '.join(patterns)}")
    return folders


def autoattack_accuracy(run: Run, which: str) -> Optional[float]:
    """Robust accuracy of the newest standard AutoAttack report (at the run's threat model) in the
    run folder for the weights ``which`` stands for, when those weights are still the ones it
    evaluated (same sha256). Quick checks (custom attack lists, other budgets) do not count."""
    norm, epsilon = threat_model(run.config)
    for path, report in RunFolder(run.path).autoattack_reports():
        if report["which"] != AUTOATTACK_WEIGHTS[which] or not is_standard_autoattack(report, norm, epsilon):
            continue
        weights = run.path / Path(report["checkpoint_file"]).name  # the run folder's file, wherever it was read from
        if weights.is_file() and sha256_file(weights) == report["checkpoint_sha256"]:
            run.autoattack_images = report.get("n_ex")
            return float(report["robust_acc"])
        run.notes.append(f"{path} evaluated weights that are no longer in the folder (left out)")
    return None


def read_run(path: Path, which: str) -> Run:
    folder = RunFolder(path)
    config = folder.read_config()
    task = task_of_run(folder, config)
    records = folder.read_metrics()
    results = folder.read_results()
    run = Run(
        path,
        task,
        config,
        finished=results is not None,
        epochs_done=max((int(r["epoch"]) for r in records), default=0),
        records=records,
    )
    if results is None:
        if folder.results_damaged():
            run.notes.append(f"{folder.results} cannot be read (damaged?): the run is listed as in progress")
        return run
    final = results.get("final") or {}
    if task is TASKS["knowledge_distillation"]:
        run.numbers = {
            "top1_best": results.get("best_" + metric_key("top1")),
            "top1_last": final.get(metric_key("top1")),
            **{f"{group}_last": final.get(metric_key(f"{group}_shot_top1")) for group in ("many", "medium", "few")},
        }
    else:
        if which == "swa" and not any(key.startswith(OWNER_PREFIXES["swa"]) for key in final):
            run.notes.append(f"{path}: no epoch-average numbers in results.json")
        split = "val" if (config.get("eval") or {}).get("split") == "validation" else "test"
        run.numbers = {
            "clean": final.get(metric_key("clean_acc", owner=which)),
            "pgd": final.get(metric_key("robust_acc", split=split, owner=which)),
            "autoattack": autoattack_accuracy(run, which),
        }
    run.numbers = {key: float(value) for key, value in run.numbers.items() if value is not None}
    return run


def _label(run: Run) -> str:
    """The run's name without its seed; for a sweep's run (``key=value,...,seed=N``) its sweep
    folder's name too."""
    name = run.path.name
    stripped = re.sub(r"(^|[,_-])seed=?\d+$", "", name)
    if "=" in name:
        return run.path.parent.name + (f"/{stripped}" if stripped else "")
    return stripped or name


def group_runs(runs: Sequence[Run]) -> List[Group]:
    groups: Dict[str, Group] = {}
    for run in runs:
        trained = {key: value for key, value in setting(run.task, run.config).items() if key != "seed"}
        key = json.dumps([run.task.name, trained], sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(_label(run), [], trained)
        groups[key].runs.append(run)
    labels: Dict[str, int] = {}
    for group in groups.values():  # two settings under one name: tell them apart
        labels[group.label] = labels.get(group.label, 0) + 1
        if labels[group.label] > 1:
            group.label += f" ({labels[group.label]})"
    return list(groups.values())


def summarise(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


COLUMNS = {
    "adv_training": [("clean", "clean"), ("pgd", "PGD"), ("autoattack", "AutoAttack")],
    "knowledge_distillation": [("top1_best", "top-1 (best)"), ("top1_last", "top-1 (last)")],
}
# A long-tailed distillation's shot-wise top-1 (the last epoch's), shown when a run of the table has it.
SHOT_COLUMNS = [
    ("many_last", "many-shot (last)"),
    ("medium_last", "medium-shot (last)"),
    ("few_last", "few-shot (last)"),
]


def paper_cell(group: Group) -> Tuple[str, Optional[str]]:
    """The paper's numbers for the group (as "65.76 / 31.91") and their source, if its runs name a row."""
    rows = {run.config.get("paper_row") or "" for run in group.runs}
    if len(rows) != 1 or not next(iter(rows)):
        return "", None
    method = group.runs[0].config.get("method")
    found = paper_values(next(iter(rows)), method)
    if found is None:
        return "", None
    values, source = found
    keys = ("clean", "autoattack") if group.runs[0].task is TASKS["adv_training"] else ("top1",)
    return " / ".join(f"{values[key]:.2f}" if key in values else "—" for key in keys), source


def table(groups: Sequence[Group], which: str) -> Tuple[str, List[Dict[str, Any]]]:
    """The Markdown table and the CSV rows."""
    lines, rows, sources = [], [], []
    for task in ("adv_training", "knowledge_distillation"):
        selected = [group for group in groups if group.runs[0].task.name == task]
        if not selected:
            continue
        columns = COLUMNS[task]
        if any(key in run.numbers for group in selected for run in group.runs for key, _ in SHOT_COLUMNS):
            columns = columns + SHOT_COLUMNS
        headers = [name for _, name in columns]
        if task == "adv_training":
            steps = {(g.runs[0].config.get("eval") or {}).get("pgd_steps") for g in selected}
            splits = {(g.runs[0].config.get("eval") or {}).get("split", "test") for g in selected}
            headers[1] = (f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD") + (
                f" ({splits.pop()})" if len(splits) == 1 and "validation" in splits else ""
            )
            images = {run.autoattack_images for g in selected for run in g.finished if run.autoattack_images}
            if len(images) == 1:
                headers[2] = f"AutoAttack ({images.pop()} images)"
            paper_header = "paper clean / AutoAttack"
            whose = {"model": "the model", "ema": "the EMA", "swa": "the epoch average"}.get(which, which)
            title = f"Adversarial training ({whose}, %)"
        else:
            paper_header = "paper top-1"
            title = "Knowledge distillation (student top-1, %)"
        papers = {id(group): paper_cell(group) for group in selected}
        with_paper = any(source for _, source in papers.values())  # no empty column for rows the paper lacks
        lines += [
            f"**{title}**",
            "",
            "| setting | runs | " + " | ".join(headers) + (f" | {paper_header} |" if with_paper else " |"),
            "|---|---|" + "---:|" * len(headers) + ("---|" if with_paper else ""),
        ]
        for group in selected:
            finished = group.finished
            count = f"{len(finished)}" + (f" (+{len(group.running)} running)" if group.running else "")
            cells = []
            row = {"setting": group.label, "task": task, "runs": len(finished), "running": len(group.running)}
            for key, _ in columns:
                values = [run.numbers[key] for run in finished if key in run.numbers]
                mean, std = summarise(values)
                row.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_n": len(values)})
                if mean is None:
                    cells.append("—")
                    continue
                cell = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                cells.append(cell + (f" (n={len(values)})" if len(values) != len(finished) else ""))
            paper, source = papers[id(group)]
            if source:
                if source not in sources:
                    sources.append(source)
                paper += f" [{sources.index(source) + 1}]"
            row["paper"], row["paper_source"] = paper, source or ""
            lines.append(
                f"| {group.label} | {count} | " + " | ".join(cells) + (f" | {paper} |" if with_paper else " |")
            )
            rows.append(row)
        lines.append("")
    lines += [f"[{number}] {source}" for number, source in enumerate(sources, start=1)]
    running = [run for group in groups for run in group.running]
    if running:
        lines += ["", "In progress (not averaged):"] + [
            f"- {run.path} (epoch {run.epochs_done} of {run.config.get('epochs', '?')})" for run in running
        ]
    notes = [note for group in groups for run in group.runs for note in run.notes]
    if notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n", rows


def write_csv(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: ("" if value is None or (isinstance(value, float) and math.isnan(value)) else value)
                for key, value in row.items()
            }
        )
    atomic_write_text(buffer.getvalue(), path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders, folders holding run folders, or globs of them")
    parser.add_argument(
        "--which",
        choices=sorted(AUTOATTACK_WEIGHTS),
        default="model",
        help="adversarial training: whose numbers, the model's (last epoch), the EMA's or the epoch average's",
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument("--plot", type=Path, default=None, help="draw each row's accuracy curves (mean and seed band)")
    args = parser.parse_args(argv)
    try:
        groups = group_runs([read_run(path, args.which) for path in find_run_folders(args.runs)])
        text, rows = table(groups, args.which)
        print(text, end="")
        if args.csv:
            write_csv(rows, args.csv)
            print(f"\nwrote {args.csv}")
        if args.plot:
            plot_groups(
                [(group.label, [run.records for run in group.finished]) for group in groups if group.finished],
                args.plot,
            )
            print(f"wrote {args.plot}")
    except UserError as error:
        return error_exit(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
