"""experiments/tasks.py: the two tasks as the sweep and the report see them (which task a config file or a
run folder is, and the check of a config's method before any run starts), and a sweep of every feature
distiller, which is checked without a student or a teacher."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from adv_training.config import ATConfig
from adv_training.methods import IKL as IKLMethod
from engine.config import ConfigError, load_config
from engine.errors import UserError
from engine.run_folder import RunFolder
from experiments import sweep
from experiments.tasks import TASKS, task_of_config_file, task_of_run
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import DISTILLERS, IKL, Vanilla
from knowledge_distillation.feature_distillers import CRD, FitNet

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
KD_CIFAR100 = CONFIGS / "knowledge_distillation" / "cifar100"
FEATURE_METHODS = sorted(name for name in DISTILLERS.names() if DISTILLERS.resolve(name).needs_features)


def test_the_feature_methods_are_mdistillers_eleven_and_each_has_its_config_folder():
    assert FEATURE_METHODS == sorted(
        ["at", "crd", "fitnet", "kdsvd", "nst", "ofd", "pkt", "reviewkd", "rkd", "sp", "vid"]
    )
    folders = {path.name for path in KD_CIFAR100.iterdir() if path.is_dir()}
    assert set(FEATURE_METHODS) <= folders  # beside them the logit recipes' folders (dist, mlkd, ..., kd_ls, ...)


def test_each_task_names_its_trainer_and_schema():
    assert {name: (task.name, task.module, task.schema) for name, task in TASKS.items()} == {
        "adv_training": ("adv_training", "adv_training.train", ATConfig),
        "knowledge_distillation": ("knowledge_distillation", "knowledge_distillation.train", KDConfig),
    }


@pytest.mark.parametrize(
    "config, expected",
    [
        (CONFIGS / "adv_training" / "digits_ikl.yaml", "adv_training"),
        (CONFIGS / "knowledge_distillation" / "digits_ikl.yaml", "knowledge_distillation"),
        (KD_CIFAR100 / "fitnet" / "res32x4_res8x4.yaml", "knowledge_distillation"),  # two folders below the task's
    ],
)
def test_the_task_of_a_config_file_is_the_folder_of_its_path(config, expected):
    assert task_of_config_file(config, None) is TASKS[expected]


def test_the_task_named_on_the_command_line_wins_and_a_config_elsewhere_must_name_one(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("method: ikl\n")
    assert task_of_config_file(config, "adv_training") is TASKS["adv_training"]
    assert task_of_config_file(KD_CIFAR100 / "res32x4_res8x4.yaml", "adv_training") is TASKS["adv_training"]
    with pytest.raises(UserError, match="cannot tell the task of .*mine.yaml.*--task adv_training or --task"):
        task_of_config_file(config, None)


def test_the_task_of_a_run_folder_is_its_environment_json_else_the_schema_that_reads_its_config(tmp_path):
    folder = RunFolder(tmp_path)
    at_only = {"attack": {"epsilon": 0.1}}  # a section only adversarial training has
    kd_only = {"teacher": {"arch": "resnet14"}}  # and one only distillation has
    assert task_of_run(folder, at_only) is TASKS["adv_training"]
    assert task_of_run(folder, kd_only) is TASKS["knowledge_distillation"]
    # a config of another version (a key neither schema knows): the one with a teacher is distillation's
    assert task_of_run(folder, {"retired_knob": 1, "teacher": {}}) is TASKS["knowledge_distillation"]
    assert task_of_run(folder, {"retired_knob": 1}) is TASKS["adv_training"]
    # what environment.json says comes first, whatever the config holds
    folder.environment.write_text(json.dumps({"task": "knowledge_distillation"}))
    assert task_of_run(folder, at_only) is TASKS["knowledge_distillation"]
    folder.environment.write_text(json.dumps({"task": "no_such_task"}))  # not a task: the config decides
    assert task_of_run(folder, at_only) is TASKS["adv_training"]


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_the_distillation_check_takes_a_feature_distillers_config_alone(method):
    """The sweep has the config only, no student or teacher to build a feature distiller's parts from."""
    cfg = load_config(KDConfig, KD_CIFAR100 / method / "res32x4_res8x4.yaml")
    assert TASKS["knowledge_distillation"].check(cfg) is DISTILLERS.resolve(method)


