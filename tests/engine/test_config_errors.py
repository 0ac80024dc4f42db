"""Bad configs of both tasks end in one line naming the key, the value and what is allowed
(exit status 2), before any data, model or folder is touched; valid spellings pass."""

from pathlib import Path

import pytest

from adv_training.config import ATConfig
from adv_training.train import main as at_main
from engine.config import ConfigError, load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.train import main as kd_main


def shown(value: str) -> str:
    """How a value appears in the message (YAML's .inf and .nan are printed as inf and nan)."""
    return value.lstrip(".") if value in (".inf", ".nan") else value


# (key=value override, text the error must contain besides the key)
AT_BAD = [
    # batchnorm_groups that torch.chunk cannot give every group a row of the batch of 128 (as DataParallel)
    ("batchnorm_groups=1024", "splits each process's 128 rows into 128 pieces, not 1024"),
    ("batchnorm_groups=129", "into 128 pieces, not 129"),
    ("batchnorm_groups=100", "into 64 pieces, not 100"),
    *[(f"epochs={v}", v) for v in ("0", "-1", "100001")],
    ("epochs=1.5", "expects int"),
    ("epochs=ten", "expects int"),
    ("seed=-1", "-1"),
    (f"seed={2**32}", str(2**32)),
    ("save_every=-1", "-1"),
    *[(f"data.batch_size={v}", v) for v in ("0", "-5", str(2**21), "99999999999999999999")],
    ("data.batch_size=1.5", "expects int"),
    ("data.test_batch_size=0", "0"),
    ("data.test_batch_size=-1", "-1"),
    ("data.num_workers=-1", "-1"),
    ("data.num_workers=1000", "1000"),
    ("data.aug_weight=-0.1", "-0.1"),
    ("data.aug_weight=.inf", "inf"),
    ("data.aug_weight=.nan", "nan"),
    ("data.dataset=imagenet", "imagenet"),
    ("data.dataset=cifar1000", "cifar1000"),
    ("data.augment=autoaugment", "autoaugment"),
    ("model.arch=WideResNet35", "WideResNet35"),
    ("model.arch=digits_cnn", "digits_cnn"),
    ("model.arch=ResNet34", "ResNet34"),
    ("model.depth=16", "does not apply"),
    ("model.widen_factor=0", "0"),
    ("model.depth=-4", "-4"),
    *[(f"ikl.{k}={v}", shown(v)) for k in ("alpha", "beta", "gamma") for v in ("-1", ".inf")],
    *[(f"ikl.{k}={v}", shown(v)) for k in ("temperature", "prior_temperature") for v in ("0", "-2", ".nan")],
    ("trades.beta=-6", "-6"),
    ("mart.beta=-1", "-1"),
    ("attack.norm=l1", "l1"),
    ("attack.epsilon=0", "0"),
    ("attack.epsilon=-8/255", "-0.03"),
    ("attack.epsilon=8", "8"),
    ("attack.epsilon=.inf", "inf"),
    ("attack.epsilon=2", "2"),
    ("attack.steps=-1", "-1"),
    ("attack.steps=1.5", "expects int"),
    ("attack.step_size=-1", "-1"),
    ("attack.alpha=-1", "-1"),
    ("attack.beta=-1", "-1"),
    ("attack.budget=medium", "medium"),
    ("attack.random_start=gaussian", "gaussian"),
    ("attack.eps_ramp=maybe", "maybe"),
    ("awp.gamma=-0.005", "-0.005"),
    ("awp.warmup=-1", "-1"),
    ("awp.proxy_lr=0", "0"),
    ("awp.enabled=2", "expects bool"),
    ("ema.tau=1", "1"),
    ("ema.tau=1.5", "1.5"),
    ("ema.tau=-0.1", "-0.1"),
    ("ema.start_epoch=-1", "-1"),
    ("epoch_average.tau=1", "1"),
    ("epoch_average.start=0", "0"),
    ("epoch_average.end=0", "0"),
    ("epoch_average.end=300", "300"),
    ("optim.lr=0", "0"),
    ("optim.lr=-0.1", "-0.1"),
    ("optim.lr=.inf", "inf"),
    ("optim.lr=.nan", "nan"),
    ("optim.lr=fast", "expects float"),
    ("optim.momentum=2", "2"),
    ("optim.momentum=-1", "-1"),
    ("optim.momentum=1", "1"),
    ("optim.weight_decay=-1", "-1"),
    ("optim.decay=0", "0"),
    ("optim.decay=-0.1", "-0.1"),
    ("optim.decay=1.5", "1.5"),
    ("optim.milestones=[100,50]", "[100, 50]"),
    ("optim.milestones=[-1]", "-1"),
    ("optim.milestones=[0]", "0"),
    ("optim.milestones=100", "expects list"),
    ("optim.warmup_epochs=-1", "-1"),
    ("optim.warmup_epochs=200", "200"),
    ("optim.schedule=linear", "linear"),
    ("optim.nesterov=yes please", "expects bool"),
    ("eval.num_examples=0", "0"),
    ("eval.pgd_steps=-1", "-1"),
    ("eval.step_size=-1", "-1"),
    ("eval.epsilon=0", "0"),
    ("eval.epsilon=2", "2"),
    ("eval.every=0", "0"),
    ("name=../escape", "../escape"),
    ("name=a/b", "a/b"),
    ("name=..", ".."),
    ("name=.hidden", ".hidden"),
    ("name=/tmp/x", "/tmp/x"),
    ("method=ilk", "ilk"),
    ("method=TRADES", "TRADES"),
    ("precision=fp16", "fp16"),
    ("optim.lr_schedule=cosine", "did you mean"),
    ("attack.epsilom=8/255", "did you mean"),
    ("awp=1", "is a section"),
    ("epochs", "key=value"),
    # YAML 1.1 would read these as 8, 60 and 5; here they are refused rather than silently changed
    ("device=gpu", "'gpu'"),
    ("device=cuda:x", "'cuda:x'"),
    ("awp.warmup=300", "never act"),
    ("ema.start_epoch=201", "never act"),
    ("epochs=010", "'010'"),
    ("epochs=1:00", "'1:00'"),
    ("optim.lr=0b101", "'0b101'"),
    ("seed=0x10", "'0x10'"),
    ("bf16_min_eps=-1/255", "-0.0039"),
    ("bf16_min_eps=2", "2"),
]
KD_BAD = [
    ("batchnorm_groups=65", "splits each process's 64 rows into 64 pieces, not 65"),
    ("crd.nce_k=99999999999999999999", "99999999999999999999"),
    ("crd.feat_dim=99999999999999999999", "99999999999999999999"),
    ("crd.feat_dim=0", "0"),
    ("ofd.kernel_size=2", "must be odd"),
    ("ofd.kernel_size=99", "99"),
    ("kdsvd.k=99999", "99999"),
    ("reviewkd.max_mid_channel=99999999999", "99999999999"),
    ("epochs=0", "0"),
    ("epochs=-240", "-240"),
    ("seed=-3", "-3"),
    ("data.dataset=cifar10", "cifar10"),
    ("data.batch_size=0", "0"),
    ("data.batch_size=-64", "-64"),
    ("data.test_batch_size=0", "0"),
    ("data.num_workers=-2", "-2"),
    ("method=kdd", "kdd"),
    ("method=", "''"),
    *[
        (f"kd.{k}={v}", v)
        for k, v in (("ce_weight", "-0.1"), ("kd_weight", "-1"), ("temperature", "0"), ("temperature", "-4"))
    ],
    *[
        (f"dkd.{k}={v}", v)
        for k, v in (("ce_weight", "-1"), ("alpha", "-1"), ("beta", "-8"), ("temperature", "0"), ("warmup", "-20"))
    ],
    *[
        (f"ikl.{k}={v}", shown(v))
        for k, v in (
            ("ce_weight", "-1"),
            ("alpha", "-1"),
            ("beta", "-8"),
            ("temperature", "0"),
            ("prior_temperature", "0"),
            ("prior_temperature", "-100"),
            ("gamma", "-1"),
            ("warmup", "-1"),
            ("alpha", ".inf"),
            ("beta", ".nan"),
        )
    ],
    ("ikl.class_prior=sometimes", "expects bool"),
    ("student.arch=resnet9x4", "resnet9x4"),
    ("teacher.arch=digits_cnn", "digits_cnn"),
    ("student.arch=ResNet34", "ResNet34"),
    ("optim.lr=0", "0"),
    ("optim.lr=-0.05", "-0.05"),
    ("optim.lr=.inf", "inf"),
    ("optim.momentum=1.5", "1.5"),
    ("optim.weight_decay=-5e-4", "-0.0005"),
    ("optim.milestones=[210,180,150]", "[210, 180, 150]"),
    ("optim.milestones=[-150]", "-150"),
    ("optim.decay=0", "0"),
    ("optim.decay=2", "2"),
    ("optim.warmup_epochs=-1", "-1"),
    ("optim.warmup_epochs=240", "240"),
    ("eval.every=0", "0"),
    ("eval.every=-1", "-1"),
    ("name=../../etc", "../../etc"),
    ("name=runs/x", "runs/x"),
    ("precision=int8", "int8"),
    ("teacher.report_accuracy=perhaps", "expects bool"),
    ("device=tpu", "'tpu'"),
    ("kd.temprature=4", "did you mean"),
]
YAML_BAD = [  # (file contents, text of the error)
    (b"\xff\xfeepochs: 1\n", "not UTF-8"),
    (b"base: [a.yaml, b.yaml]\n", "'base:'"),
    (b"base: 42\n", "'base:'"),
    (b"base: missing.yaml\n", "config file not found"),
    (b"epochs: [1\n", "not valid YAML"),
    (b"- epochs\n- 1\n", "must hold a mapping"),
    (b"optim: 0.1\n", "must be a mapping"),
    (b"optim:\n  lr: -1\n", "optim.lr"),
    (b"epochs: 010\n", "expects int, got '010'"),
]


