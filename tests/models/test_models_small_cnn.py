"""The small CNN for 8×8 digit images: shapes, parameter counts, reloading, and that it learns."""

import pytest
import torch
import torch.nn.functional as F

from models import available_models, build_model, load_weights
from models.registry import resolve
from models.small_cnn import DigitsCNN


def _expected_params(channels, num_classes=10, in_channels=1):
    """Counted from the layer formulas, independently of the model code."""
    total, cin = 0, in_channels
    for cout in channels:
        total += 3 * 3 * cin * cout  # bias-free 3×3 convolution (BatchNorm follows)
        total += 2 * cout  # BatchNorm weight and bias
        cin = cout
    return total + cin * num_classes + num_classes  # linear head with bias


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, channels",
    [("digits_cnn", (32, 64, 128)), ("digits_cnn_small", (8, 16, 32))],
)
def test_parameter_count(name, channels):
    model = build_model(name, 10, dataset="digits")
    assert _count(model) == _expected_params(channels)
    assert [m.out_channels for m in (model.conv1, model.conv2, model.conv3)] == list(channels)


def test_parameter_counts_in_numbers():
    # Written out, so the README table and a reader can check them at a glance.
    assert _count(build_model("digits_cnn", 10)) == 94_186
    assert _count(build_model("digits_cnn_small", 10)) == 6_274


def test_width_scales_the_channels():
    model = build_model("digits_cnn", 10, width=0.5)
    assert _count(model) == _expected_params((16, 32, 64))
    with pytest.raises(ValueError, match="width"):
        DigitsCNN(10, width=0)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_small"])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_forward_returns_logits(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, num_classes)
    assert torch.isfinite(out).all()


def test_input_gradient_flows():
    # Adversarial training differentiates the loss with respect to the input image.
    model = build_model("digits_cnn", 10).eval()
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_reloads_strictly_from_a_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("digits_cnn_small", 10)
    model.train()
    model(torch.rand(16, 1, 8, 8))  # moves the BatchNorm running statistics off their defaults
    path = tmp_path / "digits_cnn_small.pt"
    torch.save(model.state_dict(), path)

    torch.manual_seed(1)
    twin = build_model("digits_cnn_small", 10)
    load_weights(twin, path)
    for key, value in model.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), twin.eval()(x))


def test_wrong_width_checkpoint_is_refused(tmp_path):
    from models import CheckpointMismatchError

    path = tmp_path / "big.pt"
    torch.save(build_model("digits_cnn", 10).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_weights(build_model("digits_cnn_small", 10), path)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_small"])
def test_it_can_learn(name):
    # Memorising random labels is a harder task than real digits; a falling
    # training loss shows that gradients reach every layer and SGD can use them.
    torch.manual_seed(0)
    model = build_model(name, 10)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # still in train mode: BatchNorm uses the batch statistics
        last = F.cross_entropy(model(x), y).item()
    assert last < 0.75 * first


def test_registry():
    assert {"digits_cnn", "digits_cnn_small"} <= set(available_models())
    assert available_models("digits") == ["digits_cnn", "digits_cnn_plain", "digits_cnn_small"]
    plain = build_model("digits_cnn_plain", 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    model = build_model("digits_cnn", 10, dataset="digits")
    assert isinstance(model, DigitsCNN) and model.arch_name == "digits_cnn"
    entry = resolve("digits_cnn_small")
    assert entry.input_size == (1, 8, 8) and entry.default_num_classes == 10
    assert entry.datasets == ("digits",)
    assert isinstance(build_model("digits_cnn_small"), DigitsCNN)  # num_classes defaults to 10


def test_summary_describes_the_family():
    from models.summary import markdown_table

    table = markdown_table()
    assert "| `digits_cnn` | digits | 1×8×8 in [0, 1]" in table
    assert "94,186 (10)" in table and "6,274 (10)" in table
