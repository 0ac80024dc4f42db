"""Strict, typed configuration: defaults < YAML (< its base) < key=value."""

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Literal, Optional

import pytest
import torch
import yaml

from engine.config import ConfigError, from_dict, knob, load_config, section, to_dict, to_yaml, valid_keys
from engine.schedule import learning_rate


@dataclass
class Inner:
    lr: float = knob(0.1, "learning rate")
    lr_schedule: Literal["cosine", "step"] = knob("cosine", "schedule")
    milestones: List[int] = knob([100, 150], "decay epochs")


@dataclass
class Schema:
    epochs: int = knob(200, "epochs")
    name: str = knob("", "run name")
    limit: Optional[int] = knob(1000, "null = everything")
    flag: bool = knob(False, "a switch")
    optim: Inner = section(Inner, "optimiser")


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_defaults_yaml_base_command_line(tmp_path):
    base = write(tmp_path, "base.yaml", {"epochs": 100, "optim": {"lr": 0.2}})
    child = write(tmp_path, "child.yaml", {"base": base.name, "optim": {"lr_schedule": "step"}, "flag": True})
    cfg = load_config(Schema, child, ["optim.lr=0.05", "limit=null", "name=007"])
    assert cfg.epochs == 100  # from the base file
    assert cfg.optim.lr_schedule == "step" and cfg.flag is True  # from the file itself
    assert cfg.optim.lr == 0.05 and cfg.limit is None  # command line wins
    assert cfg.name == "007"  # a string knob keeps the text as typed
    assert cfg.optim.milestones == [100, 150]  # untouched default
    assert Schema().optim.milestones is not cfg.optim.milestones  # no shared mutable default


def test_misspelt_key_in_yaml_names_the_closest_valid_key(tmp_path):
    path = write(tmp_path, "typo.yaml", {"optim": {"lr_sheduler": "step"}})
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'optim\.lr_sheduler' \(in .*typo\.yaml\); did you mean 'optim\.lr_schedule'\?",
    ):
        load_config(Schema, path)


