import pathlib
import pickle

import pytest
import torch

from models import CheckpointMismatchError, UnsafeCheckpointError, build_model, load_weights
from models.dm_wide_resnet import DMWideResNet
from models.registry import entries
from models.weights import CheckpointError

BIG = {"WideResNet34_10", "WideResNet34_20", "WideResNet28_10", "WideResNet70_16", "wrn-28-10-swish", "wrn-70-16-swish"}
ALIASES = {"WideResNet34", "WideResNet28"}
SMALL = [e for e in entries() if e.name not in BIG | ALIASES]


def _fresh(name, num_classes, seed, **kwargs):
    torch.manual_seed(seed)
    return build_model(name, num_classes, dataset="cifar10", **kwargs).eval()


@pytest.mark.parametrize("entry", SMALL, ids=lambda e: f"{e.name}-{e.family}")
def test_saved_state_dict_reloads_strictly(entry, tmp_path):
    kwargs = {"depth": 10, "widen_factor": 1} if entry.name == "WideResNet" else {}

    def build(seed):
        torch.manual_seed(seed)
        return build_model(entry.name, entry.default_num_classes, dataset=entry.datasets[0], **kwargs)

    source = build(0)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    target = build(1)
    assert load_weights(target, path) is target
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def _wrappers(state):
    return {
        "plain": state,
        "module.": {"module." + k: v for k, v in state.items()},
        "module.0.": {"module.0." + k: v for k, v in state.items()},
        "model": {"model": state, "epoch": 240, "best_acc": torch.tensor(77.1)},
        "state_dict": {"state_dict": state, "epoch": 76},
        "model_state_dict": {"model_state_dict": {"module.0." + k: v for k, v in state.items()}},
        "sub_block1": {
            **state,
            **{"sub_block1." + k[len("block1.") :]: v for k, v in state.items() if k.startswith("block1.")},
        },
    }


@pytest.mark.parametrize("fmt", list(_wrappers({})))
def test_published_wrapper_formats_load(fmt, tmp_path):
    source = _fresh("WideResNet", 10, 0, depth=10, widen_factor=1)
    x = torch.rand(2, 3, 32, 32)
    path = tmp_path / "ckpt.pt"
    torch.save(_wrappers(source.state_dict())[fmt], path)
    target = load_weights(_fresh("WideResNet", 10, 1, depth=10, widen_factor=1), path)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_mdistiller_style_checkpoint_for_teacher(tmp_path):
    source = _fresh("resnet8x4", 100, 0)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(
        {
            "epoch": 240,
            "model": source.state_dict(),
            "accuracy": torch.tensor(73.1),
            "optimizer": torch.optim.SGD(source.parameters(), lr=0.1).state_dict(),
        },
        path,
    )
    target = load_weights(_fresh("resnet8x4", 100, 1), path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_state_dict_without_batchnorm_counters_loads():
    """A state dict from PyTorch < 0.4.1 has no num_batches_tracked: every other tensor loads, and BatchNorm
    keeps its own counters."""
    source = _fresh("resnet8", 100, 0)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    counters = [k for k in source.state_dict() if k.endswith("num_batches_tracked")]
    target = _fresh("resnet8", 100, 1)
    with torch.no_grad():  # every tensor unlike the source's (BatchNorm's start as ones and zeros in both)
        for key, tensor in target.state_dict().items():
            if key in counters:
                tensor.fill_(7)
            else:
                tensor.add_(0.5)
    assert counters and all(not torch.equal(value, target.state_dict()[key]) for key, value in state.items())
    assert load_weights(target, state) is target
    loaded = target.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert all(loaded[key].item() == 7 for key in counters)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


class _Payload:
    """Unpickling this writes a marker file: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "executed"))


def test_code_executing_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    state = _fresh("resnet8", 100, 0).state_dict()
    torch.save({"model": state, "extra": _Payload(str(marker))}, path)

    with pytest.raises(UnsafeCheckpointError) as err:
        load_weights(_fresh("resnet8", 100, 1), path)
    assert "not a plain tensor checkpoint" in str(err.value) and "NOT executed" in str(err.value)
    assert isinstance(err.value, pickle.UnpicklingError) and isinstance(err.value, ValueError)
    assert not marker.exists()

    # The file really is hostile: an unrestricted load runs the payload.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_fresh("resnet8", 100, 0), path)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(_fresh("resnet8", 100, 1), path)


def test_wrong_architecture_is_explained(tmp_path):
    path = tmp_path / "resnet8x4.pth"
    torch.save({"model": _fresh("resnet8x4", 100, 0).state_dict()}, path)
    target = build_model("resnet32x4", 100)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(target, path)
    message = str(err.value)
    assert "CifarResNet" in message and "'resnet32x4'" in message
    assert "missing key(s)" in message and "layer1.1.conv1.weight" in message
    assert "--arch" in message and "num_classes" in message


def test_unexpected_and_shape_mismatch_are_listed():
    state = _fresh("resnet8", 100, 0).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(build_model("resnet8", 10), state)
    message = str(err.value)
    assert "1 unexpected key(s): extra.weight" in message
    assert "fc.weight (100, 64) in checkpoint vs (10, 64) in model" in message


def test_wrong_family_is_explained():
    state = _fresh("WideResNet", 10, 0, depth=10, widen_factor=1).state_dict()
    with pytest.raises(CheckpointMismatchError, match="DMWideResNet") as err:
        load_weights(DMWideResNet(10, depth=10, width=1), state)
    message = str(err.value)
    assert "missing key(s): init_conv.weight" in message
    assert "unexpected key(s): conv1.weight, block1.layer.0.bn1.weight" in message


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        load_weights(build_model("resnet8", 100), "/nonexistent/ckpt.pth")


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_weights(build_model("resnet8", 100), path)


def test_container_without_state_dict():
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_weights(build_model("resnet8", 100), {"epoch": 3, "optimizer": {}})


def test_dm_normalisation_in_checkpoint():
    model = DMWideResNet(10, depth=10, width=1)
    state = dict(model.state_dict(), mean=model.mean.clone(), std=model.std.clone())
    load_weights(DMWideResNet(10, depth=10, width=1), state)  # same statistics: dropped
    cifar100 = DMWideResNet(10, depth=10, width=1, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
    with pytest.raises(CheckpointMismatchError, match="mean"):
        load_weights(cifar100, state)


def test_weights_with_inf_are_refused_naming_the_file_and_the_key(tmp_path):
    model = build_model("digits_cnn_small", 10)
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("inf"))
    path = tmp_path / "diverged.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=f"{path}: entry '{key}' holds NaN or inf"):
        load_weights(build_model("digits_cnn_small", 10), path)
