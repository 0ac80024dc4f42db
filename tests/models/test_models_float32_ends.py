"""Every model's stem and head compute in float32 under bf16 autocast; without autocast every model turned to
float64, float16 or bfloat16 computes exactly what its plain architecture does; the state dict is the
architecture's own; no model pools with a kernel whose CUDA backward is nondeterministic."""

import copy
import functools

import pytest
import torch
import torch.nn as nn

from models import build_model
from models.float32_ends import Float32Conv2d, Float32Linear
from models.registry import entries

ALL = entries()
NONDETERMINISTIC_BACKWARDS = (
    "AdaptiveAvgPool2DBackward",
    "AdaptiveMaxPool2DBackward",
    "MaxPool3DWithIndicesBackward",
    "AvgPool3DBackward",
    "AdaptiveAvgPool3DBackward",
)


def _build(entry, device="meta"):
    with torch.device(device):
        return build_model(entry.name, entry.default_num_classes, dataset=entry.datasets[0])


def _input(entry, device, batch=2):
    channels, height, width = entry.input_size
    side = min(height, 64)  # the ImageNet networks pool globally: 64 x 64 runs the same layers as 224 x 224
    return torch.rand(batch, channels, side, side, device=device)


@functools.lru_cache(maxsize=None)
def _smallest_side(entry):
    """The smallest square image side for which ``entry``'s network gives one row of logits (tried on meta)."""
    with torch.device("meta"):
        model = entry.build(entry.default_num_classes, entry.datasets[0]).eval()
    channels, height, _ = entry.input_size
    for side in range(1, height + 1):
        try:
            if model(torch.empty(1, channels, side, side, device="meta")).shape == (1, entry.default_num_classes):
                return side
        except RuntimeError:
            continue
    return height


# Over 3 s a case on one CPU thread (building, copying and converting hundreds of millions of parameters).
SLOW = {"WideResNet70_16", "wrn-70-16-swish", "WideResNet34_20"}
DTYPES = (torch.float64, torch.float16, torch.bfloat16)
CASES = [
    pytest.param(
        entry,
        dtype,
        id=f"{entry.name}-{entry.family}-{str(dtype).removeprefix('torch.')}",
        marks=[pytest.mark.slow] if entry.name in SLOW else [],
    )
    for entry in ALL
    for dtype in DTYPES
]


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.name}-{e.family}")
def test_the_first_convolution_run_and_the_last_linear_layer_are_the_float32_ones(entry):
    model = _build(entry).eval()
    order = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda layer, inputs, output: order.append((layer, output)))
    output = model(_input(entry, "meta"))
    convolutions = [(layer, out) for layer, out in order if isinstance(layer, nn.Conv2d)]
    linears = [(layer, out) for layer, out in order if isinstance(layer, nn.Linear)]
    assert type(convolutions[0][0]) is Float32Conv2d  # the layer that sees the image
    assert type(linears[-1][0]) is Float32Linear and linears[-1][1] is output  # the one that gives the logits
    assert sum(isinstance(m, (Float32Conv2d, Float32Linear)) for m in model.modules()) == 2


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.name}-{e.family}")
def test_the_state_dict_is_the_architectures_own_and_no_pooling_backward_is_nondeterministic(entry):
    model = _build(entry)
    with torch.device("meta"):
        plain = entry.build(entry.default_num_classes, entry.datasets[0])  # the builder alone: no swap
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in plain.state_dict().items()
    ]
    x = _input(entry, "meta").requires_grad_(True)
    seen, stack = set(), [model(x).grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        assert not type(node).__name__.startswith(NONDETERMINISTIC_BACKWARDS), (type(node).__name__, entry.name)
        stack.extend(next_node for next_node, _ in node.next_functions)


@pytest.mark.parametrize("name", ["WideResNet", "wrn_16_2", "MobileNetV2", "digits_cnn"])
def test_under_bf16_autocast_the_stem_sees_the_float32_image_and_the_logits_are_float32(name):
    entry = next(e for e in ALL if e.name == name)
    kwargs = dict(depth=10, widen_factor=1) if name == "WideResNet" else {}
    torch.manual_seed(0)
    model = build_model(name, entry.default_num_classes, dataset=entry.datasets[0], **kwargs).eval()
    stem = next(m for m in model.modules() if isinstance(m, Float32Conv2d))
    seen = {}
    stem.register_forward_hook(lambda layer, inputs, output: seen.update(input=inputs[0], output=output))
    x = _input(entry, "cpu", batch=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        inner = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not stem)
        assert inner(torch.rand(1, inner.in_channels, 8, 8)).dtype == torch.bfloat16  # the rest stays bf16
    assert seen["input"] is x and seen["output"].dtype == torch.float32 and logits.dtype == torch.float32
    with torch.no_grad():
        expected = nn.functional.conv2d(
            x, stem.weight, stem.bias, stem.stride, stem.padding, stem.dilation, stem.groups
        )
    torch.testing.assert_close(seen["output"], expected, rtol=0, atol=0)  # fp32 math, unrounded image


def test_without_autocast_the_float32_layers_compute_what_the_plain_ones_do():
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.Linear(7, 4)
    twin_conv = Float32Conv2d(3, 5, 3, padding=1, bias=True)
    twin_conv.load_state_dict(conv.state_dict())
    twin_linear = Float32Linear(7, 4)
    twin_linear.load_state_dict(linear.state_dict())
    x, features = torch.rand(2, 3, 6, 6), torch.rand(2, 7)
    assert torch.equal(twin_conv(x), conv(x)) and torch.equal(twin_linear(features), linear(features))


@functools.lru_cache(maxsize=1)  # the cases of one entry run one after the other: one float32 build for the three
def _float32_model(entry):
    torch.manual_seed(0)
    return build_model(entry.name, entry.default_num_classes, dataset=entry.datasets[0]).eval()


@pytest.mark.parametrize("entry, dtype", CASES)
def test_without_autocast_every_model_in_float64_float16_or_bfloat16_computes_what_its_plain_architecture_does(
    entry, dtype
):
    model = copy.deepcopy(_float32_model(entry)).to(dtype)  # what a user's model.double() / .half() gives
    with torch.device("meta"):
        plain = entry.build(entry.default_num_classes, entry.datasets[0])  # the builder alone: no swap
    assert not any(isinstance(m, (Float32Conv2d, Float32Linear)) for m in plain.modules())
    plain = plain.to_empty(device="cpu").to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    for name, buffer in model.named_buffers():  # the non-persistent ones too (normalisation constants)
        plain.get_buffer(name).copy_(buffer)
    side = _smallest_side(entry)
    x = torch.rand(2, entry.input_size[0], side, side, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        expected = plain(x)
        output = model(x)
    assert expected.dtype == dtype and expected.shape == (2, entry.default_num_classes)
    assert torch.isfinite(expected).all()
    assert output.dtype == dtype and torch.equal(output, expected)
