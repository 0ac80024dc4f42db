"""What an evaluation evaluates, and the model it attacks: a weights file or a training run folder.

`Target` names the weights file, the architecture it belongs to, the dataset and the input
normalisation in front of the network (``--preprocess``). A plain file takes them from the flags
(the authors' defaults otherwise, `file_target`); a run folder of ``adv_training.train`` from its
config.yaml, with the weights ``--which`` picks, else those that stand for the run
(`RunFolder.weights`: the epoch average, else the EMA, else best.pt; `run_target`).
`evaluation_model` builds the network, loads the weights strictly and puts it behind its
normalisation, in eval mode and float32, its weights frozen.

The AutoAttack command (`eval`), the corruption evaluation (`corruptions`) and the export
(``adv_training.export``) share this module, and the first two its flags (`add_model_arguments`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from adv_training.config import ATConfig
from engine.data import num_classes as data_num_classes
from engine.errors import UserError
from engine.file_io import CheckpointNotFoundError
from engine.run_folder import RunFolder
from models import build_model, load_weights, preprocessing  # preprocessing: the authors' --preprocess

DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "digits": "digits"}  # digits: the quickstart
DEFAULT_ARCH = "WideResNet34"  # the authors' default


@dataclass
class Target:
    """What to evaluate: a weights file and the architecture it belongs to."""

    file: Path
    arch: str
    dataset: str
    build_kwargs: dict
    run_dir: Optional[Path] = None
    which: Optional[str] = None
    preprocess: str = "01"  # the normalisation in front of the network (--preprocess)


def file_target(
    path: Path,
    *,
    arch: Optional[str] = None,
    data: Optional[str] = None,
    depth: Optional[int] = None,
    widen_factor: Optional[int] = None,
    preprocess: Optional[str] = None,
) -> Target:
    """A weights file of the architecture the flags name (the authors' defaults otherwise)."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"no checkpoint file at {path}")
    kwargs = {k: v for k, v in (("depth", depth), ("widen_factor", widen_factor)) if v is not None}
    return Target(path, arch or DEFAULT_ARCH, DATASETS[data or "CIFAR10"], kwargs, preprocess=preprocess or "01")


def run_target(
    run_dir: Path,
    which: Optional[str] = None,
    *,
    arch: Optional[str] = None,
    data: Optional[str] = None,
    depth: Optional[int] = None,
    widen_factor: Optional[int] = None,
    preprocess: Optional[str] = None,
) -> Target:
    """The weights of a training run folder that ``which`` names (else those that stand for the
    run, `RunFolder.weights`), with the architecture, dataset and input normalisation
    (``model.preprocess``) of its config; flags that contradict the config are refused."""
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise UserError(
            f"{run_dir} is a folder without config.yaml: pass a checkpoint file, "
            f"or a run folder written by adv_training.train"
        )
    config = folder.read_config()
    defaults = ATConfig()
    model, dataset_config = config.get("model") or {}, config.get("data") or {}
    trained_arch = model.get("arch", defaults.model.arch)
    dataset = dataset_config.get("dataset", defaults.data.dataset)
    kwargs = {k: model[k] for k in ("depth", "widen_factor") if model.get(k) is not None}
    trained_preprocess = model.get("preprocess", defaults.model.preprocess)
    asked = {
        "--arch": (arch, trained_arch),
        "--data": (data and DATASETS[data], dataset),
        "--depth": (depth, kwargs.get("depth")),
        "--widen_factor": (widen_factor, kwargs.get("widen_factor")),
        "--preprocess": (preprocess, trained_preprocess),
    }
    for flag, (given, trained) in asked.items():
        if given is not None and given != trained:
            raise UserError(
                f"{flag} {given} contradicts the run folder {run_dir}, trained with {trained}; "
                f"drop {flag} (a run folder's config says what it is)"
            )
    file, which = folder.weights(which)
    return Target(file, trained_arch, dataset, kwargs, run_dir=run_dir, which=which, preprocess=trained_preprocess)


def resolve_target(args) -> Target:
    """The weights file and architecture named by the command line (`add_model_arguments`' flags)."""
    path = Path(args.checkpoint)
    flags = dict(
        arch=args.arch, data=args.data, depth=args.depth, widen_factor=args.widen_factor, preprocess=args.preprocess
    )
    if path.is_dir():
        return run_target(path, args.which, **flags)
    if args.which:
        raise UserError("--which picks the weights inside a training run folder, but --checkpoint is a file")
    return file_target(path, **flags)


def build_network(target: Target) -> nn.Module:
    """The network of ``target`` with its weights, loaded strictly (the zoo's `load_weights`)."""
    num_classes = data_num_classes(target.dataset)
    try:
        net = build_model(target.arch, num_classes, dataset=target.dataset, **target.build_kwargs)
    except (ValueError, TypeError) as error:
        given = f" with {target.build_kwargs}" if target.build_kwargs else ""
        raise UserError(f"cannot build --arch {target.arch}{given}: {error}") from None
    return load_weights(net, target.file)


def evaluation_model(target: Target, device: torch.device) -> nn.Module:
    """The network of ``target`` behind its input normalisation, in eval mode and float32, its weights frozen."""
    net = build_network(target)
    model = nn.Sequential(preprocessing(target.preprocess, target.dataset), net).to(device).float().eval()
    # Attacks need gradients with respect to the images only; frozen weights skip the rest.
    return model.requires_grad_(False)


def add_model_arguments(add) -> None:
    """The flags that name the model and its weights (`eval`'s and `corruptions`'), read by `resolve_target`."""
    add(
        "--arch",
        default=None,
        help=f"model zoo name (models.available_models()), e.g. WideResNet34, WideResNet28, "
        f"PreActResNet18, wrn-28-10-swish; default {DEFAULT_ARCH}, or the run folder's",
    )
    add("--checkpoint", default="./model_test.pt", help="weights file, or a run folder of adv_training.train")
    add("--data", choices=list(DATASETS), default=None, help="test set; default CIFAR10, or the run folder's")
    add(
        "--preprocess",
        choices=["meanstd", "01", "+-1"],
        default=None,
        help="normalisation in front of the model: 01 none (zoo models take [0, 1] images), "
        "meanstd CIFAR mean/std, +-1 maps to [-1, 1]; default 01, or the run folder's model.preprocess",
    )
    add(
        "--which",
        choices=["ema", "swa", "best", "last"],
        default=None,
        help="run folders only: which weights (default: the epoch average ours-model-epoch-SWA*.pt, "
        "as the reference reports, else ema.pt, else best.pt)",
    )
    add("--depth", type=int, default=None, help="depth of the generic WideResNet arch")
    add("--widen_factor", type=int, default=None, help="width of the generic WideResNet arch")
    add("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
