"""Pictures of runs: loss, accuracy and schedule curves drawn from metrics.jsonl.

    python -m engine.plot runs/at_digits                      # -> runs/at_digits/curves.png
    python -m engine.plot runs/at_a runs/at_b -o compare.png  # one colour per run

Panels are chosen by key names, so adversarial training and distillation runs
both work without a list of metrics per task:

    losses     keys with a "loss" word: train_loss, train_loss_robust, train_loss_kd, ...
    accuracy   keys ending in "_acc" or holding "top1"/"top5": test_robust_acc, test_top1, ...
    schedule   lr, and eps on a second axis when the run logs it

A panel without data is left out. A NaN or null value leaves a gap in its line; an
epoch that does not log a key at all (the test metrics when ``eval.every`` > 1) is
simply not a point, and the line joins the epochs that were measured.

Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, never through
pyplot, so importing this module changes no global matplotlib state (backend, rcParams).
"""

import argparse
import io
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .cli import error_exit
from .errors import UserError
from .file_io import PathLike, write_atomically
from .run_folder import METRICS, RunFolder

FIGSIZE = (10, 3.2)  # inches; at DPI this is a 1000×320 pixel PNG
DPI = 100
PANELS = ("losses", "accuracy", "schedule")
# The few curves a comparison draws per run, so that its legend stays readable.
MAIN_CURVES = {
    "losses": ("train_loss",),
    "accuracy": ("test_clean_acc", "test_robust_acc", "val_robust_acc", "test_top1"),
    "schedule": ("lr",),
}
# More points than this and markers would hide the lines; fewer, and a point
# between two gaps would be invisible without one.
MARKER_LIMIT = 40

Series = Tuple[List[int], List[float]]


