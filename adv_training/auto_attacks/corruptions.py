"""Corruption robustness, RobustBench's second leaderboard: accuracy on CIFAR-10-C / CIFAR-100-C.

    python -m adv_training.auto_attacks.corruptions --checkpoint runs/NAME --corruptions_dir data/CIFAR-10-C
    python -m adv_training.auto_attacks.corruptions --arch WideResNet34 --checkpoint model.pt --data CIFAR100 \\
        --corruptions_dir data/CIFAR-100-C --json logs/model_corruptions.json

The data are Hendrycks & Dietterich's (ICLR 2019) published files, as RobustBench reads them: in one
folder ``labels.npy`` and one ``<corruption>.npy`` per corruption, each [5 n, 32, 32, 3] uint8 with
the five severities stacked (rows (s - 1) n ... s n - 1 are severity s; n = 10,000 in the published
files), memory-mapped and read one severity at a time. The 15 corruptions are RobustBench's (its
``CORRUPTIONS``; CIFAR-100-C's four extra files are not part of the leaderboard). The model is
evaluated as `eval` evaluates it (`target.evaluation_model`: eval mode, float32, behind its
``--preprocess`` normalisation); the reported number is RobustBench's: the mean accuracy over the
15 x 5 sets. The JSON holds it, the table per corruption and severity, the checkpoint's sha256 and
the versions. ``--checkpoint robustbench:ID`` evaluates a published model of RobustBench's zoo (`target`):
its Linf entry by default (the zoo's corruptions entry of a Linf model is the same file), another with
``--threat_model``; the JSON records the ID and the threat model.
"""

import argparse
import json
import pickle
import sys
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from adv_training.auto_attacks.resumable import predict
from adv_training.auto_attacks.target import add_model_arguments, evaluation_model, resolve_target, robustbench_fields
from engine.cli import command
from engine.environment import configure_precision, environment_info, resolve_device
from engine.errors import UserError
from engine.file_io import atomic_write_text, sha256_file

# RobustBench's CORRUPTIONS (robustbench/data.py), in its order.
CORRUPTIONS = (
    "shot_noise",
    "motion_blur",
    "snow",
    "pixelate",
    "gaussian_noise",
    "defocus_blur",
    "brightness",
    "fog",
    "zoom_blur",
    "frost",
    "glass_blur",
    "impulse_noise",
    "contrast",
    "jpeg_compression",
    "elastic_transform",
)
SEVERITIES = 5
# Where the files are published (RobustBench's ZENODO_CORRUPTIONS_LINKS).
SOURCES = {
    "cifar10": "CIFAR-10-C.tar from https://zenodo.org/record/2535967",
    "cifar100": "CIFAR-100-C.tar from https://zenodo.org/record/3555552",
}
DEFAULT_DIRS = {"cifar10": "data/CIFAR-10-C", "cifar100": "data/CIFAR-100-C"}


def read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped, as data only (never unpickled); a `UserError` naming the
    file for anything else: Python objects, a pickle or an .npz archive under that name, a truncated,
    empty or random file."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path} is not a readable NumPy .npy array ({reason}); replace it with the published file"
        ) from None
    if not isinstance(array, np.ndarray):  # an .npz archive (a zip file) saved under a .npy name
        getattr(array, "close", lambda: None)()
        raise UserError(f"{path} is an .npz archive, not a .npy array; replace it with the published file")
    return array


def open_corruptions(folder: Path, dataset: str) -> tuple:
    """(labels, {corruption: memory-mapped array}, images per severity), every file checked."""
    if dataset not in SOURCES:
        raise UserError(f"corruption robustness is defined for CIFAR-10 and CIFAR-100, not {dataset}")
    missing = [name for name in ("labels", *CORRUPTIONS) if not (folder / f"{name}.npy").is_file()]
    if missing:
        raise UserError(
            f"{folder} lacks {', '.join(f'{name}.npy' for name in missing[:4])}"
            f"{f' and {len(missing) - 4} more' if len(missing) > 4 else ''}: download {SOURCES[dataset]}, "
            f"extract it and pass its folder with --corruptions_dir (it holds labels.npy and one .npy per corruption)"
        )
    labels = read_npy(folder / "labels.npy")
    if labels.dtype.kind not in "iu":
        raise UserError(f"{folder / 'labels.npy'} holds {labels.dtype} values; the published labels are integers")
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % SEVERITIES:
        raise UserError(
            f"{folder / 'labels.npy'} holds {labels.shape}, not one label per image of {SEVERITIES} stacked severities"
        )
    arrays = {}
    for name in CORRUPTIONS:
        array = read_npy(folder / f"{name}.npy")
        if array.shape != (len(labels), 32, 32, 3) or array.dtype != np.uint8:
            raise UserError(
                f"{folder / f'{name}.npy'} holds {array.dtype} {array.shape}; the published files hold uint8 "
                f"[{len(labels)}, 32, 32, 3] (as many images as labels.npy, severities stacked)"
            )
        arrays[name] = array
    return labels, arrays, len(labels) // SEVERITIES