def test_misspelt_key_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'\?"):
        load_config(Schema, None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*did you mean 'epochs'\?"):
        load_config(Schema, None, ["epoch=3"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(Schema, None, ["optim=3"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(Schema, None, ["epochs"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("epochs=ten", r"'epochs' expects int, got 'ten'"),
        ("epochs=2.5", r"'epochs' expects int, got 2\.5"),
        ("flag=1", r"'flag' expects bool, got 1"),
        ("optim.lr_schedule=linear", r"'optim\.lr_schedule' expects one of 'cosine', 'step', got 'linear'"),
        ("optim.milestones=[1,x]", r"'optim\.milestones\[1\]' expects int, got 'x'"),
        ("optim.lr=1/0", r"'optim\.lr' expects float"),
    ],
)
def test_wrong_types_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Schema, None, [override])


def test_floats_accept_ints_and_fractions():
    cfg = load_config(Schema, None, ["optim.lr=1", "optim.milestones=[3, 4]"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert load_config(Schema, None, ["optim.lr=8/255"]).optim.lr == pytest.approx(8 / 255)


def test_yaml_errors_are_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Schema, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Schema, tmp_path / "missing.yaml")
    loop_a = write(tmp_path, "a.yaml", {"base": "b.yaml"})
    write(tmp_path, "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="in a loop"):
        load_config(Schema, loop_a)


def test_round_trip_through_dict_and_yaml():
    cfg = load_config(Schema, None, ["epochs=3", "optim.lr=0.5"])
    assert from_dict(Schema, to_dict(cfg)) == cfg
    assert from_dict(Schema, yaml.safe_load(to_yaml(cfg))) == cfg
    described = to_yaml(cfg, with_help=True)
    assert "lr: 0.5  # learning rate [float]" in described
    assert "optim:  # optimiser" in described
    assert set(valid_keys(Schema)) >= {"epochs", "optim", "optim.lr", "optim.milestones"}


def test_cosine_schedule_matches_the_reference_formula():
    # reference: lr * 0.5 * (1 + cos(pi * (epoch - w) / (epochs - w + 1))), epochs counted from 1
    for epoch in (1, 50, 200):
        expected = 0.2 * 0.5 * (1 + math.cos(math.pi * epoch / 201))
        assert learning_rate(epoch, base_lr=0.2, epochs=200, schedule="cosine") == pytest.approx(expected)
    assert learning_rate(2, base_lr=0.2, epochs=200, schedule="cosine", warmup_epochs=5) == pytest.approx(0.08)
    assert learning_rate(200, base_lr=0.2, epochs=200, schedule="cosine") > 0


def test_step_schedule_decays_after_each_milestone():
    lrs = [
        learning_rate(e, base_lr=0.05, epochs=240, schedule="step", milestones=[150, 180, 210])
        for e in (150, 151, 181, 211)
    ]
    assert lrs == pytest.approx([0.05, 0.005, 0.0005, 0.00005])


@pytest.mark.parametrize("epochs", [400, 2400, 97, 7, 2])
def test_cosinew_is_torchs_one_cycle_stepped_once_per_epoch(epochs):
    """Wang et al.'s scheduler: OneCycleLR(max_lr, pct_start=0.025, total_steps=epochs), one step per epoch."""
    from engine.schedule import momentum

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, pct_start=0.025, total_steps=epochs)
    for epoch in range(1, epochs + 1):
        group = optimizer.param_groups[0]
        assert learning_rate(epoch, base_lr=0.2, epochs=epochs, schedule="cosinew") == pytest.approx(
            group["lr"], rel=1e-12
        )
        assert momentum(epoch, base_momentum=0.9, epochs=epochs, schedule="cosinew") == pytest.approx(
            group["momentum"], rel=1e-12
        )
        if epoch < epochs:
            optimizer.step()  # no gradient: nothing moves, but the scheduler sees the usual order
            scheduler.step()
    assert momentum(3, base_momentum=0.9, epochs=epochs, schedule="cosine") == 0.9


def test_cosinew_by_hand_for_400_epochs():
    # warm-up over epochs 1..10 from 0.2/25 to 0.2, then down to 0.2/25/1e4 at epoch 400
    assert learning_rate(1, base_lr=0.2, epochs=400, schedule="cosinew") == pytest.approx(0.008)
    assert learning_rate(10, base_lr=0.2, epochs=400, schedule="cosinew") == pytest.approx(0.2)
    assert learning_rate(400, base_lr=0.2, epochs=400, schedule="cosinew") == pytest.approx(0.2 / 25 / 1e4)
    middle = 0.2 / 25 / 1e4 + (0.2 - 0.2 / 25 / 1e4) / 2 * (1 + math.cos(math.pi * 195 / 390))
    assert learning_rate(205, base_lr=0.2, epochs=400, schedule="cosinew") == pytest.approx(middle)


def test_schema_validation_names_the_key():
    from adv_training.config import ATConfig
    from knowledge_distillation.config import KDConfig

    with pytest.raises(ConfigError, match=r"config key 'epochs' must be in \[1, 100000\], got 0"):
        load_config(ATConfig, None, ["epochs=0"])
    with pytest.raises(ConfigError, match="config key 'ikl.gamma' must be >= 0"):
        load_config(KDConfig, None, ["ikl.gamma=-1"])
    from knowledge_distillation.distillers import build_distiller

    with pytest.raises(ConfigError, match="method=kd needs a teacher"):  # the registry lookup checks it
        build_distiller(load_config(KDConfig, None, ["method=kd", "teacher.arch="]))


@dataclass
class _Average:
    tau: float = knob(0.9, "weight")
    start: int = knob(1, "first epoch")


@dataclass
class _Renamed:
    RENAMED_KEYS: ClassVar[Dict[str, str]] = {"swa": "epoch_average", "lr_old": "lr"}
    lr: float = knob(0.1, "rate")
    epoch_average: _Average = section(_Average, "the average")


def test_renamed_keys_and_sections_keep_working_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("lr_old: 0.5\nswa:\n  tau: 0.8\n")
    cfg = load_config(_Renamed, path, ["swa.start=3"])
    assert (cfg.lr, cfg.epoch_average.tau, cfg.epoch_average.start) == (0.5, 0.8, 3)
    err = capsys.readouterr().err
    assert f"config key 'swa' (in {path}) is now called 'epoch_average'" in err
    assert "config key 'lr_old'" in err and "config key 'swa.start' (command line 'swa.start=3')" in err
    path.write_text("swa:\n  tau: 0.8\nepoch_average:\n  tau: 0.7\n")
    with pytest.raises(ConfigError, match="'swa' and its new name 'epoch_average' are both given"):
        load_config(_Renamed, path)
    with pytest.raises(ConfigError, match="unknown config key 'swab.tau'"):
        load_config(_Renamed, None, ["swab.tau=1"])


def test_a_renamed_section_in_a_file_extends_a_base_written_with_the_new_name(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("lr: 0.2\nepoch_average:\n  tau: 0.7\n  start: 2\n")
    (tmp_path / "mine.yaml").write_text("base: base.yaml\nswa:\n  tau: 0.8\n")
    cfg = load_config(_Renamed, tmp_path / "mine.yaml")
    assert (cfg.lr, cfg.epoch_average.tau, cfg.epoch_average.start) == (0.2, 0.8, 2)  # mine wins, the base fills in
    assert "is now called 'epoch_average'" in capsys.readouterr().err


def test_a_saved_config_with_a_renamed_section_is_read_back_and_asked_for():
    from engine.config import from_dict, get_value

    cfg = from_dict(_Renamed, {"lr": 0.3, "swa": {"tau": 0.6, "start": 4}})  # an earlier run's config.yaml
    assert (cfg.lr, cfg.epoch_average.tau, cfg.epoch_average.start) == (0.3, 0.6, 4)
    assert get_value(cfg, "swa.tau") == get_value(cfg, "epoch_average.tau") == 0.6
