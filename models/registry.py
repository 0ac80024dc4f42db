"""Name -> constructor registry behind :func:`models.build_model`.

Architectures register themselves with the :func:`register_model` decorator
when their module is imported.  One name may be registered by two families
(``ResNet18`` is both mdistiller's CIFAR network and torchvision's ImageNet
one); ``dataset=`` then picks the entry.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn

from engine.config import ConfigError

from .float32_ends import keep_ends_in_float32

# Dataset names that each family is meant for.  A family added later (e.g. a
# small CNN for 8x8 digit images) only needs a new entry here.
FAMILY_DATASETS: Dict[str, Tuple[str, ...]] = {
    "cifar-at": ("cifar10", "cifar100"),
    "cifar-kd": ("cifar100", "cifar10"),
    "imagenet": ("imagenet", "imagenet_lt"),
    "digits": ("digits",),
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    input_size: Tuple[int, int, int]
    default_num_classes: int
    checkpoints: str = ""
    datasets: Tuple[str, ...] = field(default=())
    alias_of: Optional[str] = None

    def build(self, num_classes: int, dataset: Optional[str], **kwargs) -> nn.Module:
        # Only builders that declare ``dataset`` get it, so every caller may
        # pass dataset= without every constructor having to swallow it.
        if "dataset" in inspect.signature(self.builder).parameters:
            kwargs["dataset"] = dataset
        return self.builder(num_classes=num_classes, **kwargs)


_REGISTRY: Dict[str, List[ModelEntry]] = {}
_ORDER: List[ModelEntry] = []  # registration order, for listings


def register_model(
    *names: str,
    family: str,
    input_size: Tuple[int, int, int] = (3, 32, 32),
    default_num_classes: int = 10,
    checkpoints: str = "",
):
    """Register ``builder(num_classes, **kw) -> nn.Module`` under ``names``."""
    if family not in FAMILY_DATASETS:
        raise ValueError(f"unknown model family {family!r}; add it to FAMILY_DATASETS")
    if not names:
        raise ValueError("register_model needs at least one name")

    def decorator(builder):
        for name in names:
            same_name = _REGISTRY.setdefault(name, [])
            if any(e.family == family for e in same_name):
                raise ValueError(f"model {name!r} is already registered for family {family!r}")
            entry = ModelEntry(
                name=name,
                builder=builder,
                family=family,
                input_size=input_size,
                default_num_classes=default_num_classes,
                checkpoints=checkpoints,
                datasets=FAMILY_DATASETS[family],
                alias_of=None if name == names[0] else names[0],
            )
            same_name.append(entry)
            _ORDER.append(entry)
        return builder

    return decorator


def normalize_dataset(dataset: Optional[str]) -> Optional[str]:
    """'CIFAR-100' -> 'cifar100', so callers need not match our spelling."""
    if dataset is None:
        return None
    return str(dataset).lower().replace("-", "").replace("_", "")


def available_models(family: Optional[str] = None) -> List[str]:
    """Sorted registered names, optionally only those of one family."""
    return sorted(
        name for name, entries in _REGISTRY.items() if family is None or any(e.family == family for e in entries)
    )


def entries() -> List[ModelEntry]:
    """Every registration, in registration order (a name in two families appears twice)."""
    return list(_ORDER)


def resolve(name: str, dataset: Optional[str] = None) -> ModelEntry:
    """The entry ``build_model(name, dataset=...)`` would use."""
    if name not in _REGISTRY:
        lowered = {n.lower(): n for n in _REGISTRY}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)
        hint = ", ".join(repr(lowered[c]) for c in close) if close else "none"
        raise ValueError(
            f"unknown model {name!r}; close matches: {hint}. "
            f"models.available_models() lists all {len(_REGISTRY)} names."
        )
    candidates = _REGISTRY[name]
    if len(candidates) == 1:
        return candidates[0]
    dataset = normalize_dataset(dataset)
    if dataset is None:
        options = " or ".join(f'dataset="{e.datasets[0]}"' for e in candidates)
        raise ValueError(
            f"model name {name!r} exists in several families "
            f"({', '.join(e.family for e in candidates)}); pass {options}."
        )
    for entry in candidates:
        if dataset in {normalize_dataset(name) for name in entry.datasets}:
            return entry
    known = sorted({d for e in candidates for d in e.datasets})
    raise ValueError(f"model {name!r} has no variant for dataset={dataset!r}; known: {known}")


def build_model(name: str, num_classes: Optional[int] = None, dataset: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered architecture, freshly initialised, in train mode, with its stem
    convolution and classifier head computing in float32 under bf16 autocast
    (`models.float32_ends`; the state dict is the architecture's own).

    ``dataset`` is accepted for every name: it disambiguates names registered
    by two families, picks the normalisation statistics of the DeepMind
    WideResNets, and is ignored elsewhere.
    """
    entry = resolve(name, dataset)
    if num_classes is None:
        num_classes = entry.default_num_classes
    model = entry.build(num_classes, normalize_dataset(dataset), **kwargs)
    keep_ends_in_float32(model)  # a float32 stem and head under bf16 autocast (models/float32_ends.py)
    # Lets checkpoint errors say which registered name the user asked for.
    model.arch_name = name
    return model


def require_model(arch_key: str, arch: str, dataset: str, kwargs: Dict[str, object]) -> None:
    """For a config's ``validate``: ``arch`` is in the zoo, takes ``dataset``'s images, and accepts
    the keyword arguments given; else a `ConfigError` that names the config key ``arch_key``."""
    try:
        entry = resolve(arch, dataset)
    except ValueError as error:
        raise ConfigError(f"config key '{arch_key}' names no usable model: {error}") from None
    if normalize_dataset(dataset) not in {normalize_dataset(name) for name in entry.datasets}:
        raise ConfigError(
            f"config key '{arch_key}': {arch} takes {'x'.join(map(str, entry.input_size))} images "
            f"({', '.join(entry.datasets)}), not {dataset}'s; choose a model of that family "
            f"(models.available_models() lists {len(available_models())})"
        )
    section = arch_key.rsplit(".", 1)[0]
    for name in kwargs:
        if name not in inspect.signature(entry.builder).parameters:
            raise ConfigError(
                f"config key '{section}.{name}' does not apply to {arch}; set it to null "
                f"(only the generic WideResNet takes depth and widen_factor)"
            )
    depth = kwargs.get("depth")
    if depth is not None and (depth - 4) % 6 != 0:
        raise ConfigError(f"config key '{section}.depth' must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth}")
