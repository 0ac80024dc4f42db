"""AutoAttack evaluation (adv_training/auto_attacks) on the CPU: checkpoint formats, run folders,
logs and JSON, resuming, and the errors a user sees.

A depth-10, width-1 WideResNet trained for a few steps on the small CIFAR-format test data
is attacked with the cheap custom version (APGD-CE) on a dozen images.
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import adv_training.auto_attacks.resumable as resumable
from adv_training.auto_attacks.eval import main
from adv_training.auto_attacks.target import file_target, run_target
from engine.data import build_test_set, build_train_set
from engine.file_io import load_file
from engine.run_folder import RunFolder
from models import build_model, preprocessing

ROOT = Path(__file__).resolve().parents[2]
EVAL_DIR = ROOT / "adv_training" / "auto_attacks"
TINY = ["--arch", "WideResNet", "--depth", "10", "--widen_factor", "1"]
ATTACK_ONE_BATCH = resumable.Adversary.__call__


@pytest.fixture(autouse=True)
def one_thread():
    # A model this small runs faster on one thread, and two threads crawl on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(cifar10_root):
    """A tiny WRN trained briefly on the synthetic CIFAR-10, so that most test images are classified right."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("WideResNet", 10, dataset="cifar10", depth=10, widen_factor=1)
        train = build_train_set("cifar10", cifar10_root, augment="none", verify_checksum=False)
        x = torch.stack([train[i][0] for i in range(len(train))])
        y = torch.tensor([train[i][1] for i in range(len(train))])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(40):
            batch = torch.randint(len(x), (50,))
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


def evaluate(tmp_path, checkpoint, data_root, *extra, name="eval", n_ex=12, batch_size=4, arch=TINY):
    """main() with the cheap settings; returns (exit code, log path, JSON path)."""
    log_path = tmp_path / "logs" / f"{name}.log"
    argv = [
        *arch,
        "--checkpoint",
        str(checkpoint),
        "--data_dir",
        str(data_root),
        "--no_checksum",
        "--n_ex",
        str(n_ex),
        "--batch_size",
        str(batch_size),
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "--log_path",
        str(log_path),
        "--save_dir",
        str(tmp_path / "adv"),
        "--device",
        "cpu",
        *extra,
    ]
    return main(argv), log_path, log_path.with_suffix(".json")


def read_json(path):
    return json.loads(Path(path).read_text())


def accuracy_on(state_dict, images, labels):
    model = build_model("WideResNet", 10, dataset="cifar10", depth=10, widen_factor=1).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return 100 * (model(images).argmax(1) == labels).float().mean().item()


