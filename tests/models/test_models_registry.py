import pytest
import torch
import torchvision

from models import available_models, build_model
from models.cifar_resnet import CifarResNetV2
from models.registry import entries, resolve

AT_NAMES = {
    "WideResNet34_10",
    "ResNet18_cifar",
    "WideResNet34",
    "WideResNet28",
    "WideResNet34_20",
    "WideResNet28_10",
    "WideResNet70_16",
    "WideResNet",
    "wrn-28-10-swish",
    "wrn-70-16-swish",
    "PreActResNet18",
}
KD_NAMES = {
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet18",
    "ResNet50",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
}
IMAGENET_NAMES = {"ResNet18", "ResNet34", "ResNet50", "MobileNetV1", "ResNeXt101_32x4d"}
DIGITS_NAMES = {"digits_cnn", "digits_cnn_small", "digits_cnn_plain"}


def test_every_required_name_is_registered():
    assert AT_NAMES | KD_NAMES | IMAGENET_NAMES | DIGITS_NAMES == set(available_models())
    assert set(available_models("cifar-at")) == AT_NAMES
    assert set(available_models("cifar-kd")) == KD_NAMES
    assert set(available_models("imagenet")) == IMAGENET_NAMES
    assert set(available_models("digits")) == DIGITS_NAMES


def test_aliases_share_one_constructor():
    assert resolve("WideResNet34").builder is resolve("WideResNet34_10").builder
    assert resolve("WideResNet28").builder is resolve("WideResNet28_10").builder


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError) as err:
        build_model("WideResNet34-10", 10)
    assert "WideResNet34_10" in str(err.value)
    with pytest.raises(ValueError, match="resnet32x4"):
        build_model("resnet32X4", 100)


@pytest.mark.parametrize("name", ["ResNet18", "ResNet50"])
def test_ambiguous_name_needs_dataset(name):
    with pytest.raises(ValueError) as err:
        build_model(name, 100)
    message = str(err.value)
    assert 'dataset="imagenet"' in message and 'dataset="cifar100"' in message


def test_dataset_picks_the_family():
    with torch.device("meta"):
        # torchvision's class, subclassed only to add the feature methods (models/imagenet.py)
        assert isinstance(build_model("ResNet50", 1000, dataset="imagenet"), torchvision.models.ResNet)
        assert type(build_model("ResNet18", 100, dataset="cifar100")) is CifarResNetV2
        assert type(build_model("ResNet18", 10, dataset="CIFAR-10")) is CifarResNetV2
    with pytest.raises(ValueError, match="no variant"):
        build_model("ResNet18", 10, dataset="svhn")


@pytest.mark.parametrize("entry", entries(), ids=lambda e: f"{e.name}-{e.family}")
def test_dataset_keyword_accepted_for_every_name(entry):
    with torch.device("meta"):
        model = build_model(entry.name, entry.default_num_classes, dataset=entry.datasets[0])
    assert model.arch_name == entry.name


def test_registering_twice_in_one_family_is_refused():
    from models.registry import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet8", family="cifar-kd")(lambda num_classes: None)


def test_readme_table_matches_the_registry():
    from pathlib import Path

    from models.summary import markdown_table

    page = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    assert markdown_table() in page.read_text(encoding="utf-8"), (
        "run `python -m models.summary` and update docs/models.md"
    )
