"""Seeds and grids of runs from one command.

    python -m experiments.sweep --config configs/adv_training/digits_ikl.yaml --seeds 0 1 2
    python -m experiments.sweep --config configs/adv_training/cifar100_ikl_a4b20t4.yaml --seeds 0 1 2 \\
        ikl.beta=10,20 ikl.gamma=1,0.4 data.root=/datasets      # 2 x 2 settings x 3 seeds = 12 runs
    python -m experiments.sweep --config ... --seeds 0 1 2 --print    # one command per run, for a cluster
    NPROC=4 python -m experiments.sweep --config ... --seeds 0 1 2     # each run under torchrun, 4 processes

An override with commas (``key=a,b``) is an axis of the grid; one without is applied to every
run (a list value such as ``optim.milestones=[100,150]`` is one value). Every run gets its own
folder, ``<out_dir>/<config's run name>/<axis=value,...,>seed=<s>``, so the runs of a sweep sit
together and `experiments.report` groups them by setting. A run whose folder holds results.json is
finished and skipped; one holding last.pt is resumed (``resume=true``); the others start. The
runs go one after another; ``--print`` prints their commands instead (the statuses on stderr).
A grid that changes the recipe no longer reproduces the paper's row, so the sweep clears
``paper_row`` for runs with grid axes (``paper_row=NAME`` among the overrides keeps one).

Every run's config is resolved before the first starts: a misspelt key fails at once.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from engine.cli import error_exit
from engine.config import ConfigError, flat_dict, from_dict, load_config, to_dict, where_and_how_keys
from engine.errors import UserError
from engine.run_folder import RunFolder

from .tasks import TASKS, Task, task_of_config_file

MANAGED_KEYS = ("seed", "name", "resume")  # set by the sweep for every run (out_dir: the sweep's parent folder)


@dataclass
class PlannedRun:
    run_dir: Path
    overrides: List[str]  # every override of this run, the sweep's own included
    status: str  # "finished", "resume" or "start"

    def command(self, module: str, config: Path, nproc: int) -> List[str]:
        arguments = ["-m", module, "--config", str(config), *self.overrides]
        if self.status == "resume":
            arguments.append("resume=true")
        if nproc > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={nproc}",
                "--standalone",
                *arguments,
            ]
        return [sys.executable, *arguments]


def split_values(text: str) -> List[str]:
    """``a,b,[1,2]`` -> ``["a", "b", "[1,2]"]``: commas inside brackets belong to a list value."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [value.strip() for value in values]


def parse_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[Tuple[str, List[str]]]]:
    """(fixed ``key=value`` overrides, grid axes ``(key, [values])``) in the order given."""
    fixed, axes = [], []
    for override in overrides:
        if "=" not in override:
            raise UserError(f"'{override}' is not key=value (an axis of the grid is key=a,b,c)")
        key, raw = (part.strip() for part in override.split("=", 1))
        if key in MANAGED_KEYS:
            advice = "use --seeds" if key == "seed" else "the sweep names, places and resumes every run itself"
            raise UserError(f"'{override}': {advice}")
        values = split_values(raw)
        if len(values) > 1:
            if len(set(values)) != len(values) or "" in values:
                raise UserError(f"'{override}': the values of an axis must be distinct and non-empty")
            axes.append((key, values))
        else:
            fixed.append(f"{key}={raw}")
    return fixed, axes


def folder_name(setting: Sequence[Tuple[str, str]], seed: int) -> str:
    """``key=value,...,seed=N`` with characters a folder name cannot hold replaced by ``_``."""
    parts = [f"{key}={value}" for key, value in setting] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", ",".join(parts))


def setting(task: Task, config: Dict) -> Dict:
    """What a run trains: its saved config (completed with the schema's defaults, so that a config
    written before a knob existed compares equal) as dotted keys, minus where and how it ran."""
    try:
        config = to_dict(from_dict(task.schema, config))
    except ConfigError:  # a config of another version: compared as it is
        pass
    how = set(where_and_how_keys(task.schema))
    return {key: value for key, value in flat_dict(config).items() if key not in how}


def require_same_setting(run_dir: Path, task: Task, planned: Dict, status: str) -> None:
    """A run folder is skipped or resumed only when it trains what the sweep asks for now."""
    try:
        saved = setting(task, RunFolder(run_dir).read_config())
    except UserError:
        return  # no readable config (killed before writing it): the trainer starts or resumes afresh
    planned = setting(task, planned)
    differing = sorted(key for key in set(saved) | set(planned) if saved.get(key) != planned.get(key))
    if differing:
        kind = "finished" if status == "finished" else "interrupted"
        raise UserError(
            f"{run_dir} holds a {kind} run of another setting (it differs in "
            f"{', '.join(differing[:5])}); remove it, or give the sweep another out_dir"
        )


