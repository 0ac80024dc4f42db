"""The CIFAR crop's padding mode and the rotation after crop and flip (engine/data/transforms.py):
reflect padding gives the crops of a hand-made np.pad(mode="reflect") image, and the rotation is
torchvision's RandomRotation of the cropped and flipped image, with the same draws."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from engine.data import build_train_set
from engine.data.transforms import training_transform
from engine.errors import UserError


def image(seed=0):
    """A 32x32 RGB image with no zero pixel, so that a zero-padded border would show."""
    pixels = np.random.default_rng(seed).integers(1, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels), pixels


def torchvision_draws(degrees=0.0):
    """RandomCrop's (top, left), RandomHorizontalFlip's coin and RandomRotation's angle, in their order."""
    top, left = (int(torch.randint(0, 9, size=(1,)).item()) for _ in range(2))
    flip = bool(torch.rand(1) < 0.5)
    angle = float(torch.empty(1).uniform_(-degrees, degrees).item()) if degrees else None
    return top, left, flip, angle


def hand_made_crop(pixels, top, left, flip, mode):
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)), mode=mode)
    crop = padded[top : top + 32, left : left + 32]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def as_tensor(pixels):
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_crops_pad_the_image_as_np_pad_does(mode):
    transform = training_transform("cifar10", "basic", False, padding_mode=mode)
    picture, pixels = image()
    borders = 0
    for seed in range(12):
        torch.manual_seed(seed)
        ours = transform(picture)
        torch.manual_seed(seed)
        top, left, flip, _ = torchvision_draws()
        expected = hand_made_crop(pixels, top, left, flip, mode)
        assert torch.equal(ours, as_tensor(expected)), (seed, top, left, flip)
        borders += (top, left) != (4, 4)
        assert bool((ours == 0).any()) == (mode == "constant" and (top, left) != (4, 4))
    assert borders > 0


def test_rotation_is_randomrotation_of_the_cropped_and_flipped_image():
    rotating = training_transform("cifar100", "basic", False, rotate_degrees=15)
    picture, pixels = image(1)
    moved = 0
    for seed in range(4):
        torch.manual_seed(seed)
        ours = rotating(picture)
        torch.manual_seed(seed)
        top, left, flip, angle = torchvision_draws(15)
        cropped = Image.fromarray(hand_made_crop(pixels, top, left, flip, "constant"))
        rotated = TF.rotate(cropped, angle, InterpolationMode.NEAREST, fill=0)
        assert ours.shape == (3, 32, 32)
        assert torch.equal(ours, TF.to_tensor(rotated))
        moved += not torch.equal(ours, TF.to_tensor(cropped))  # a small angle may move no pixel
    assert moved > 0


def test_the_two_view_modes_pad_and_rotate_both_views():
    transform = training_transform("cifar10", "cutout", False, padding_mode="reflect", rotate_degrees=10)
    for view in (transform.basic, transform.augmented):
        names = [type(step).__name__ for step in view.transforms]
        assert names[:3] == ["RandomCrop", "RandomHorizontalFlip", "RandomRotation"]
        assert view.transforms[0].padding_mode == "reflect"


def test_the_defaults_are_zero_padding_without_rotation_and_other_datasets_refuse_the_knobs(cifar10_root):
    default = training_transform("cifar10", "basic", False)
    assert default.transforms[0].padding_mode == "constant"
    assert [type(step).__name__ for step in default.transforms] == ["RandomCrop", "RandomHorizontalFlip", "ToTensor"]
    train_set = build_train_set("cifar10", cifar10_root, verify_checksum=False, padding_mode="reflect")
    assert train_set.transform.transforms[0].padding_mode == "reflect"
    for dataset, augment in (("digits", "basic"), ("cifar10", "none")):
        with pytest.raises(UserError, match="act on CIFAR's crops"):
            build_train_set(dataset, cifar10_root, augment=augment, verify_checksum=False, rotate_degrees=15)
    with pytest.raises(ValueError, match="padding_mode"):
        training_transform("cifar10", "basic", False, padding_mode="edge")