def read_run(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, sorted by epoch; UserError if there are none."""
    run_dir, folder = Path(run_dir), RunFolder(run_dir)
    path = folder.metrics
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; pass a run folder (one that holds {METRICS})")
    if not path.is_file():
        raise UserError(f"{run_dir} has no {METRICS}; is it a run folder, and has its first epoch finished?")
    records = folder.read_metrics()
    if not records:
        raise UserError(f"{path} holds no epochs yet; plot the run once its first epoch has finished")
    return sorted(records, key=lambda record: record["epoch"])


def panel_of(key: str) -> Optional[str]:
    """Which panel a metrics key belongs to, or None for keys that are not plotted."""
    if "loss" in key.split("_"):
        return "losses"
    if key.endswith("_acc") or "top1" in key or "top5" in key:
        return "accuracy"
    if key in ("lr", "eps"):
        return "schedule"
    return None


def _number(value: Any) -> float:
    """A float for plotting; NaN (a gap) for None, NaN, booleans and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def series(records: Sequence[Dict[str, Any]], key: str) -> Series:
    """(epochs, values) of one key over the epochs that logged it."""
    points = [(record["epoch"], _number(record[key])) for record in records if key in record]
    return [epoch for epoch, _ in points], [value for _, value in points]


def _has_data(values: Sequence[float]) -> bool:
    return any(math.isfinite(value) for value in values)


def _keys_by_panel(records: Sequence[Dict[str, Any]]) -> Dict[str, List[str]]:
    """Plottable keys per panel, in the order the run first logged them."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    panels: Dict[str, List[str]] = {panel: [] for panel in PANELS}
    for key in keys:
        panel = panel_of(key)
        if panel and _has_data(series(records, key)[1]):
            panels[panel].append(key)
    return panels


def _line_style(key: str) -> str:
    """Training curves dashed, test curves solid, EMA test curves dotted."""
    if key.startswith("train"):
        return "--"
    if key.startswith("ema"):
        return ":"
    return "-"


def _eps_scale(values: Sequence[float]) -> Tuple[float, str]:
    """Budgets like 8/255 read best in units of 1/255; larger ones (digits' 0.2) as they are."""
    finite = [value for value in values if math.isfinite(value)]
    if finite and max(finite) <= 0.1:
        return 255.0, "eps (×1/255)"
    return 1.0, "eps"


def _plot(ax, xy: Series, label: str, **style) -> Any:
    epochs, values = xy
    marker = "o" if len(epochs) <= MARKER_LIMIT else None
    (line,) = ax.plot(epochs, values, label=label, marker=marker, markersize=3, linewidth=1.4, **style)
    return line


def _new_figure(num_panels: int, title: str):
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, num_panels, squeeze=False)[0]
    figure.suptitle(title, fontsize=11)
    return figure, axes


def _finish_axes(ax, panel: str, handles: List[Any], legend_ax=None) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel({"losses": "loss", "accuracy": "accuracy (%)", "schedule": "learning rate"}[panel])
    ax.set_title(panel, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    # A twin axis is drawn over its host, so a legend on the host would sit under the eps line.
    (legend_ax or ax).legend(handles=handles, fontsize=7, framealpha=0.8, loc="best")


def _draw_schedule(ax, runs: Sequence[Tuple[str, List[Dict[str, Any]]]], keys, colours, prefix: bool):
    """lr on the left axis, eps (if any run logs it) on a twin axis on the right.

    Returns the line handles and the axes the legend belongs on.
    """
    handles = []
    twin, scale = None, 1.0
    all_eps = [value for _, records in runs for value in series(records, "eps")[1]]
    if "eps" in keys and _has_data(all_eps):
        twin = ax.twinx()
        scale, label = _eps_scale(all_eps)
        twin.set_ylabel(label)
        twin.tick_params(labelsize=8)
    for (name, records), colour in zip(runs, colours):
        label = f"{name}: " if prefix else ""
        if "lr" in keys:
            handles.append(_plot(ax, series(records, "lr"), label + "lr", color=colour, linestyle="-"))
        epochs, values = series(records, "eps")
        if twin is not None and _has_data(values):
            # With one run, lr takes the first colour; eps the next one, so they differ.
            eps_colour = colour if prefix else "C1"
            handles.append(
                _plot(twin, (epochs, [v * scale for v in values]), label + "eps", color=eps_colour, linestyle="--")
            )
    return handles, twin


def _render(figure: Figure, output: Path) -> Path:
    """Render to memory first, then write-then-rename: a crash never leaves half a PNG."""
    fmt = output.suffix.lstrip(".").lower() or "png"
    if fmt not in figure.canvas.get_supported_filetypes():
        raise UserError(f"cannot write {output}: use a .png, .pdf or .svg file name")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    data = buffer.getvalue()
    return write_atomically(output, "wb", lambda stream: stream.write(data))


def _run_name(run_dir: PathLike) -> str:
    return Path(run_dir).resolve().name  # "." and trailing slashes still give the folder's name


def plot_run(run_dir: PathLike, output: Optional[PathLike] = None) -> Path:
    """Draw every loss, accuracy and schedule curve of one run; return the written file.

    Writes ``run_dir/curves.png`` unless ``output`` is given. Raises `UserError` when the
    folder has no metrics.jsonl or no epochs in it.
    """
    records = read_run(run_dir)
    # eps alone has no lr axis to sit beside; it is drawn only as lr's companion.
    panels = {panel: keys for panel, keys in _keys_by_panel(records).items() if keys and keys != ["eps"]}
    if not panels:
        raise UserError(f"{RunFolder(run_dir).metrics} holds no loss, accuracy or lr values to plot")
    figure, axes = _new_figure(len(panels), _run_name(run_dir))
    for ax, (panel, keys) in zip(axes, panels.items()):
        legend_ax = None
        if panel == "schedule":
            handles, legend_ax = _draw_schedule(ax, [("", records)], keys, ["C0"], prefix=False)
        else:
            handles = [_plot(ax, series(records, key), key, linestyle=_line_style(key)) for key in keys]
        _finish_axes(ax, panel, handles, legend_ax)
    return _render(figure, Path(output) if output is not None else RunFolder(run_dir).curves)


def plot_runs(run_dirs: Sequence[PathLike], output: PathLike) -> Path:
    """Compare runs in one figure: their main curves, one colour per run; return ``output``.

    Only train_loss, test_clean_acc / test_robust_acc / test_top1, lr and eps are drawn,
    so that the legend ("<run>: <metric>") stays short.
    """
    if not run_dirs:
        raise UserError("no run folders given")
    names = [_run_name(run_dir) for run_dir in run_dirs]
    if len(set(names)) < len(names):  # e.g. sweep/a/seed0 and sweep/b/seed0: name them a/seed0, b/seed0
        names = ["/".join(Path(run_dir).resolve().parts[-2:]) for run_dir in run_dirs]
    runs = [(name, read_run(run_dir)) for name, run_dir in zip(names, run_dirs)]
    panels: Dict[str, List[str]] = {}
    for panel in PANELS:
        wanted = MAIN_CURVES[panel] + (("eps",) if panel == "schedule" else ())
        keys = [key for key in wanted if any(_has_data(series(records, key)[1]) for _, records in runs)]
        if keys and keys != ["eps"]:  # as in plot_run
            panels[panel] = keys
    if not panels:
        raise UserError("none of the runs logs train_loss, test accuracy or lr")
    title = "comparison: " + ", ".join(names) if len(", ".join(names)) <= 90 else f"comparison of {len(runs)} runs"
    figure, axes = _new_figure(len(panels), title)
    colours = [f"C{index % 10}" for index in range(len(runs))]
    # Within a run's colour, the metric is told apart by the line style.
    styles = {"test_clean_acc": "-", "test_top1": "-", "test_robust_acc": "--", "val_robust_acc": ":"}
    for ax, (panel, keys) in zip(axes, panels.items()):
        legend_ax = None
        if panel == "schedule":
            handles, legend_ax = _draw_schedule(ax, runs, keys, colours, prefix=True)
        else:
            handles = [
                _plot(ax, series(records, key), f"{name}: {key}", color=colour, linestyle=styles.get(key, "-"))
                for (name, records), colour in zip(runs, colours)
                for key in keys
                if _has_data(series(records, key)[1])
            ]
        _finish_axes(ax, panel, handles, legend_ax)
    return _render(figure, Path(output))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.plot",
        description="Plot the curves of one run (RUN/curves.png) or compare several runs in one figure.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) holding metrics.jsonl")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="file to write (.png, .pdf, .svg); default RUN/curves.png for one run, required for several",
    )
    args = parser.parse_args(argv)
    try:
        if len(args.runs) == 1:
            written = plot_run(args.runs[0], args.output)
        elif args.output is None:
            raise UserError("several runs go into one comparison figure: name it with -o FILE.png")
        else:
            written = plot_runs(args.runs, args.output)
    except UserError as error:
        return error_exit(error)
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())


