"""The contract every training method follows, in both tasks: an adversarial-training method
(`adv_training.methods.Method`) and a distiller (`knowledge_distillation.distiller_base.Distiller`).

A method is an ``nn.Module`` registered by name in its task's `MethodRegistry` (the model zoo has a
registry of its own, `models.registry`, with the same verbs: register, list, resolve). It owns
everything that is special about it:

* its config refusals: ``check(cfg)``, a classmethod run before anything is built (the command
  line's check, the sweep's ``--print``), so a method that cannot run with a setting says so first;
* its extra networks and trainable parts, as submodules (LBGAT's natural classifier, a feature
  distiller's connectors). Their parameters reach the optimiser as groups of their own
  (`parameter_groups`), after the model's;
* its state, through ``state_dict``: the trainers save it in last.pt under ``method`` and load
  it back on resume; `state_from_older_checkpoint` finds it in a last.pt written before that key.

The trainer runs the forwards every method shares, hands the method their logits, and gets back
the loss; it never names a method or one of its parts.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

import torch.nn as nn

from .config import require_choice
from .optim import weight_decay_groups

C = TypeVar("C", bound=type)


class MethodRegistry(Dict[str, type]):
    """A task's methods, ``{name: class}``; ``@registry.register("name")`` adds a class and sets its ``name``."""

    def __init__(self, kind: str, key: str = "method"):
        super().__init__()
        self.kind = kind
        self.key = key  # the config key that names an entry

    def register(self, name: str) -> Callable[[C], C]:
        def add(cls: C) -> C:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self[name] = cls
            return cls

        return add

    def names(self) -> List[str]:
        return sorted(self)

    def resolve(self, name: str) -> type:
        """The class registered as ``name``; a `ConfigError` naming the config key, the names there
        are and the closest one otherwise (so that config schemas need not import registries)."""
        require_choice(self.key, name, self.names())
        return self[name]


class TrainingMethod(nn.Module):
    """The base of the methods of both tasks (see the module docstring)."""

    name = ""  # set by the registry's decorator
    uses_prior = False  # reads the class prior (IKL's global weights), which the trainer keeps
    prior_temperature = 1.0  # the temperature of the softmax that prior averages
    OLDER_CHECKPOINT_KEY: Optional[str] = None  # where last.pt held its state before the key was ``method``

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Raise a `ConfigError` for settings of ``cfg`` this method cannot run with; nothing is built."""

    def epoch_metrics(self) -> Dict[str, float]:
        """Numbers of the epoch for metrics.jsonl (LAS-AT's reward, CTKD's temperature); none by default."""
        return {}

    def has_parameters(self) -> bool:
        """Whether the method trains parameters of its own (then the trainer optimises, wraps and
        broadcasts it beside the model)."""
        return any(True for _ in self.parameters())

    def has_state(self) -> bool:
        """Whether last.pt must hold this method's state (parameters or buffers)."""
        return bool(self.state_dict())

    def parameter_groups(self, weight_decay: float, batchnorm_weight_decay: bool = True) -> List[Dict]:
        """The method's parameters as optimiser groups (`engine.optim.weight_decay_groups`); none without any."""
        return weight_decay_groups(self, weight_decay, batchnorm_weight_decay) if self.has_parameters() else []

    def state_from_older_checkpoint(self, checkpoint: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        """This method's state in a last.pt written before methods were saved under ``method``: the entry
        ``OLDER_CHECKPOINT_KEY`` names (None: that file holds none)."""
        return checkpoint.get(self.OLDER_CHECKPOINT_KEY) if self.OLDER_CHECKPOINT_KEY else None


def check_method(registry: MethodRegistry, cfg: Any) -> type:
    """The class ``cfg.method`` names in ``registry``, after its own `TrainingMethod.check` of ``cfg``;
    a `ConfigError` for a name that is not registered or a setting the method refuses."""
    method = registry.resolve(cfg.method)
    method.check(cfg)
    return method