@pytest.mark.slow
def test_evaluation_writes_log_json_and_adversarial_examples(weights, cifar10_root, tmp_path):
    checkpoint = tmp_path / "plain.pt"
    torch.save(weights, checkpoint)
    rng = torch.get_rng_state()
    code, log_path, json_path = evaluate(tmp_path, checkpoint, cifar10_root, "--seed", "3")
    assert code == 0
    assert torch.equal(torch.get_rng_state(), rng)  # the attacks' reseeding is undone

    report = read_json(json_path)
    assert report["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (report["arch"], report["depth"], report["widen_factor"]) == ("WideResNet", 10, 1)
    assert (report["data"], report["norm"], report["version"]) == ("cifar10", "Linf", "custom")
    assert report["attacks"] == ["apgd-ce"]
    assert report["epsilon"] == pytest.approx(8 / 255) and report["n_ex"] == 12 and report["seed"] == 3
    assert report["versions"]["autoattack"].startswith("pyautoattack") and report["versions"]["torch"]
    assert report["clean_acc"] >= 50  # the briefly trained model is far better than chance
    assert 0 <= report["robust_acc"] <= report["clean_acc"]
    assert report["robust_acc_after"]["apgd-ce"] == report["robust_acc"]
    assert report["resumed"] is False and report["attack_seconds"] > 0

    log = log_path.read_text()
    for line in (
        "initial accuracy:",
        "apgd-ce - 1/",
        "robust accuracy after APGD-CE:",
        "max Linf perturbation:",
        f"AutoAttack (custom) robust accuracy: {report['robust_acc']:.2f}%",
        "a sanity check, not a result",
    ):
        assert line in log, line

    # The reference's file: {"adv_complete": x_adv}; the model's accuracy on it is the reported one.
    saved = load_file(tmp_path / "adv" / "aa_custom_1_12_eps_0.03137.pth")
    x_adv = saved["adv_complete"]
    test_set = build_test_set("cifar10", cifar10_root, verify_checksum=False)
    x = torch.stack([test_set[i][0] for i in range(12)])
    y = torch.tensor([test_set[i][1] for i in range(12)])
    assert x_adv.shape == x.shape and 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert accuracy_on(weights, x, y) == pytest.approx(report["clean_acc"], abs=0.01)
    assert accuracy_on(weights, x_adv, y) == pytest.approx(report["robust_acc"], abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["module_prefix", "model_key", "state_dict_key"])
def test_checkpoint_formats_give_the_same_evaluation(weights, cifar10_root, tmp_path, wrap):
    plain = tmp_path / "plain.pt"
    torch.save(weights, plain)
    wrapped = tmp_path / f"{wrap}.pt"
    torch.save(
        {
            "module_prefix": {f"module.{k}": v for k, v in weights.items()},
            "model_key": {"model": weights, "epoch": 3},
            "state_dict_key": {"state_dict": weights},
        }[wrap],
        wrapped,
    )
    assert evaluate(tmp_path, plain, cifar10_root, name="plain", n_ex=6, batch_size=6)[0] == 0
    assert evaluate(tmp_path, wrapped, cifar10_root, name=wrap, n_ex=6, batch_size=6)[0] == 0
    first, second = read_json(tmp_path / "logs" / "plain.json"), read_json(tmp_path / "logs" / f"{wrap}.json")
    for key in ("clean_acc", "robust_acc", "robust_acc_after"):
        assert first[key] == second[key]


@pytest.mark.slow
def test_batch_by_batch_gives_what_one_autoattack_call_gives(weights, cifar10_root):
    import pyautoattack

    model = build_model("WideResNet", 10, dataset="cifar10", depth=10, widen_factor=1).eval().requires_grad_(False)
    model.load_state_dict(weights)
    test_set = build_test_set("cifar10", cifar10_root, verify_checksum=False)
    x = torch.stack([test_set[i][0] for i in range(12)])
    y = torch.tensor([test_set[i][1] for i in range(12)])
    attacks, cpu = ["apgd-ce", "apgd-dlr"], torch.device("cpu")
    with torch.random.fork_rng():
        adversary = resumable.Adversary(
            model, norm="Linf", eps=8 / 255, version="custom", attacks=attacks, device=cpu, seed=0
        )
        adversary.autoattack.apgd.n_restarts = 1  # cheaper; the same for both
        ours = resumable.run_autoattack(adversary, model, x, y, batch_size=4, device=cpu, log=lambda line: None)
        reference = pyautoattack.AutoAttack(
            model, norm="Linf", eps=8 / 255, version="custom", attacks=attacks, device=cpu, seed=0
        )
        reference.apgd.n_restarts = 1
        x_ref, y_ref = reference.run_standard_evaluation(x, y, batch_size=4)
    # Points broken by the first attack change the batches of the second, which must still match.
    assert ours.clean_acc > ours.robust_after["apgd-ce"]
    assert torch.equal(ours.x_adv[resumable.SEQUENTIAL], x_ref)
    assert torch.equal(ours.y_adv[resumable.SEQUENTIAL], y_ref)


def train_tiny_run(data_root, out_dir):
    """A real run folder of adv_training.train: one epoch, EMA from epoch 1."""
    from adv_training.train import main as train_main

    overrides = [
        f"data.root={data_root}",
        "data.dataset=cifar10",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=50",
        "data.test_batch_size=50",
        "model.arch=WideResNet",
        "model.depth=10",
        "model.widen_factor=1",
        "epochs=1",
        "device=cpu",
        f"out_dir={out_dir}",
        "name=run",
        "eval.num_examples=20",
        "eval.pgd_steps=1",
        "awp.enabled=false",
        "ema.start_epoch=1",
    ]
    with torch.random.fork_rng():
        assert train_main(overrides) == 0
    return out_dir / "run"


@pytest.mark.slow
def test_a_training_run_folder_is_evaluated_with_its_own_architecture(cifar10_root, tmp_path):
    run = train_tiny_run(cifar10_root, tmp_path / "runs")
    code, log_path, json_path = evaluate(tmp_path, run, cifar10_root, n_ex=4, arch=[])  # no --arch, no --data
    assert code == 0
    report = read_json(json_path)
    # The default is the epoch average the run wrote (swa.py 0.9 1 EPOCHS), as the reference reports.
    average = run / "ours-model-epoch-SWA0.911.pt"
    assert report["which"] == "swa" and report["checkpoint_file"] == str(average)
    assert (report["arch"], report["depth"], report["data"]) == ("WideResNet", 10, "cifar10")
    assert report["checkpoint_sha256"] == hashlib.sha256(average.read_bytes()).hexdigest()
    assert "evaluating ours-model-epoch-SWA0.911.pt" in log_path.read_text()

    # last.pt holds {"model": ..., "optimizer": ..., ...}; the zoo's loader takes the model.
    code, _, json_path = evaluate(tmp_path, run, cifar10_root, "--which", "last", n_ex=4, arch=[], name="last")
    assert code == 0 and read_json(json_path)["which"] == "last"


def test_run_folder_weights_are_chosen_swa_then_ema_then_best(tmp_path):
    for name in ("best.pt", "last.pt"):
        (tmp_path / name).touch()
    assert RunFolder(tmp_path).weights(None) == (tmp_path / "best.pt", "best")
    (tmp_path / "ema.pt").touch()
    assert RunFolder(tmp_path).weights(None) == (tmp_path / "ema.pt", "ema")
    (tmp_path / "ours-model-epoch-SWA0.91200.pt").touch()
    assert RunFolder(tmp_path).weights(None) == (tmp_path / "ours-model-epoch-SWA0.91200.pt", "swa")
    newer = tmp_path / "ours-model-epoch-SWA0.81200.pt"
    newer.touch()
    os.utime(newer, (2e9, 2e9))
    assert RunFolder(tmp_path).weights("swa") == (newer, "swa")  # without a config: the newest average
    # the average the run's config names wins over a newer one written by hand
    (tmp_path / "config.yaml").write_text("epochs: 200\nswa: {enabled: true, tau: 0.9, start: 1, end: null}\n")
    assert RunFolder(tmp_path).weights(None) == (tmp_path / "ours-model-epoch-SWA0.91200.pt", "swa")
    assert RunFolder(tmp_path).weights("ema") == (tmp_path / "ema.pt", "ema")
    assert RunFolder(tmp_path).weights("last") == (tmp_path / "last.pt", "last")
    (tmp_path / "ema.pt").unlink()
    with pytest.raises(Exception, match="ema.pt does not exist"):
        RunFolder(tmp_path).weights("ema")


def test_a_run_folder_contradicting_the_command_line_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = "model: {arch: WideResNet, depth: 10, widen_factor: 1}\ndata: {dataset: cifar100}\n"
    (run / "config.yaml").write_text(config)
    (run / "best.pt").touch()
    assert main(["--checkpoint", str(run), "--data", "CIFAR10", "--log_path", str(tmp_path / "x.log")]) == 2
    assert "--data cifar10 contradicts the run folder" in capsys.readouterr().err


def test_a_run_folder_brings_its_input_normalisation(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {arch: WideResNet34_10, preprocess: meanstd}\ndata: {dataset: cifar10}\n")
    (run / "best.pt").touch()
    assert run_target(run).preprocess == "meanstd" and run_target(run, preprocess="meanstd").preprocess == "meanstd"
    assert file_target(run / "best.pt").preprocess == "01"  # a file: the flag, default 01
    assert main(["--checkpoint", str(run), "--preprocess", "01", "--log_path", str(tmp_path / "x.log")]) == 2
    assert "--preprocess 01 contradicts the run folder" in capsys.readouterr().err


class CountingAdversary:
    """Wraps Adversary.__call__: counts the batches and can stop the run like Ctrl-C after N of them."""

    def __init__(self, monkeypatch, interrupt_after=None):
        self.calls = 0

        def call(adversary, attack, x, y):
            if interrupt_after is not None and self.calls == interrupt_after:
                raise KeyboardInterrupt
            self.calls += 1
            return ATTACK_ONE_BATCH(adversary, attack, x, y)

        monkeypatch.setattr(resumable.Adversary, "__call__", call)


@pytest.mark.slow
def test_an_interrupted_evaluation_continues_where_it_stopped(weights, cifar10_root, tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    whole = CountingAdversary(monkeypatch)
    assert evaluate(tmp_path, checkpoint, cifar10_root, name="whole", batch_size=3)[0] == 0
    assert whole.calls >= 2, "the test needs several batches"

    first = CountingAdversary(monkeypatch, interrupt_after=1)
    code, log_path, json_path = evaluate(tmp_path, checkpoint, cifar10_root, name="cut", batch_size=3)
    assert code == 130 and not json_path.exists()
    state = load_file(log_path.with_suffix(".state.pt"))
    progress = state["runs"]["autoattack"]
    assert progress["current"]["attack"] == "apgd-ce" and progress["current"]["next_batch"] == 1
    assert progress["done"] == {}
    assert first.calls == 1

    rest = CountingAdversary(monkeypatch)
    code, log_path, json_path = evaluate(tmp_path, checkpoint, cifar10_root, name="cut", batch_size=3)
    assert code == 0 and rest.calls == whole.calls - 1  # only the batches not done before
    assert f"apgd-ce: continuing at batch 2/{whole.calls}" in log_path.read_text()
    resumed, uninterrupted = read_json(json_path), read_json(tmp_path / "logs" / "whole.json")
    assert resumed["resumed"] is True
    for key in ("clean_acc", "robust_acc", "robust_acc_after"):
        assert resumed[key] == uninterrupted[key]
    state = load_file(log_path.with_suffix(".state.pt"))
    assert state["runs"]["autoattack"]["done"].keys() == {"apgd-ce"}
    assert state["runs"]["autoattack"]["current"] is None


def test_a_finished_evaluation_is_reported_again_without_attacking(weights, cifar10_root, tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    assert evaluate(tmp_path, checkpoint, cifar10_root, n_ex=6)[0] == 0
    before = read_json(tmp_path / "logs" / "eval.json")
    adv_file = tmp_path / "adv" / "aa_custom_1_6_eps_0.03137.pth"
    adv_before = load_file(adv_file)["adv_complete"]

    again = CountingAdversary(monkeypatch)
    code, log_path, json_path = evaluate(tmp_path, checkpoint, cifar10_root, n_ex=6)
    assert code == 0 and again.calls == 0
    after = read_json(json_path)
    assert (after["clean_acc"], after["robust_acc"]) == (before["clean_acc"], before["robust_acc"])
    assert after["resumed"] is True
    assert torch.equal(load_file(adv_file)["adv_complete"], adv_before)
    assert "finished in an earlier session" in log_path.read_text()


def test_a_state_file_of_another_evaluation_is_refused(weights, cifar10_root, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    assert evaluate(tmp_path, checkpoint, cifar10_root, n_ex=4)[0] == 0
    capsys.readouterr()
    assert evaluate(tmp_path, checkpoint, cifar10_root, "--epsilon", "4/255", n_ex=4)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the state file") and "belongs to another evaluation (epsilon:" in err


def test_individual_attacks_are_saved_per_attack(weights, cifar10_root, tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    code, log_path, json_path = evaluate(tmp_path, checkpoint, cifar10_root, "--individual", n_ex=6)
    assert code == 0
    report = read_json(json_path)
    assert set(report["robust_acc_by"]) == {"apgd-ce"} and report["robust_acc"] <= report["clean_acc"]
    saved = load_file(tmp_path / "adv" / "aa_custom_individual_1_6_eps_0.03137.pth")
    assert set(saved) == {"apgd-ce"} and saved["apgd-ce"].shape == (6, 3, 32, 32)
    assert "robust accuracy by APGD-CE" in log_path.read_text()


@pytest.mark.slow
def test_the_upstream_autoattack_package_is_used_when_pyautoattack_is_missing(
    weights, cifar10_root, tmp_path, monkeypatch
):
    import pyautoattack

    class UpstreamAutoAttack(pyautoattack.AutoAttack):
        """fra31/auto-attack's API (positional, attacks_to_run=, bs=, return_labels=) over pyautoattack."""

        def __init__(
            self,
            model,
            norm="Linf",
            eps=0.3,
            seed=None,
            verbose=True,
            attacks_to_run=(),
            version="standard",
            is_tf_model=False,
            device="cuda",
            log_path=None,
        ):
            super().__init__(
                model, norm=norm, eps=eps, seed=seed, version=version, device=device, attacks=attacks_to_run or None
            )

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
            x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs)
            return (x_adv, y_adv) if return_labels else x_adv

    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    assert evaluate(tmp_path, checkpoint, cifar10_root, name="pyautoattack", n_ex=6)[0] == 0
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    monkeypatch.setitem(sys.modules, "autoattack", SimpleNamespace(AutoAttack=UpstreamAutoAttack))
    assert evaluate(tmp_path, checkpoint, cifar10_root, name="upstream", n_ex=6)[0] == 0
    ours, upstream = read_json(tmp_path / "logs" / "pyautoattack.json"), read_json(tmp_path / "logs" / "upstream.json")
    assert upstream["versions"]["autoattack"] == "autoattack (version unknown)"
    assert (upstream["clean_acc"], upstream["robust_acc"]) == (ours["clean_acc"], ours["robust_acc"])


def test_a_checkpoint_of_another_architecture_gives_the_zoos_readable_error(cifar10_root, tmp_path, capsys):
    checkpoint = tmp_path / "cifar100.pt"
    torch.save(build_model("WideResNet", 100, depth=10, widen_factor=1).state_dict(), checkpoint)
    code, log_path, _ = evaluate(tmp_path, checkpoint, cifar10_root)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {checkpoint} does not fit WideResNet")  # names the file
    assert "shape mismatch" in err and "Traceback" not in err
    assert not log_path.exists()  # nothing written for an evaluation that never started


def test_a_malicious_pickle_is_refused_and_not_executed(cifar10_root, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    checkpoint = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, checkpoint)
    assert evaluate(tmp_path, checkpoint, cifar10_root)[0] == 2
    err = capsys.readouterr().err
    assert "refused and NOT executed" in err and not marker.exists()


def test_attacks_need_the_custom_version(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save({}, checkpoint)
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--attacks",
                "apgd-ce",
                "--log_path",
                str(tmp_path / "x.log"),
                *TINY,
                "--device",
                "cpu",
                "--data_dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "error:" in capsys.readouterr().err


def run_cli(args, cwd):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_missing_files_end_in_one_line_and_exit_code_2(weights, tmp_path):
    result = run_cli(["-m", "adv_training.auto_attacks.eval", "--checkpoint", str(tmp_path / "missing.pt")], ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: no checkpoint file at {tmp_path / 'missing.pt'}"]

    # Run as the authors do, from inside auto_attacks; the dataset is missing this time.
    checkpoint = tmp_path / "model.pt"
    torch.save(weights, checkpoint)
    result = run_cli(
        [
            "eval.py",
            *TINY,
            "--checkpoint",
            str(checkpoint),
            "--data_dir",
            str(tmp_path / "nodata"),
            "--log_path",
            str(tmp_path / "x.log"),
            "--device",
            "cpu",
        ],
        EVAL_DIR,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-10 not found")


@pytest.mark.slow
def test_eval_py_runs_from_its_folder_with_only_its_own_shim(tmp_path):
    """The authors' `python eval.py` in adv_training/auto_attacks, where the packages are neither installed
    nor on PYTHONPATH: eval.py's sys.path shim alone finds them (and the library modules beside it)."""
    code = (
        "import runpy, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]  # not installed\n"
        "try:\n"
        "    import adv_training\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('adv_training is importable without the shim: the test would prove nothing')\n"
        f"sys.argv = ['eval.py', '--checkpoint', {str(tmp_path / 'missing.pt')!r}]\n"
        "runpy.run_path('eval.py', run_name='__main__')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=EVAL_DIR, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: no checkpoint file at {tmp_path / 'missing.pt'}"


def test_preprocessing_matches_the_authors_options():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(preprocessing("01", "cifar10")(x), x)
    assert torch.allclose(preprocessing("+-1", "cifar10")(x), 2 * x - 1)
    mean = torch.tensor([0.5070751592371323, 0.48654887331495095, 0.4409178433670343]).view(1, 3, 1, 1)
    std = torch.tensor([0.2673342858792401, 0.2564384629170883, 0.27615047132568404]).view(1, 3, 1, 1)
    assert torch.allclose(preprocessing("meanstd", "cifar100")(x), (x - mean) / std)


def test_eval_sh_runs_each_released_model_found_and_says_where_to_get_the_others(tmp_path):
    models = tmp_path / "pretrained"
    models.mkdir()
    (models / "cifar100_a5_b12_t4_50m.pt").touch()
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "python $*"\n')
    fake_python.chmod(0o755)
    env = {**os.environ, "DKL_PYTHON": str(fake_python), "PRETRAINED_DIR": str(models)}
    result = subprocess.run(
        ["bash", "adv_training/auto_attacks/sh/eval.sh", "--n_ex", "500"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = [line for line in result.stdout.splitlines() if line.startswith("python ")]
    assert calls == [
        f"python eval.py --arch wrn-28-10-swish --checkpoint {models}/cifar100_a5_b12_t4_50m.pt --data CIFAR100 "
        f"--preprocess 01 --data_dir {ROOT / 'data'} --download --log_path logs/cifar100_dkl_a5_b12_T4_50m.log "
        f"--n_ex 500"
    ]
    # the DKLv1 eval.sh names, the DKLv2 ones, and the two linked models no script names
    for name in (
        "cifar100_a3_b20_t4.pt",
        "cifar100_a4_b20_t2.pt",
        "cifar10_a3_b20_t4.pt",
        "cifar10_a3_b10_t4_20m.pt",
        "cifar100_a4b20t4.pt",
        "cifar10_a4b20t4.pt",
        "cifar100_autoaug.pt",
        "cifar100_gkl_50m.pt",
    ):
        assert f"  {name}  (" in result.stdout
    assert (
        "cifar100_a3_b20_t4.pt  (IKL-AT WRN-34-10, CIFAR-100 (alpha 3, beta 20, T 4); published 66.51 / 31.43, "
        "DKLv1 log cifar100_dkl_a3_b20_T4.log and README)" in result.stdout
    )
    assert "drive.google.com" in result.stdout and "1 of 9 released models evaluated" in result.stdout
    sharded = subprocess.run(
        ["bash", "adv_training/auto_attacks/sh/eval.sh"],
        cwd=ROOT,
        env={**env, "NPROC": "3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [line for line in sharded.stdout.splitlines() if line.startswith("python ")] == [
        f"python -m torch.distributed.run --standalone --nproc_per_node=3 eval.py --arch wrn-28-10-swish "
        f"--checkpoint {models}/cifar100_a5_b12_t4_50m.pt --data CIFAR100 --preprocess 01 --data_dir {ROOT / 'data'} "
        f"--download --log_path logs/cifar100_dkl_a5_b12_T4_50m.log"
    ]

    (models / "cifar100_a5_b12_t4_50m.pt").unlink()
    result = subprocess.run(
        ["bash", "adv_training/auto_attacks/sh/eval.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "0 of 9 released models evaluated" in result.stdout


def test_a_temporary_file_left_beside_the_state_file_is_removed(weights, cifar10_root, tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(weights, checkpoint)
    stale = tmp_path / "logs" / ".stale.state.pt.q8w7e6r5.tmp"  # what a kill during a state save leaves
    other = tmp_path / "logs" / ".other.state.pt.a1b2c3d4.tmp"  # another evaluation's write, in progress
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a state")
    other.write_bytes(b"being written")
    code, _, json_path = evaluate(tmp_path, checkpoint, cifar10_root, name="stale", n_ex=4)
    assert code == 0 and json_path.is_file()
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize(
    "epsilon, text",
    [("nan", "positive number"), ("inf", "positive number"), ("-0.1", "positive"), ("8", "more than 1 for Linf")],
)
def test_a_bad_epsilon_is_refused_before_anything_runs(epsilon, text, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "none.pt"), "--epsilon", epsilon, "--log_path", str(tmp_path / "x.log")])
    assert exit_info.value.code == 2 and text in capsys.readouterr().err
    assert not (tmp_path / "x.log").exists()