GROUP_PANELS = {
    "test_clean_acc": "clean accuracy",
    "test_robust_acc": "robust accuracy (test)",
    "val_robust_acc": "robust accuracy (validation)",
    "test_top1": "top-1",
    "test_many_shot_top1": "many-shot top-1",
    "test_medium_shot_top1": "medium-shot top-1",
    "test_few_shot_top1": "few-shot top-1",
}


def plot_groups(groups: Sequence[Tuple[str, Sequence[List[Dict[str, Any]]]]], output: PathLike) -> Path:
    """One panel per accuracy key, one colour per group of runs (the seeds of one setting): the
    mean over the group's runs at each epoch, and a band from its lowest to its highest run."""
    if not groups:
        raise UserError("no finished runs to plot")
    keys = [
        key for key in GROUP_PANELS if any(_has_data(series(records, key)[1]) for _, runs in groups for records in runs)
    ]
    if not keys:
        raise UserError("none of the runs logs test accuracy")
    figure, axes = _new_figure(len(keys), "mean over seeds, band from the lowest to the highest run")
    for ax, key in zip(axes, keys):
        handles = []
        for index, (label, runs) in enumerate(groups):
            by_epoch: Dict[int, List[float]] = {}
            for records in runs:
                for epoch, value in zip(*series(records, key)):
                    if not math.isnan(value):
                        by_epoch.setdefault(epoch, []).append(value)
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            colour = f"C{index % 10}"
            handles.append(
                _plot(
                    ax,
                    (epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]),
                    f"{label} ({len(runs)})",
                    color=colour,
                )
            )
            ax.fill_between(
                epochs,
                [min(by_epoch[e]) for e in epochs],
                [max(by_epoch[e]) for e in epochs],
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
        _finish_axes(ax, "accuracy", handles)
        ax.set_title(GROUP_PANELS[key], fontsize=10)
    return _render(figure, Path(output))
