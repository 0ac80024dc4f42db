"""Input normalisation attached to a model (models/preprocess.py): the logits of Normalize followed by
the plain model, the plain model's state dict, and kept by deep copies, moves and torch.compile."""

import copy

import pytest
import torch

from adv_training.awp import AdversarialWeightPerturbation
from engine.errors import UserError
from models import MEAN_STD, Normalize, attach_preprocessing, attached_preprocessing, build_model, preprocessing


def tiny_wrn(seed=0):
    torch.manual_seed(seed)
    return build_model("WideResNet", 10, dataset="cifar10", depth=10, widen_factor=1).eval()


@pytest.fixture
def pair():
    plain, normalised = tiny_wrn(), tiny_wrn()
    attach_preprocessing(normalised, "meanstd", "cifar10")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return plain, normalised, x


def test_meanstd_gives_the_logits_of_normalize_then_the_plain_model(pair):
    plain, normalised, x = pair
    expected = plain(Normalize(*MEAN_STD["cifar10"])(x))
    torch.testing.assert_close(normalised(x), expected, rtol=0, atol=0)
    assert not torch.allclose(plain(x), expected)  # the normalisation does change the logits
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised(x), plain((x - mean) / std))


def test_the_state_dict_keeps_the_plain_models_keys_and_loads_into_it(pair):
    plain, normalised, x = pair
    assert list(normalised.state_dict()) == list(plain.state_dict())
    fresh = tiny_wrn(seed=5)
    fresh.load_state_dict(normalised.state_dict())  # strict: a plain architecture state dict
    torch.testing.assert_close(fresh(preprocessing("meanstd", "cifar10")(x)), normalised(x))
    assert attached_preprocessing(normalised) is not None and attached_preprocessing(plain) is None


def test_deep_copies_awp_proxy_and_moves_keep_the_normalisation(pair):
    plain, normalised, x = pair
    copied = copy.deepcopy(normalised)
    torch.testing.assert_close(copied(x), normalised(x), rtol=0, atol=0)
    copied.fc.bias.data.add_(1.0)  # the copy's hook reads the copy, not the original
    assert not torch.allclose(copied(x), normalised(x))
    proxy = AdversarialWeightPerturbation(normalised, gamma=0.01).proxy
    torch.testing.assert_close(proxy(x), normalised(x), rtol=0, atol=0)
    assert attached_preprocessing(copy.deepcopy(normalised).double()).std.dtype == torch.float64  # moves with .to()


def test_a_compiled_model_runs_the_hook():
    model = attach_preprocessing(tiny_wrn(), "meanstd", "cifar100")
    x = torch.rand(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager")  # dynamo traces the hook; no compiler needed
    torch.testing.assert_close(compiled(x), model(x))
    torch.testing.assert_close(model(x), tiny_wrn()(preprocessing("meanstd", "cifar100")(x)))


def test_01_leaves_the_model_alone_and_a_second_attachment_or_unknown_dataset_is_refused():
    model = tiny_wrn()
    hooks = dict(model._forward_pre_hooks)
    assert attach_preprocessing(model, "01", "digits") is model and model._forward_pre_hooks == hooks
    attach_preprocessing(model, "meanstd", "cifar10")
    with pytest.raises(ValueError, match="once"):
        attach_preprocessing(model, "meanstd", "cifar10")
    with pytest.raises(UserError, match="no statistics for digits"):
        attach_preprocessing(tiny_wrn(), "meanstd", "digits")