def corruption_accuracy(
    model: torch.nn.Module,
    folder: Path,
    dataset: str,
    *,
    n_ex: Optional[int],
    batch_size: int,
    device: torch.device,
) -> Dict[str, object]:
    """Accuracy (percent) on the first ``n_ex`` images of every corruption and severity, their mean over
    the 15 x 5 sets (RobustBench's number), per corruption and per severity."""
    labels, arrays, per_severity = open_corruptions(folder, dataset)
    count = per_severity if n_ex is None else min(n_ex, per_severity)
    table: Dict[str, List[float]] = {}
    for name, array in arrays.items():
        table[name] = []
        for severity in range(1, SEVERITIES + 1):
            rows = slice((severity - 1) * per_severity, (severity - 1) * per_severity + count)
            x = torch.from_numpy(np.array(array[rows])).permute(0, 3, 1, 2).float().div_(255)
            y = torch.from_numpy(np.asarray(labels[rows]).astype(np.int64))
            table[name].append(100 * (predict(model, x, batch_size, device) == y).float().mean().item())
    every = [accuracy for row in table.values() for accuracy in row]
    return {
        "corruptions_acc": round(sum(every) / len(every), 2),
        "by_corruption": {name: round(sum(row) / SEVERITIES, 2) for name, row in table.items()},
        "by_severity": [round(sum(row[s] for row in table.values()) / len(table), 2) for s in range(SEVERITIES)],
        "table": {name: [round(value, 2) for value in row] for name, row in table.items()},
        "n_ex_per_severity": count,
    }


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adv_training.auto_attacks.corruptions",
        description="Accuracy on CIFAR-10-C / CIFAR-100-C (RobustBench's corruptions leaderboard) of a checkpoint "
        "or a training run folder.",
    )
    add = parser.add_argument
    add_model_arguments(add)
    add(
        "--corruptions_dir",
        default=None,
        help="folder with labels.npy and <corruption>.npy (default data/CIFAR-10-C or data/CIFAR-100-C)",
    )
    add("--n_ex", type=int, default=None, help="the first N images of every severity (default: all 10,000)")
    add("--batch_size", type=int, default=500)
    add("--json", default=None, help="results file (default: corruptions.json in the run folder, else ./)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.n_ex is not None and args.n_ex < 1):
        parser.error("--n_ex and --batch_size must be positive")
    return args


def evaluate(args) -> dict:
    target = resolve_target(args)
    folder = Path(args.corruptions_dir or DEFAULT_DIRS.get(target.dataset, "data"))
    device = resolve_device(args.device)
    model = evaluation_model(target, device)
    numbers = corruption_accuracy(
        model, folder, target.dataset, n_ex=args.n_ex, batch_size=args.batch_size, device=device
    )
    json_path = Path(args.json) if args.json else (target.run_dir or Path(".")) / "corruptions.json"
    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_file": str(target.file),
        "checkpoint_sha256": sha256_file(target.file),
        "which": target.which,
        **robustbench_fields(target),
        "arch": target.arch,
        **target.build_kwargs,
        "data": target.dataset,
        "preprocess": target.preprocess,
        "corruptions_dir": str(folder),
        "corruptions": list(CORRUPTIONS),
        "severities": SEVERITIES,
        **numbers,
        "device": str(device),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "versions": environment_info(),
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", json_path)
    print(f"{target.arch} on {target.dataset}-C ({numbers['n_ex_per_severity']} images per severity), {folder}:")
    for name, value in numbers["by_corruption"].items():
        print(f"  {name:18s} {value:6.2f}%  (severities 1-5: {', '.join(f'{v:.2f}' for v in numbers['table'][name])})")
    print(f"corruptions accuracy (mean of 15 x 5): {numbers['corruptions_acc']:.2f}%; results: {json_path}")
    return report


@command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_precision("fp32")
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
