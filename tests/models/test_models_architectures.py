import pytest
import torch
import torch.nn.functional as F

from models import build_model, load_weights
from models.dm_wide_resnet import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Block,
    DMWideResNet,
    dataset_stats,
)
from models.registry import entries

# Measured with mdistiller's own definitions (cifar-kd, 100 classes), RobustBench's
# WideResNet/DMWideResNet (10 classes) and torchvision (1000 classes).
PARAMS = {
    ("digits_cnn", "digits"): 94_186,
    ("digits_cnn_small", "digits"): 6_274,
    ("digits_cnn_plain", "digits"): 6_218,
    ("resnet8", "cifar-kd"): 83_892,
    ("resnet14", "cifar-kd"): 181_108,
    ("resnet20", "cifar-kd"): 278_324,
    ("resnet32", "cifar-kd"): 472_756,
    ("resnet44", "cifar-kd"): 667_188,
    ("resnet56", "cifar-kd"): 861_620,
    ("resnet110", "cifar-kd"): 1_736_564,
    ("resnet8x4", "cifar-kd"): 1_233_540,
    ("resnet32x4", "cifar-kd"): 7_433_860,
    ("ResNet18", "cifar-kd"): 11_220_132,
    ("ResNet50", "cifar-kd"): 23_705_252,
    ("wrn_16_1", "cifar-kd"): 180_916,
    ("wrn_16_2", "cifar-kd"): 703_284,
    ("wrn_40_1", "cifar-kd"): 569_780,
    ("wrn_40_2", "cifar-kd"): 2_255_156,
    ("vgg8", "cifar-kd"): 3_965_028,
    ("vgg11", "cifar-kd"): 9_277_284,
    ("vgg13", "cifar-kd"): 9_462_180,
    ("vgg16", "cifar-kd"): 14_774_436,
    ("vgg19", "cifar-kd"): 20_086_692,
    ("MobileNetV2", "cifar-kd"): 812_836,
    ("ShuffleV1", "cifar-kd"): 949_258,
    ("ShuffleV2", "cifar-kd"): 1_355_528,
    ("WideResNet34_10", "cifar-at"): 46_160_474,
    ("WideResNet34", "cifar-at"): 46_160_474,
    ("WideResNet", "cifar-at"): 46_160_474,  # default depth 34, widen factor 10
    ("WideResNet28_10", "cifar-at"): 36_479_194,
    ("WideResNet28", "cifar-at"): 36_479_194,
    ("WideResNet34_20", "cifar-at"): 184_531_674,
    ("WideResNet70_16", "cifar-at"): 266_796_506,
    ("wrn-28-10-swish", "cifar-at"): 36_479_194,
    ("wrn-70-16-swish", "cifar-at"): 266_796_506,
    ("PreActResNet18", "cifar-at"): 11_172_170,
    ("ResNet18_cifar", "cifar-at"): 11_173_962,  # LBGAT's models/resnetcifar.py, 10 classes
    ("ResNet18", "imagenet"): 11_689_512,
    ("ResNet34", "imagenet"): 21_797_672,
    ("ResNet50", "imagenet"): 25_557_032,
    ("MobileNetV1", "imagenet"): 4_231_976,
    ("ResNeXt101_32x4d", "imagenet"): 44_177_704,  # counted from the DKL authors' models/resnet_imagenet.py
}

BIG = {"WideResNet34_10", "WideResNet34_20", "WideResNet28_10", "WideResNet70_16", "wrn-28-10-swish", "wrn-70-16-swish"}
ALIASES = {"WideResNet34", "WideResNet28"}  # same constructors as WideResNet34_10 / WideResNet28_10
SMALL = [e for e in entries() if e.name not in BIG | ALIASES]


def _build(entry, **kwargs):
    return build_model(entry.name, entry.default_num_classes, dataset=entry.datasets[0], **kwargs)


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("entry", entries(), ids=lambda e: f"{e.name}-{e.family}")
def test_parameter_count(entry):
    with torch.device("meta"):
        model = _build(entry)
    assert _count(model) == PARAMS[(entry.name, entry.family)]


def _check_logits(model, input_size, num_classes, batch):
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(batch, *input_size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("entry", SMALL, ids=lambda e: f"{e.name}-{e.family}")
def test_forward_returns_logits(entry):
    torch.manual_seed(0)
    kwargs = {"depth": 10, "widen_factor": 1} if entry.name == "WideResNet" else {}
    batch = 1 if entry.family == "imagenet" else 2
    _check_logits(_build(entry, **kwargs), entry.input_size, entry.default_num_classes, batch)


@pytest.fixture(scope="module", params=sorted(BIG))
def big(request):
    """Each large WideResNet is built once; pytest groups the tests by it."""
    torch.manual_seed(0)
    model = build_model(request.param, 10).eval()
    yield request.param, model
    del model


@pytest.mark.slow
def test_big_forward_returns_logits(big):
    _, model = big
    _check_logits(model, (3, 32, 32), 10, 1)


@pytest.mark.slow
def test_big_state_dict_reloads_strictly(big):
    name, model = big
    state = model.state_dict()
    with torch.device("meta"):
        twin = build_model(name, 10)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in state.items()}
    load_weights(model, state)


@pytest.mark.slow
def test_big_normalisation(big):
    name, model = big
    extra_buffers = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    if name.endswith("swish"):  # DeepMind layout: CIFAR-10 statistics, outside the state dict
        assert extra_buffers == {"mean", "std"}
        assert torch.allclose(model.mean.flatten(), torch.tensor(CIFAR10_MEAN))
        assert torch.allclose(model.std.flatten(), torch.tensor(CIFAR10_STD))
    else:  # TRADES layout: inputs go in unnormalised
        assert extra_buffers == set()


