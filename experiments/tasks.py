"""The two tasks as the sweep and the report see them: the training command, the config schema,
the check that a config names a registered method, and how to tell a run folder's task."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Type

from adv_training.config import ATConfig
from adv_training.methods import check_method
from engine.config import ConfigError, from_dict
from engine.errors import UserError
from engine.run_folder import RunFolder
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import check_distiller


@dataclass(frozen=True)
class Task:
    name: str
    module: str  # python -m <module> trains one run
    schema: Type
    # the trainer's own check of a config (its CLI's): a ConfigError for a method that is not registered
    # or a setting it refuses; it builds nothing (a feature distiller needs the student and teacher for that)
    check: Callable[[Any], type]


TASKS: Dict[str, Task] = {
    "adv_training": Task("adv_training", "adv_training.train", ATConfig, check_method),
    "knowledge_distillation": Task("knowledge_distillation", "knowledge_distillation.train", KDConfig, check_distiller),
}


def task_of_config_file(config: Path, task: Optional[str]) -> Task:
    """The task named by ``task``, else by a folder of the config file's path (configs/<task>/...)."""
    if task:
        return TASKS[task]
    for part in reversed(Path(config).resolve().parts):
        if part in TASKS:
            return TASKS[part]
    raise UserError(
        f"cannot tell the task of {config} from its folder; pass --task adv_training or --task knowledge_distillation"
    )


def task_of_run(folder: RunFolder, config: Dict[str, Any]) -> Task:
    """The task that wrote a run folder: environment.json says it; a folder written before it did
    is the task whose schema reads its config."""
    named = folder.read_environment().get("task")
    if named in TASKS:
        return TASKS[named]
    fitting = []
    for candidate in TASKS.values():
        try:
            from_dict(candidate.schema, config)
        except ConfigError:
            continue
        fitting.append(candidate)
    if len(fitting) == 1:
        return fitting[0]
    # a config of another version: distillation configs are the ones with a teacher
    return TASKS["knowledge_distillation" if "teacher" in config else "adv_training"]
