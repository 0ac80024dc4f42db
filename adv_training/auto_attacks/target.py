"""What an evaluation evaluates, and the model it attacks: a weights file, a training run folder,
or a published model of RobustBench's model zoo named by its ID.

`Target` names the weights file, the architecture it belongs to, the dataset and the input
normalisation in front of the network (``--preprocess``). A plain file takes them from the flags
(the authors' defaults otherwise, `file_target`); a run folder of ``adv_training.train`` from its
config.yaml, with the weights ``--which`` picks, else those that stand for the run
(`RunFolder.weights`: the epoch average, else the EMA, else best.pt; `run_target`).
``--checkpoint robustbench:ID`` (`robustbench_target`) is the zoo's model of that ID for ``--data``
and the threat model (``--threat_model``, else eval's ``--norm``, else Linf), built and loaded by the
optional ``robustbench`` package's own ``load_model`` (``pip install .[robustbench]``) from its cache
``<--robustbench_dir>/<dataset>/<threat model>/<ID>.pt``, which it downloads when the file is
missing; the zoo's model normalises its inputs itself, so ``--arch``, ``--preprocess``,
``--depth``, ``--widen_factor`` and ``--which`` are refused with an ID.
`evaluation_model` builds the network, loads the weights strictly and puts it behind its
normalisation, in eval mode and float32, its weights frozen.

The AutoAttack command (`eval`), the corruption evaluation (`corruptions`) and the export
(``adv_training.export``) share this module, and the first two its flags (`add_model_arguments`).
"""

import difflib
import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
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
ROBUSTBENCH = "robustbench:"  # --checkpoint robustbench:ID names a model of RobustBench's zoo
ROBUSTBENCH_DIR = Path("pretrained_models") / "robustbench"  # not RobustBench's ./models: that is our package
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")  # of DATASETS' values, those RobustBench's zoo has models for
THREAT_MODELS = ("Linf", "L2", "corruptions")  # RobustBench's CIFAR threat models (its ThreatModel)
ROBUSTBENCH_INSTALL = "pip install .[robustbench] in this repository (robustbench==1.1.1 from PyPI)"


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
    robustbench_id: Optional[str] = None  # a model of RobustBench's zoo; ``file`` is then its cache file
    threat_model: Optional[str] = None  # of the zoo's entry: Linf, L2 or corruptions


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


# --- RobustBench's model zoo (the optional extra: pip install .[robustbench]) ------------------------


