"""Published models by their RobustBench ID (``--checkpoint robustbench:ID``, adv_training/auto_attacks/target.py):
the model is built and loaded by the robustbench package's own zoo and ``load_model``, offline.

No test reaches the network (`no_network` blocks every socket). The zoo's cheapest CIFAR model,
Rebuffi2021Fixing_R18_ddpm (a pre-activation ResNet-18 that normalises its inputs itself), gets random
weights, saved where RobustBench's loader looks for them (``<dir>/cifar10/Linf/<ID>.pt``) in the layout of
the published files (``{"state_dict": ...}`` with ``module.`` prefixes), and the real evaluation scripts run
on the small CIFAR-format test sets of conftest.py.
"""

import hashlib
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from adv_training.auto_attacks import corruptions
from adv_training.auto_attacks.eval import main as eval_main
from adv_training.auto_attacks.eval import parse_args
from adv_training.auto_attacks.target import evaluation_model, resolve_target, robustbench_utils
from engine.data import build_test_set

MODEL_ID = "Rebuffi2021Fixing_R18_ddpm"  # cifar10 and cifar100, Linf only; 12.5M parameters
PREDICTED = 9  # the class the saved weights favour (see `save_zoo_weights`)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NetworkBlocked(OSError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every name lookup and connection fails at once: RobustBench's download reaches no network."""

    def refuse(*args, **kwargs):
        raise NetworkBlocked("the network is blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def zoo_entry(model_id=MODEL_ID, dataset="cifar10", threat="Linf"):
    robustbench_utils()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][model_id]