def plan(config: Path, task: Task, seeds: Sequence[int], overrides: Sequence[str]) -> List[PlannedRun]:
    """Every run of the sweep, its config resolved (so that a bad key fails before any run)."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))} repeats a seed; give each seed once")
    schema = task.schema
    fixed, axes = parse_overrides(overrides)
    base = load_config(schema, config, fixed)
    sweep_dir = Path(base.out_dir) / (base.name or re.sub(r"_seed\d+$", "", base.run_name()))
    keep_paper_row = any(item.startswith("paper_row=") for item in fixed)
    settings: List[List[Tuple[str, str]]] = [[]]
    for key, values in axes:
        settings = [setting + [(key, value)] for setting in settings for value in values]
    runs, folders = [], {}
    for setting in settings:
        for seed in seeds:
            name = folder_name(setting, seed)
            if name in folders:
                raise UserError(
                    f"two runs of the sweep would share the folder {name} ({folders[name]} and "
                    f"{setting}); use values that differ in letters or digits"
                )
            folders[name] = setting
            paper = [] if keep_paper_row or not axes else ["paper_row="]
            run_overrides = [
                *(item for item in fixed if not item.startswith("out_dir=")),
                *(f"{k}={v}" for k, v in setting),
                *paper,
                f"seed={seed}",
                f"out_dir={sweep_dir}",
                f"name={name}",
            ]
            try:
                resolved = load_config(schema, config, run_overrides)
                task.check(resolved)
            except ConfigError as error:
                raise UserError(f"run {name}: {error}") from None
            run_dir = sweep_dir / name
            folder = RunFolder(run_dir)
            status = "finished" if folder.results.is_file() else "resume" if folder.last.is_file() else "start"
            if status != "start":
                require_same_setting(run_dir, task, to_dict(resolved), status)
            runs.append(PlannedRun(run_dir, run_overrides, status))
    return runs


def _seeds_apart(argv: List[str]) -> List[str]:
    """``--seeds 0 1 key=value`` -> ``key=value --seeds 0 1``: argparse would take the override for a seed."""
    if "--seeds" not in argv:
        return argv
    start = argv.index("--seeds") + 1
    end = start
    while end < len(argv) and re.fullmatch(r"-?\d+", argv[end]):
        end += 1
    return argv[: start - 1] + argv[end:] + argv[start - 1 : end]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="the YAML file every run starts from")
    parser.add_argument(
        "--seeds",
        metavar="SEED",
        nargs="+",
        default=None,
        help="seeds (default: the config's); the numbers after --seeds, up to the first override",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default=None,
        help="adv_training or knowledge_distillation (default: from the config's folder)",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print one command per run to stdout instead of running them (statuses on stderr)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value (every run) or key=a,b,c (an axis of the grid)")
    args = parser.parse_args(_seeds_apart(sys.argv[1:] if argv is None else list(argv)))
    try:
        if not args.config.is_file():
            raise UserError(f"config file not found: {args.config}")
        task = task_of_config_file(args.config, args.task)
        module, schema = task.module, task.schema
        nproc, nnodes = (os.environ.get(name, "1") or "1" for name in ("NPROC", "NNODES"))
        if not (nproc.isdigit() and nnodes.isdigit() and int(nproc) >= 1):
            raise UserError(f"NPROC={nproc} and NNODES={nnodes} must be whole numbers of at least 1")
        nproc = int(nproc)
        if int(nnodes) > 1:
            raise UserError(
                "the sweep starts runs on this node only (NPROC processes each); for several nodes, "
                "print the commands (--print) and start each on every node with the launchers' NNODES"
            )
        seeds = (
            [int(seed) for seed in args.seeds] if args.seeds is not None else [load_config(schema, args.config).seed]
        )
        runs = plan(args.config, task, seeds, args.overrides)
    except UserError as error:  # a ConfigError is one
        return error_exit(error)

    counts = {status: sum(run.status == status for run in runs) for status in ("finished", "resume", "start")}
    print(
        f"sweep of {len(runs)} runs under {runs[0].run_dir.parent}: {counts['finished']} finished (skipped), "
        f"{counts['resume']} to resume, {counts['start']} to start",
        file=sys.stderr,
    )
    failed = []
    for run in runs:
        if run.status == "finished":
            print(f"# finished, skipped: {run.run_dir}", file=sys.stderr)
            continue
        command = run.command(module, args.config, nproc)
        if args.print_only:
            print(shlex.join(command), flush=True)
            continue
        print(f"== {run.status} {run.run_dir}", file=sys.stderr, flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(run.run_dir)
    if failed:
        print(
            f"error: {len(failed)} of {len(runs)} runs failed: {', '.join(map(str, failed))}; run the sweep "
            f"again to resume them once fixed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