def test_trades_wrn_key_layout():
    with torch.device("meta"):
        keys = build_model("WideResNet34_10", 10).state_dict().keys()
    for key in [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.bn2.running_var",
        "block1.layer.0.conv2.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.4.conv2.weight",
        "bn1.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys
    # Width-preserving blocks have no projection, and there is no second block1.
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert not any(k.startswith("sub_block") for k in keys)


def test_dm_wrn_key_layout():
    with torch.device("meta"):
        keys = build_model("wrn-28-10-swish", 10).state_dict().keys()
    for key in [
        "init_conv.weight",
        "layer.0.block.0.batchnorm_0.weight",
        "layer.0.block.0.conv_0.weight",
        "layer.0.block.0.batchnorm_1.running_mean",
        "layer.0.block.0.conv_1.weight",
        "layer.0.block.0.shortcut.weight",
        "layer.2.block.3.conv_1.weight",
        "batchnorm.weight",
        "logits.weight",
        "logits.bias",
    ]:
        assert key in keys
    assert "layer.0.block.1.shortcut.weight" not in keys
    assert "mean" not in keys and "std" not in keys


def test_preact_and_kd_key_layouts():
    with torch.device("meta"):
        preact = build_model("PreActResNet18", 10).state_dict().keys()
        r8x4 = build_model("resnet8x4", 100).state_dict().keys()
        mv2 = build_model("MobileNetV2", 100).state_dict().keys()
        mv1 = build_model("MobileNetV1", 1000).state_dict().keys()
    assert {"conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.weight", "bn.weight", "linear.weight"} <= set(
        preact
    )
    assert {"layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "fc.weight"} <= set(r8x4)
    assert {
        "conv1.0.weight",
        "blocks.0.0.conv.0.weight",
        "blocks.6.0.conv.7.bias",
        "conv2.1.weight",
        "classifier.0.weight",
    } <= set(mv2)
    assert {"model.0.0.weight", "model.13.4.running_var", "fc.weight"} <= set(mv1)


def test_dm_wrn_normalises_inside():
    torch.manual_seed(0)
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    model = DMWideResNet(10, depth=10, width=1, mean=mean, std=std).eval()
    plain = DMWideResNet(10, depth=10, width=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
    load_weights(plain, model.state_dict())
    x = torch.rand(3, 3, 32, 32)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(normalised), atol=1e-5)
        assert not torch.allclose(model(x), plain(x), atol=1e-3)


def test_dm_wrn_statistics_choice():
    assert dataset_stats(10, None, None, None) == (CIFAR10_MEAN, CIFAR10_STD)
    assert dataset_stats(100, None, None, None) == (CIFAR100_MEAN, CIFAR100_STD)
    assert dataset_stats(10, "cifar100", None, None) == (CIFAR100_MEAN, CIFAR100_STD)
    assert dataset_stats(100, "cifar10", (0.5,) * 3, (0.25,) * 3) == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="dataset="):
        dataset_stats(43, None, None, None)
    with pytest.raises(ValueError, match="both"):
        dataset_stats(10, None, (0.5,) * 3, None)
    model = build_model("wrn-28-10-swish", 100)  # builds in ~0.3 s; real buffers needed
    assert torch.allclose(model.mean.flatten(), torch.tensor(CIFAR100_MEAN))
    assert torch.allclose(model.std.flatten(), torch.tensor(CIFAR100_STD))
    model = build_model("wrn-28-10-swish", 10, dataset="cifar100")
    assert torch.allclose(model.mean.flatten(), torch.tensor(CIFAR100_MEAN))


def test_dm_wrn_same_padding():
    torch.manual_seed(0)
    model = DMWideResNet(10, depth=10, width=1).eval()
    seen = []
    for group in model.layer:
        conv = group.block[0].conv_0
        conv.register_forward_hook(lambda m, inp, out: seen.append((inp[0].shape[-1], out.shape[-1])))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    # stride 1 pads to 34 -> 32; stride 2 pads only bottom/right: 33 -> 16, 17 -> 8
    assert seen == [(34, 32), (33, 16), (17, 8)]

    block = Block(4, 8, stride=2).eval()
    x = torch.randn(1, 4, 8, 8)
    pre = block.relu_0(block.batchnorm_0(x))
    captured = {}
    block.conv_0.register_forward_hook(lambda m, inp, out: captured.setdefault("out", out))
    with torch.no_grad():
        block(x)
        same = F.conv2d(F.pad(pre, (0, 1, 0, 1)), block.conv_0.weight, stride=2)
        symmetric = F.conv2d(pre, block.conv_0.weight, stride=2, padding=1)
    assert torch.allclose(captured["out"], same, atol=1e-6)
    assert not torch.allclose(captured["out"], symmetric, atol=1e-3)


BACKWARD = ["WideResNet", "resnet8", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]


@pytest.mark.parametrize("name", BACKWARD)
def test_training_step_runs(name):
    # In-place activations must not break autograd.
    kwargs = {"depth": 10, "widen_factor": 1} if name == "WideResNet" else {}
    model = build_model(name, 10, dataset="cifar10", **kwargs).train()
    # 16x16 keeps it quick; the autograd graph is the same as at 32x32.
    loss = model(torch.rand(2, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dm_wrn_training_step_runs():
    model = DMWideResNet(10, depth=10, width=1).train()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert model.init_conv.weight.grad is not None