def run(main, overrides, tmp_path, capsys):
    device = [] if any(o.startswith("device=") for o in overrides) else ["device=cpu"]
    code = main([*overrides, f"out_dir={tmp_path / 'runs'}", *device])
    error = capsys.readouterr().err
    return code, error


def assert_one_line_error(code, error, tmp_path, *texts):
    assert code == 2, error
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1, error
    assert "Traceback" not in error
    for text in texts:
        assert text in error, (text, error)
    assert not (tmp_path / "runs").exists()  # nothing touched


@pytest.mark.parametrize("override, text", AT_BAD, ids=[o for o, _ in AT_BAD])
def test_bad_adversarial_training_configs(override, text, tmp_path, capsys):
    key = override.split("=", 1)[0]
    code, error = run(at_main, [override], tmp_path, capsys)
    assert_one_line_error(code, error, tmp_path, text, *([key] if "=" in override else []))


@pytest.mark.parametrize("entry_point", [at_main, kd_main], ids=["adversarial_training", "distillation"])
def test_compile_with_sync_bn_is_refused_before_anything_runs(entry_point, tmp_path, capsys):
    code, error = run(entry_point, ["compile=true", "sync_bn=true"], tmp_path, capsys)
    assert_one_line_error(code, error, tmp_path, "breaks its graph at every SyncBatchNorm", "compile", "sync_bn")