def save_zoo_weights(model_dir, *, favour=None, model_id=MODEL_ID, dataset="cifar10", threat="Linf"):
    """Random weights of the zoo's architecture of ``model_id`` (its BatchNorm statistics drawn too), saved
    as RobustBench keeps them, at ``model_dir/<dataset>/<threat>/<ID>.pt``; returns (path, state dict).
    ``favour``: a class whose logit bias is raised far above the others, so that the model predicts it
    for every image (the attacks then have no point to work on: the evaluation takes a second)."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = zoo_entry(model_id, dataset, threat)["model"]()
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith("running_mean"):
            value = 0.1 * torch.randn(value.shape, generator=generator)
        elif name.endswith("running_var"):
            value = 0.5 + torch.rand(value.shape, generator=generator)
        state[name] = value.clone()
    if favour is not None:
        state["logits.bias"][favour] += 100.0
    path = Path(model_dir) / dataset / threat / f"{model_id}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{name}": value for name, value in state.items()}}, path)
    return path, state


def zoo_model(state, model_id=MODEL_ID, dataset="cifar10", threat="Linf"):
    """The zoo's architecture with ``state``, loaded here, without RobustBench's loader."""
    net = zoo_entry(model_id, dataset, threat)["model"]()
    net.load_state_dict(state)
    return net.eval()


def first_test_images(root, count):
    test_set = build_test_set("cifar10", root, verify_checksum=False)
    x = torch.stack([test_set[i][0] for i in range(count)])
    y = torch.tensor([test_set[i][1] for i in range(count)])
    return x, y


def eval_argv(tmp_path, data_root, model_dir, *extra, n_ex=6):
    return [
        "--checkpoint",
        f"robustbench:{MODEL_ID}",
        "--robustbench_dir",
        str(model_dir),
        "--data_dir",
        str(data_root),
        "--no_checksum",
        "--n_ex",
        str(n_ex),
        "--batch_size",
        "6",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "--log_path",
        str(tmp_path / "logs" / "rb.log"),
        "--save_dir",
        str(tmp_path / "adv"),
        "--device",
        "cpu",
        *extra,
    ]


def error_line(capsys):
    """The one line a refused command prints on stderr (and that nothing else is there)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_id_is_evaluated_with_the_zoo_s_model_and_the_saved_weights(cifar10_root, tmp_path):
    path, state = save_zoo_weights(tmp_path / "zoo", favour=PREDICTED)
    argv = eval_argv(tmp_path, cifar10_root, tmp_path / "zoo")
    assert eval_main(argv) == 0

    report = json.loads((tmp_path / "logs" / "rb.json").read_text())
    assert report["checkpoint"] == f"robustbench:{MODEL_ID}" and report["robustbench_id"] == MODEL_ID
    assert (report["threat_model"], report["norm"], report["data"]) == ("Linf", "Linf", "cifar10")
    assert report["robustbench_dir"] == str(tmp_path / "zoo") and report["checkpoint_file"] == str(path)
    assert report["robustbench_version"] == "1.1.1" and report["preprocess"] == "01"
    assert report["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"RobustBench's {MODEL_ID} (cifar10 Linf" in (tmp_path / "logs" / "rb.log").read_text()

    # The evaluated model: the zoo's architecture holding exactly the saved weights, with the zoo's input
    # normalisation inside it (CIFAR-10's mean and std), nothing in front of it.
    model = evaluation_model(resolve_target(parse_args(argv)), torch.device("cpu"))
    assert isinstance(model[0], nn.Identity)
    assert type(model[1]).__name__ == "DMPreActResNet"
    loaded = model[1].state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    from robustbench.model_zoo.architectures.dm_wide_resnet import CIFAR10_MEAN, CIFAR10_STD

    assert torch.equal(model[1].mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.equal(model[1].std.flatten(), torch.tensor(CIFAR10_STD))

    x, y = first_test_images(cifar10_root, 6)
    with torch.no_grad():
        ours, theirs = model(x), zoo_model(state)(x)
    assert torch.equal(ours, theirs)
    assert (theirs.argmax(1) == PREDICTED).all()  # so the attacks had nothing to attack
    assert report["clean_acc"] == round(100 * (theirs.argmax(1) == y).float().mean().item(), 2)


@pytest.mark.slow  # 75 forward passes of the ResNet-18 (about 4 s)
def test_the_corruption_evaluation_takes_an_id(tmp_path):
    _, state = save_zoo_weights(tmp_path / "zoo")  # no favoured class: the predictions vary
    folder, per_severity = tmp_path / "CIFAR-10-C", 1
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 5 * per_severity).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    images = {}
    for name in corruptions.CORRUPTIONS:
        images[name] = rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", images[name])
    json_path = tmp_path / "corruptions.json"
    argv = ["--checkpoint", f"robustbench:{MODEL_ID}", "--robustbench_dir", str(tmp_path / "zoo")]
    argv += ["--corruptions_dir", str(folder), "--json", str(json_path), "--device", "cpu"]
    assert corruptions.main(argv) == 0

    report = json.loads(json_path.read_text())
    assert report["checkpoint"] == f"robustbench:{MODEL_ID}" and report["robustbench_id"] == MODEL_ID
    assert report["threat_model"] == "Linf"  # the default: the Linf model of the ID
    net = zoo_model(state)
    every = []
    for name in corruptions.CORRUPTIONS:
        x = torch.from_numpy(images[name]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            hits = (net(x).argmax(1) == torch.from_numpy(labels.astype(np.int64))).float()
        every += [100 * hits[s * per_severity : (s + 1) * per_severity].mean().item() for s in range(5)]
    assert report["corruptions_acc"] == round(sum(every) / len(every), 2)


def test_a_missing_robustbench_package_says_how_to_install_the_extra(tmp_path, monkeypatch, capsys):
    for name in [name for name in sys.modules if name == "robustbench" or name.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench fails as if not installed
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo")) == 2
    assert error_line(capsys) == (
        "error: --checkpoint robustbench:ID needs the optional robustbench package: "
        "pip install .[robustbench] in this repository (robustbench==1.1.1 from PyPI)"
    )


def test_robustbench_without_one_of_its_dependencies_names_it(tmp_path, monkeypatch, capsys):
    for name in [name for name in sys.modules if name.split(".")[0] in ("robustbench", "timm")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo")) == 2
    line = error_line(capsys)
    assert line.startswith("error: robustbench is installed without its dependency timm: pip install .[robustbench]")
    assert sys.modules.get("robustbench") is None  # no half-imported package left behind


def test_an_unknown_id_is_refused_with_the_nearest_names_of_the_zoo(tmp_path, capsys):
    unknown = "Cui2023Decoupled_WRN34-10"
    with pytest.raises(KeyError):  # what RobustBench's own loader raises: a bare KeyError of the name
        robustbench_utils().load_model(model_name=unknown, model_dir=str(tmp_path / "rb"), dataset="cifar10")
    argv = eval_argv(tmp_path, tmp_path, tmp_path / "zoo")
    argv[1] = f"robustbench:{unknown}"
    assert eval_main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: unknown RobustBench model ID '{unknown}': the model zoo of robustbench 1.1.1")
    assert "no model of that name for any dataset or threat model (did you mean Cui2023Decoupled_WRN-34-10" in line
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize(
    "model_id, extra, message",
    [
        (
            "Addepalli2021Towards_RN18",
            ["--data", "CIFAR100"],
            "Addepalli2021Towards_RN18 is in RobustBench's zoo for cifar10 Linf, not for cifar100 Linf: "
            "pass --data CIFAR10 --threat_model Linf",
        ),
        (
            MODEL_ID,
            ["--norm", "L2", "--epsilon", "0.5"],
            f"{MODEL_ID} is in RobustBench's zoo for cifar10 Linf and cifar100 Linf, not for cifar10 L2: "
            f"pass --data CIFAR10 --threat_model Linf, or --data CIFAR100 --threat_model Linf",
        ),
        (
            "Bai2024MixedNUTS",
            [],
            "Bai2024MixedNUTS (cifar10 Linf) is an ensemble of 2 checkpoint files in RobustBench's zoo",
        ),
        (
            "Debenedetti2022Light_XCiT-S12",
            [],
            "Debenedetti2022Light_XCiT-S12 (cifar10 Linf) has no checkpoint file in RobustBench's zoo",
        ),
    ],
    ids=["other-dataset", "other-threat-model", "ensemble", "timm-hub"],
)
def test_an_id_the_zoo_has_not_for_this_dataset_and_threat_model_says_what_it_has(
    model_id, extra, message, tmp_path, capsys
):
    argv = eval_argv(tmp_path, tmp_path, tmp_path / "zoo", *extra)
    argv[1] = f"robustbench:{model_id}"
    assert eval_main(argv) == 2
    assert error_line(capsys).startswith(f"error: {message}")


def test_the_corruption_evaluation_refuses_a_threat_model_the_id_has_not(tmp_path, capsys):
    argv = ["--checkpoint", f"robustbench:{MODEL_ID}", "--threat_model", "corruptions"]
    assert corruptions.main([*argv, "--robustbench_dir", str(tmp_path), "--device", "cpu"]) == 2
    assert error_line(capsys).startswith(
        f"error: {MODEL_ID} is in RobustBench's zoo for cifar10 Linf and cifar100 Linf, not for cifar10 corruptions"
    )


@pytest.mark.parametrize(
    "flag, value",
    [("--arch", "WideResNet34"), ("--preprocess", "meanstd"), ("--depth", "10"), ("--widen_factor", "1")],
)
def test_flags_that_would_build_or_normalise_the_model_otherwise_are_refused(flag, value, tmp_path, capsys):
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo", flag, value)) == 2
    assert error_line(capsys).startswith(
        f"error: {flag} {value} contradicts --checkpoint robustbench:{MODEL_ID}: RobustBench's zoo builds that model "
        f"with its own architecture and input normalisation (inside the model); drop {flag}"
    )


def test_a_threat_model_other_than_the_attack_norm_is_refused(tmp_path, capsys):
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo", "--threat_model", "L2", "--norm", "Linf")) == 2
    assert error_line(capsys).startswith(
        "error: --threat_model L2 picks the zoo's L2 model, but the attack is --norm Linf: pass --norm L2"
    )


def test_robustbench_flags_with_a_checkpoint_file_are_refused(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save({}, checkpoint)
    for flag, value in (("--threat_model", "Linf"), ("--robustbench_dir", str(tmp_path))):
        argv = ["--checkpoint", str(checkpoint), flag, value, "--log_path", str(tmp_path / "x.log")]
        assert eval_main(argv) == 2
        assert error_line(capsys).startswith(f"error: {flag} belongs to a model of RobustBench's zoo")


def test_an_absent_file_is_downloaded_by_robustbench_and_without_network_names_where_to_put_it(
    tmp_path, monkeypatch, capsys
):
    utils = robustbench_utils()
    downloads = []
    download = utils.download_gdrive_new

    def spy(gdrive_id, path):
        downloads.append((gdrive_id, str(path)))
        return download(gdrive_id, path)  # gdown, against the blocked network

    monkeypatch.setattr(utils, "download_gdrive_new", spy)
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo")) == 2
    path = tmp_path / "zoo" / "cifar10" / "Linf" / f"{MODEL_ID}.pt"
    gdrive_id = zoo_entry()["gdrive_id"]
    assert downloads == [(gdrive_id, str(path))]  # RobustBench's own download, where its loader looks
    line = error_line(capsys)
    assert line.startswith(f"error: could not download the weights of {MODEL_ID} (")
    assert "the network is blocked in this test" in line
    assert line.endswith(
        f"download https://drive.google.com/uc?id={gdrive_id} where there is network and place the file at "
        f"{path} (RobustBench's cache, --robustbench_dir), then rerun"
    )
    assert not path.exists()


def test_a_cached_file_that_does_not_load_is_named(cifar10_root, tmp_path, capsys):
    path, _ = save_zoo_weights(tmp_path / "zoo")
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["module.logits.bias"]
    torch.save(state, path)
    assert eval_main(eval_argv(tmp_path, cifar10_root, tmp_path / "zoo")) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {path} does not load as RobustBench's {MODEL_ID} (RuntimeError: ")
    link = f"https://drive.google.com/uc?id={zoo_entry()['gdrive_id']}"
    assert line.endswith(f"delete it to download it again, or place the file of {link} there")


def test_a_download_that_is_not_the_model_file_is_named(tmp_path, monkeypatch, capsys):
    utils = robustbench_utils()

    def quota_page(gdrive_id, path):  # what Google Drive serves instead of a file over its download quota
        Path(path).write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")

    monkeypatch.setattr(utils, "download_gdrive_new", quota_page)
    assert eval_main(eval_argv(tmp_path, tmp_path, tmp_path / "zoo")) == 2
    path = tmp_path / "zoo" / "cifar10" / "Linf" / f"{MODEL_ID}.pt"
    line = error_line(capsys)
    assert line.startswith(f"error: the downloaded {path} does not load as RobustBench's {MODEL_ID} (")
    assert line.endswith(
        f"delete it, download https://drive.google.com/uc?id={zoo_entry()['gdrive_id']} yourself and place it there"
    )