def robustbench_utils() -> ModuleType:
    """``robustbench.utils``, whose ``load_model`` builds and loads the zoo's models; a `UserError` saying
    how to install the extra when the package or one of its dependencies is missing.

    robustbench 1.1.1's ``__init__`` also imports its data and benchmark code, which needs setuptools'
    ``pkg_resources`` (gone from setuptools 81) and the ``autoattack`` package of GitHub (not on PyPI;
    PyPI's is pyautoattack). The zoo and ``load_model`` need neither: where that import fails, they
    are imported under the bare package, whose ``__init__`` is not run."""
    try:
        spec = importlib.util.find_spec("robustbench")
    except (ImportError, ValueError):  # a None entry in sys.modules, or a module without a spec
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise UserError(f"--checkpoint {ROBUSTBENCH}ID needs the optional robustbench package: {ROBUSTBENCH_INSTALL}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its architectures' import-time deprecation warnings
        try:
            return importlib.import_module("robustbench.utils")
        except ModuleNotFoundError:
            pass
        sys.modules["robustbench"] = importlib.util.module_from_spec(spec)
        try:
            return importlib.import_module("robustbench.utils")
        except ModuleNotFoundError as error:
            sys.modules.pop("robustbench", None)
            raise UserError(
                f"robustbench is installed without its dependency {error.name}: {ROBUSTBENCH_INSTALL}"
            ) from None


def robustbench_version() -> Optional[str]:
    try:
        return metadata.version("robustbench")
    except metadata.PackageNotFoundError:
        return None


def _zoo_entries(model_id: str) -> dict:
    """{(dataset, threat model): the zoo's entry} of ``model_id`` (``model_dicts``: every dataset, threat model)."""
    robustbench_utils()
    model_dicts = importlib.import_module("robustbench.model_zoo.models").model_dicts
    return {
        (dataset.value, threat.value): models[model_id]
        for dataset, threats in model_dicts.items()
        for threat, models in threats.items()
        if model_id in models
    }


def _all_zoo_ids() -> list:
    model_dicts = importlib.import_module("robustbench.model_zoo.models").model_dicts
    return sorted({name for threats in model_dicts.values() for models in threats.values() for name in models})


def _download_link(gdrive_id: str) -> str:
    return f"https://drive.google.com/uc?id={gdrive_id}"


def robustbench_target(
    model_id: str,
    *,
    data: Optional[str] = None,
    threat_model: Optional[str] = None,
    model_dir: Optional[Path] = None,
    arch: Optional[str] = None,
    depth: Optional[int] = None,
    widen_factor: Optional[int] = None,
    preprocess: Optional[str] = None,
    which: Optional[str] = None,
) -> Target:
    """RobustBench's model ``model_id`` for ``data`` (default CIFAR10) and ``threat_model`` (default Linf),
    its weights at ``<model_dir>/<dataset>/<threat model>/<ID>.pt`` (RobustBench's cache layout; downloaded
    there when missing, by `robustbench_network`). Flags that would build or normalise the model otherwise
    are refused, and so are IDs the zoo has not for this dataset and threat model."""
    given = {"--arch": arch, "--preprocess": preprocess, "--depth": depth, "--widen_factor": widen_factor}
    for flag, value in given.items():
        if value is not None:
            raise UserError(
                f"{flag} {value} contradicts --checkpoint {ROBUSTBENCH}{model_id}: RobustBench's zoo builds that "
                f"model with its own architecture and input normalisation (inside the model); drop {flag}"
            )
    if which is not None:
        raise UserError(f"--which picks the weights inside a training run folder, not of {ROBUSTBENCH}{model_id}")
    if not model_id:
        raise UserError(
            f"--checkpoint {ROBUSTBENCH} names no model: write {ROBUSTBENCH}ID with the ID of a model on "
            f"RobustBench's leaderboard, e.g. {ROBUSTBENCH}Cui2023Decoupled_WRN-34-10"
        )
    dataset = DATASETS[data or "CIFAR10"]
    if dataset not in ROBUSTBENCH_DATASETS:
        raise UserError(f"RobustBench's zoo has no {dataset} models: pass --data CIFAR10 or --data CIFAR100")
    threat = threat_model or "Linf"
    entries = _zoo_entries(model_id)
    if not entries:
        ids = {name.lower(): name for name in _all_zoo_ids()}
        near = [ids[name] for name in difflib.get_close_matches(model_id.lower(), list(ids), n=3, cutoff=0.6)]
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise UserError(
            f"unknown RobustBench model ID {model_id!r}: the model zoo of robustbench {robustbench_version()} "
            f"(robustbench.model_zoo.models.model_dicts) has no model of that name for any dataset or threat "
            f"model{hint}; the IDs are the model names of RobustBench's leaderboards"
        )
    entry = entries.get((dataset, threat))
    if entry is None:
        has = " and ".join(f"{d} {t}" for d, t in entries)
        usable = [(d, t) for d, t in entries if d in ROBUSTBENCH_DATASETS]
        flags = {value: name for name, value in DATASETS.items()}
        if usable:
            options = ", or ".join(f"--data {flags[d]} --threat_model {t}" for d, t in usable)
            advice = f"pass {options} (eval.py's --norm gives the threat model when --threat_model is not given)"
        else:
            advice = "these evaluations read CIFAR-10 and CIFAR-100 only"
        raise UserError(f"{model_id} is in RobustBench's zoo for {has}, not for {dataset} {threat}: {advice}")
    gdrive_id = entry["gdrive_id"]
    if not gdrive_id:
        raise UserError(
            f"{model_id} ({dataset} {threat}) has no checkpoint file in RobustBench's zoo (its weights come from "
            f"timm's model hub); evaluate it with RobustBench's own benchmark code"
        )
    if isinstance(gdrive_id, (list, tuple)):
        raise UserError(
            f"{model_id} ({dataset} {threat}) is an ensemble of {len(gdrive_id)} checkpoint files in RobustBench's "
            f"zoo; these evaluations load one model file: evaluate it with RobustBench's own benchmark code"
        )
    file = Path(model_dir or ROBUSTBENCH_DIR) / dataset / threat / f"{model_id}.pt"
    return Target(
        file, f"{ROBUSTBENCH}{model_id}", dataset, {}, preprocess="01", robustbench_id=model_id, threat_model=threat
    )


def robustbench_network(target: Target) -> nn.Module:
    """The zoo's model of ``target``, built and loaded by RobustBench's own ``load_model`` from ``target.file``,
    which it downloads first when missing; a failed download or a file that does not load ends in one
    `UserError` naming the file and where to get it."""
    utils = robustbench_utils()
    file = target.file
    existed = file.is_file()
    try:
        net = utils.load_model(
            model_name=target.robustbench_id,
            model_dir=str(file.parents[2]),
            dataset=target.dataset,
            threat_model=target.threat_model,
        )
    except Exception as error:  # whatever the download or the load raised: requests, gdown, torch.load, strict loading
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__
        link = _download_link(_zoo_entries(target.robustbench_id)[(target.dataset, target.threat_model)]["gdrive_id"])
        if not existed and not file.is_file():
            raise UserError(
                f"could not download the weights of {target.robustbench_id} ({reason}); download {link} where "
                f"there is network and place the file at {file} (RobustBench's cache, --robustbench_dir), then rerun"
            ) from None
        if not existed:
            raise UserError(
                f"the downloaded {file} does not load as RobustBench's {target.robustbench_id} ({reason}); "
                f"delete it, download {link} yourself and place it there"
            ) from None
        raise UserError(
            f"{file} does not load as RobustBench's {target.robustbench_id} ({reason}); delete it to download "
            f"it again, or place the file of {link} there"
        ) from None
    return net


def robustbench_fields(target: Target) -> dict:
    """What a results JSON records of a RobustBench target (nothing for other targets)."""
    if target.robustbench_id is None:
        return {}
    return {
        "robustbench_id": target.robustbench_id,
        "threat_model": target.threat_model,
        "robustbench_dir": str(target.file.parents[2]),
        "robustbench_version": robustbench_version(),
    }


def resolve_target(args) -> Target:
    """The weights file and architecture named by the command line (`add_model_arguments`' flags)."""
    flags = dict(
        arch=args.arch, data=args.data, depth=args.depth, widen_factor=args.widen_factor, preprocess=args.preprocess
    )
    threat_model = getattr(args, "threat_model", None)
    robustbench_dir = getattr(args, "robustbench_dir", None)
    if str(args.checkpoint).startswith(ROBUSTBENCH):
        norm = getattr(args, "norm", None)
        if threat_model in ("Linf", "L2") and norm is not None and norm != threat_model:
            raise UserError(
                f"--threat_model {threat_model} picks the zoo's {threat_model} model, but the attack is --norm {norm}: "
                f"pass --norm {threat_model} (or drop --threat_model)"
            )
        return robustbench_target(
            str(args.checkpoint)[len(ROBUSTBENCH) :],
            threat_model=threat_model or getattr(args, "norm", None),
            model_dir=robustbench_dir,
            which=args.which,
            **flags,
        )
    for flag, value in (("--threat_model", threat_model), ("--robustbench_dir", robustbench_dir)):
        if value is not None:
            raise UserError(
                f"{flag} belongs to a model of RobustBench's zoo (--checkpoint {ROBUSTBENCH}ID), "
                f"but --checkpoint is {args.checkpoint}; drop {flag}"
            )
    path = Path(args.checkpoint)
    if path.is_dir():
        return run_target(path, args.which, **flags)
    if args.which:
        raise UserError("--which picks the weights inside a training run folder, but --checkpoint is a file")
    return file_target(path, **flags)


def build_network(target: Target) -> nn.Module:
    """The network of ``target`` with its weights, loaded strictly (the zoo's `load_weights`; RobustBench's
    ``load_model`` for a RobustBench ID)."""
    if target.robustbench_id is not None:
        return robustbench_network(target)
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
    add(
        "--checkpoint",
        default="./model_test.pt",
        help=f"weights file, a run folder of adv_training.train, or {ROBUSTBENCH}ID: the model of RobustBench's "
        f"zoo with that ID (e.g. {ROBUSTBENCH}Cui2023Decoupled_WRN-34-10; needs {ROBUSTBENCH_INSTALL})",
    )
    add(
        "--threat_model",
        choices=THREAT_MODELS,
        default=None,
        help=f"{ROBUSTBENCH}ID only: the threat model of the zoo's entry (default: eval's --norm; Linf for the "
        f"corruption evaluation, where a Linf model's corruptions entry is the same file; corruptions for a model "
        f"of that leaderboard alone)",
    )
    add(
        "--robustbench_dir",
        "--robustbench-dir",
        type=Path,
        default=None,
        help=f"{ROBUSTBENCH}ID only: RobustBench's model cache, <dir>/<dataset>/<threat model>/<ID>.pt, "
        f"downloaded there when missing (default {ROBUSTBENCH_DIR})",
    )
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