@pytest.mark.parametrize("override, text", KD_BAD, ids=[o for o, _ in KD_BAD])
def test_bad_distillation_configs(override, text, tmp_path, capsys):
    key = override.split("=", 1)[0]
    code, error = run(kd_main, [override], tmp_path, capsys)
    assert_one_line_error(code, error, tmp_path, text, key)


@pytest.mark.parametrize("main", [at_main, kd_main], ids=["at", "kd"])
@pytest.mark.parametrize("content, text", YAML_BAD, ids=[t for _, t in YAML_BAD])
def test_bad_yaml_files(main, content, text, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, error = run(main, [f"--config={path}"], tmp_path, capsys)
    assert_one_line_error(code, error, tmp_path, text)


def test_at_least_150_bad_inputs_are_tried():
    assert len(AT_BAD) + len(KD_BAD) + 2 * len(YAML_BAD) >= 150


@pytest.mark.parametrize(
    "spelling, value",
    [
        ("1e-3", 1e-3),
        ("5e-4", 5e-4),
        ("1E-3", 1e-3),
        ("1.0e-3", 1e-3),
        ("0.001", 1e-3),
        (".001", 1e-3),
        ("2", 2.0),
        ("2/100", 0.02),
        ("+0.5", 0.5),
    ],
)
def test_valid_spellings_of_numbers_pass(spelling, value, tmp_path):
    assert load_config(ATConfig, None, [f"optim.lr={spelling}"]).optim.lr == pytest.approx(value)
    assert load_config(KDConfig, None, [f"optim.lr={spelling}"]).optim.lr == pytest.approx(value)
    path = tmp_path / "lr.yaml"
    path.write_text(f"optim:\n  lr: {spelling}\n")
    assert load_config(ATConfig, path).optim.lr == pytest.approx(value)


def test_valid_edge_values_pass():
    cfg = load_config(
        ATConfig,
        None,
        [
            "ema.tau=0",
            "optim.momentum=0",
            "optim.decay=1",
            "attack.epsilon=1",
            "model.arch=WideResNet",
            "model.depth=16",
            "model.widen_factor=2",
            "name=cifar10_ikl_a4b20t4.seed-1",
            "epoch_average.end=200",
            "optim.milestones=[]",
        ],
    )
    assert cfg.model.depth == 16
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        load_config(ATConfig, None, ["model.arch=WideResNet", "model.depth=12"])


@pytest.mark.parametrize("entry_point", [at_main, kd_main], ids=["adversarial_training", "distillation"])
def test_an_empty_out_dir_is_refused(entry_point, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty out_dir would put the run folder here
    code = entry_point(["out_dir=", "device=cpu"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: config key 'out_dir' is empty") and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


DIGITS_AT = str(Path(__file__).resolve().parents[2] / "configs" / "adv_training" / "digits_ikl.yaml")


@pytest.mark.parametrize(
    "override, text",
    [
        ("data.augment=autoaug", "config key 'data.augment' is autoaug, which digits does not have"),
        ("data.augment=cutout", "config key 'data.augment' is cutout"),
        ("eval.num_examples=99999999999999999999", "config key 'eval.num_examples' (99999999999999999999) is more"),
        ("eval.num_examples=451", "than the 450 images of the digits test set"),
    ],
)
def test_digits_settings_that_cannot_apply_name_their_key(override, text, tmp_path, capsys):
    code, error = run(at_main, ["--config", DIGITS_AT, override], tmp_path, capsys)
    assert_one_line_error(code, error, tmp_path, text)