def test_the_checks_return_the_registered_class_and_refuse_what_cannot_train():
    kd = TASKS["knowledge_distillation"].check
    assert (
        kd(KDConfig(method="ikl")) is IKL
        and kd(KDConfig(method="fitnet")) is FitNet
        and kd(KDConfig(method="crd")) is CRD
    )
    no_teacher = KDConfig(method="vanilla")
    no_teacher.teacher.arch = ""
    assert kd(no_teacher) is Vanilla  # the one distiller without a teacher
    no_teacher.method = "fitnet"
    with pytest.raises(ConfigError, match="method=fitnet needs a teacher"):
        kd(no_teacher)
    with pytest.raises(ConfigError, match="fitnett"):
        kd(KDConfig(method="fitnett"))
    assert TASKS["adv_training"].check(ATConfig(method="ikl")) is IKLMethod
    with pytest.raises(ConfigError, match="ikll"):
        TASKS["adv_training"].check(ATConfig(method="ikll"))


def test_a_feature_distiller_sweep_prints_one_command_per_seed(tmp_path, capsys):
    config = KD_CIFAR100 / "fitnet" / "res32x4_res8x4.yaml"
    assert sweep.main(["--config", str(config), "--seeds", "0", "1", "--print", f"out_dir={tmp_path}"]) == 0
    out, err = capsys.readouterr()
    folder = tmp_path / "cifar100_fitnet_resnet32x4_resnet8x4"  # <dataset>_<method>_<teacher>_<student>
    trainer = [sys.executable, "-m", "knowledge_distillation.train", "--config", str(config)]
    assert out.splitlines() == [
        shlex.join([*trainer, f"seed={seed}", f"out_dir={folder}", f"name=seed={seed}"]) for seed in (0, 1)
    ]
    assert f"sweep of 2 runs under {folder}: 0 finished (skipped), 0 to resume, 2 to start" in err
    assert "Traceback" not in err and not tmp_path.joinpath(folder.name).exists()  # printed, not run


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_feature_distiller_plans_a_grid_without_a_student(method, tmp_path):
    """A grid (two values of a feature knob x two seeds) of each feature distiller's config."""
    config = KD_CIFAR100 / method / "res32x4_res8x4.yaml"
    knob = f"{method}.ce_weight=0.5,1"
    runs = sweep.plan(config, TASKS["knowledge_distillation"], [0, 1], [knob, f"out_dir={tmp_path}"])
    folder = tmp_path / f"cifar100_{method}_resnet32x4_resnet8x4"
    assert [run.run_dir for run in runs] == [
        folder / f"{method}.ce_weight={value},seed={seed}" for value in ("0.5", "1") for seed in (0, 1)
    ]
    assert {run.status for run in runs} == {"start"}
    assert runs[3].overrides == [
        f"{method}.ce_weight=1",
        "paper_row=",  # a grid no longer reproduces the row
        "seed=1",
        f"out_dir={folder}",
        f"name={method}.ce_weight=1,seed=1",
    ]
    resolved = load_config(KDConfig, config, runs[3].overrides)
    assert resolved.method == method and getattr(resolved, method).ce_weight == 1.0 and resolved.seed == 1


def test_a_sweep_of_an_unregistered_or_teacherless_distiller_is_refused_before_any_run(tmp_path, capsys):
    config = KD_CIFAR100 / "fitnet" / "res32x4_res8x4.yaml"
    assert (
        sweep.main(["--config", str(config), "--seeds", "0", "--print", f"out_dir={tmp_path}", "method=fitnett"]) == 2
    )
    assert sweep.main(["--config", str(config), "--seeds", "0", "--print", f"out_dir={tmp_path}", "teacher.arch="]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2 and all(line.startswith("error: run seed=0:") for line in lines), err
    assert "fitnett" in lines[0] and "method=fitnet needs a teacher" in lines[1]
