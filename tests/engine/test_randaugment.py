"""MLKD's strong view (engine/data/randaugment.py): its operation table and Cutout as its authors' code reads, and the
two-view pipeline of the CIFAR and ImageNet training sets and of a distillation run's loader."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import build_train_set
from engine.data.randaugment import CUTOUT_FILL, OPERATIONS, FixMatchRandAugment, cutout
from engine.data.transforms import AugmentedViews, training_transform


def test_the_operations_are_the_authors_list_in_its_order():
    # Jin-Ying/Multi-Level-Logit-Distillation mdistiller/dataset/cifar100.py augment_list (5ee473f)
    assert OPERATIONS == [
        ("AutoContrast", 0, 1),
        ("Brightness", 0.05, 0.95),
        ("Color", 0.05, 0.95),
        ("Contrast", 0.05, 0.95),
        ("Equalize", 0, 1),
        ("Identity", 0, 1),
        ("Posterize", 4, 8),
        ("Rotate", -30, 30),
        ("Sharpness", 0.05, 0.95),
        ("ShearX", -0.3, 0.3),
        ("ShearY", -0.3, 0.3),
        ("Solarize", 0, 256),
        ("TranslateX", -0.3, 0.3),
        ("TranslateY", -0.3, 0.3),
    ]


def test_their_cutout_centre_is_numpys_uniform_with_one_argument_the_low_end():
    # np.random.uniform(w) is uniform(low=w, high=1): the centre lies in [1, w], never near the left or top edge
    draws = np.random.RandomState(0).uniform(32, size=10_000)  # the legacy generator np.random.uniform draws from
    assert 1.0 <= draws.min() < 1.1 and 31.9 < draws.max() <= 32.0


def test_cutout_by_hand():
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    # side 0.25 * 32 = 8, centre (20, 10): corner (int(16), int(6)), to (24, 14), both ends filled (PIL)
    out = np.asarray(cutout(image, 0.25, (20.0, 10.0)))
    filled = (out == np.array(CUTOUT_FILL)).all(axis=2)
    expected = np.zeros((32, 32), dtype=bool)
    expected[6:15, 16:25] = True
    assert (filled == expected).all()
    assert np.asarray(image).sum() == 0  # the input is left as it was
    assert cutout(image, 0.0, (5.0, 5.0)) is image


def test_the_strong_view_is_seeded_by_torch_and_changes_the_image():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(3)
    first = np.asarray(FixMatchRandAugment(2)(image))
    torch.manual_seed(3)
    again = np.asarray(FixMatchRandAugment(2)(image))
    assert (first == again).all() and first.shape == (32, 32, 3)
    torch.manual_seed(4)
    assert not (np.asarray(FixMatchRandAugment(2)(image)) == first).all()


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
def test_randaugment_gives_a_weak_and_a_strong_view(dataset):
    transform = training_transform(dataset, "randaugment", normalize=True)
    assert isinstance(transform, AugmentedViews) and transform.count == 1
    assert "FixMatchRandAugment" in repr(transform.augmented) and "FixMatchRandAugment" not in repr(transform.basic)
    size = 32 if dataset == "cifar100" else 224
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (size + 8, size + 8, 3), dtype=np.uint8))
    weak, strong = transform(image)
    assert weak.shape == strong.shape == (3, size, size)


def test_the_cifar_training_set_yields_both_views(cifar100_root):
    data = build_train_set("cifar100", cifar100_root, augment="randaugment", verify_checksum=False, normalize=True)
    torch.manual_seed(0)
    (weak, strong), label = data[0]
    assert weak.shape == strong.shape == (3, 32, 32) and isinstance(label, int)
    assert not torch.equal(weak, strong)
