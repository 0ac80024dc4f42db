"""Augmentations: torchvision pipelines per image, and CIFAR crops, flips and rotations of whole
uint8 batches on any device.

Per image (DataLoader workers): ``basic`` is a random 32x32 crop of the 4-pixel zero-padded
image (or reflect-padded, ``padding_mode``) and a random horizontal flip (then, with
``rotate_degrees``, a RandomRotation); ``autoaug`` and ``cutout`` add augmented views (another
crop/flip, then AutoAugment's CIFAR-10 policy with the reference's grey fill, or one 16x16
Cutout hole; ``randaugment``: another crop/flip, then MLKD's FixMatch RandAugment and Cutout,
`engine.data.randaugment`); ImageNet's ``basic`` is RandomResizedCrop(224) and a flip (``randaugment`` adds the
same strong view after its own crop and flip), its test transform
Resize(256) and CenterCrop(224). With ``normalize``, normalisation is the last step of every
view. Every random transform draws from torch's RNG.

Per batch: torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` (and Wang
et al.'s ``RandomRotation``) draw per image; `draw_crop_flip` and `draw_rotations` draw a whole
batch's corners, flips and angles at once from the same distribution, and `crop_flip` applies
them by one gather: on the CPU in the generated-data loader's workers, on the GPU in the
device-resident loader (`engine.data.loaders.DeviceBatches`), which then needs no worker.

The pipelines import torchvision when first built, not with this module: its import takes over
a second (it pulls in ``torch._dynamo``), which ``--help``, ``--print-config`` and a config
error should not wait for.
"""

import hashlib
from typing import Callable, Optional, Tuple

import torch

from .randaugment import FixMatchRandAugment

AUGMENTATIONS = ("none", "basic", "autoaug", "cutout", "randaugment")

# Per-channel (mean, std) of the training images in [0, 1], for the loaders' ``normalize=True`` (the
# distillation runs; models/dm_wide_resnet.py's DEEPMIND_STATS and models/preprocess.py's MEAN_STD
# are the statistics those models were trained with, each under its own name).
# CIFAR-100 and ImageNet: mdistiller's numbers (mdistiller/dataset/cifar100.py, imagenet.py),
# which its released teachers were trained with. CIFAR-10 (mdistiller has none): the usual
# training-set statistics, as in models/dm_wide_resnet.py. (DeepMind's CIFAR-100 numbers in
# that file differ from mdistiller's in the fourth decimal; each model keeps its own.)
NORMALIZE_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Cutout:
    """Zero one ``size`` x ``size`` square of a CHW tensor image, at a random place.

    As in DeVries & Taylor (2017), which the reference code uses: the centre is uniform over
    all pixels and the square is clipped at the borders, so holes near an edge are smaller.
    The centre is drawn from torch's RNG, so seeding torch reproduces the holes.
    """

    def __init__(self, size: int = 16):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        centre_y = int(torch.randint(height, ()))
        centre_x = int(torch.randint(width, ()))
        top, bottom = max(centre_y - self.size // 2, 0), min(centre_y + self.size // 2, height)
        left, right = max(centre_x - self.size // 2, 0), min(centre_x + self.size // 2, width)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class AugmentedViews:
    """Return ``(basic(image), augmented(image), ...)``: the basic view and ``count`` augmented views,
    independent draws of one image (DKL's autoaug runs: one augmented view; DAJAT's: two)."""

    def __init__(self, basic: Callable, augmented: Callable, count: int = 1):
        if count < 1:
            raise ValueError(f"count (augmented views) must be at least 1, got {count}")
        self.basic = basic
        self.augmented = augmented
        self.count = count

    def __call__(self, image):
        return (self.basic(image), *(self.augmented(image) for _ in range(self.count)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(basic={self.basic!r}, augmented={self.augmented!r}, count={self.count})"


PADDING_MODES = ("constant", "reflect")


def _crop_flip(padding_mode: str = "constant", rotate_degrees: float = 0.0) -> list:
    """RandomCrop(32, padding=4, padding_mode) and RandomHorizontalFlip, then RandomRotation(degrees)
    (nearest neighbour, zero fill) when ``rotate_degrees`` > 0."""
    from torchvision import transforms  # on first use (module docstring)

    steps = [transforms.RandomCrop(32, padding=4, padding_mode=padding_mode), transforms.RandomHorizontalFlip()]
    if rotate_degrees > 0:
        steps.append(transforms.RandomRotation(rotate_degrees))
    return steps


def tensor_steps(dataset: str, normalize: bool) -> list:
    """ToTensor, then Normalize with the dataset's statistics when ``normalize``."""
    from torchvision import transforms  # on first use (module docstring)

    if not normalize:
        return [transforms.ToTensor()]
    mean, std = NORMALIZE_STATS[dataset]
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]


def _compose(steps: list) -> Callable:
    from torchvision import transforms  # on first use (module docstring)

    return steps[0] if len(steps) == 1 else transforms.Compose(steps)


def evaluation_transform(dataset: str, normalize: bool) -> Callable:
    resize = imagenet_test_steps() if dataset == "imagenet" else []
    return _compose([*resize, *tensor_steps(dataset, normalize)])


# The reference's AutoAugment (autoaug.py, CIFAR10Policy) fills the areas that rotation, shear
# and translation uncover with grey (128, 128, 128); torchvision fills black unless told.
AUTOAUGMENT_FILL = [128, 128, 128]


def autoaugment_cifar() -> Callable:
    """torchvision's AutoAugment with the CIFAR-10 policy and the reference's grey fill.

    It works on the PIL image, before the conversion to a tensor. The 25 sub-policies and
    their probabilities are the reference's. What still differs from the reference's own
    implementation: it shears with bicubic resampling (torchvision: nearest); it always
    rotates counter-clockwise (torchvision: a random sign); its solarize thresholds are
    linspace(256, 0) (torchvision: linspace(255, 0)); torchvision rounds translations to whole
    pixels; and it draws from Python's unseeded ``random`` (torchvision: torch's RNG, which
    the seed controls).
    """
    from torchvision import transforms  # on first use (module docstring)

    return transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10, fill=AUTOAUGMENT_FILL)


def training_transform(
    dataset: str,
    augment: str,
    normalize: bool,
    *,
    padding_mode: str = "constant",
    rotate_degrees: float = 0.0,
    augmented_views: int = 1,
) -> Callable:
    """The training transform. CIFAR's crops pad by 4 pixels with ``padding_mode`` (constant: zeros;
    reflect: mirrored, without repeating the edge) and, with ``rotate_degrees`` > 0, are then
    rotated by RandomRotation(rotate_degrees), in every view; other datasets take the defaults only.
    autoaug, cutout and randaugment give the basic view and ``augmented_views`` augmented ones."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not 0 <= rotate_degrees <= 180:
        raise ValueError(f"rotate_degrees must lie in [0, 180], got {rotate_degrees}")
    if (padding_mode != "constant" or rotate_degrees > 0) and (
        dataset not in ("cifar10", "cifar100") or augment == "none"
    ):
        raise ValueError(
            f"padding_mode and rotate_degrees act on CIFAR's crops; {dataset} with augment {augment!r} has none"
        )
    if augment == "none" or dataset == "digits":
        return evaluation_transform(dataset, normalize)
    from torchvision import transforms  # on first use (module docstring)

    to_tensor = tensor_steps(dataset, normalize)
    if dataset == "imagenet":
        basic = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *to_tensor])
        if augment != "randaugment":
            return basic
        strong = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), FixMatchRandAugment(2)]
        return AugmentedViews(basic, transforms.Compose([*strong, *to_tensor]), augmented_views)

    def crop_flip() -> list:
        return _crop_flip(padding_mode, rotate_degrees)

    basic = transforms.Compose([*crop_flip(), *to_tensor])
    if augment == "basic":
        return basic
    if augment == "autoaug":
        policy = autoaugment_cifar()
        augmented = transforms.Compose([*crop_flip(), policy, *to_tensor])
    elif augment == "randaugment":  # MLKD's strong view: its own crop and flip, then RandAugment and Cutout
        augmented = transforms.Compose([*crop_flip(), FixMatchRandAugment(2), *to_tensor])
    else:
        # The hole is cut before normalising, so it is black whether or not one normalises.
        augmented = transforms.Compose([*crop_flip(), transforms.ToTensor(), Cutout(16), *to_tensor[1:]])
    return AugmentedViews(basic, augmented, augmented_views)


def imagenet_test_steps() -> list:
    from torchvision import transforms  # on first use (module docstring)

    return [transforms.Resize(256), transforms.CenterCrop(224)]


# --- whole uint8 batches ----------------------------------------------------------------------


def keyed_generator(*keys: int, device="cpu") -> torch.Generator:
    """A generator on ``device`` for the tuple ``keys`` (seed, epoch, ...). The CPU generator keeps
    32 bits of its seed, so the tuple is hashed into them."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=4).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little"))


def draw_crop_flip(count: int, generator: torch.Generator, padding: int = 4) -> Tuple[torch.Tensor, ...]:
    """Per image: the top and left of the crop in the padded image, uniform over
    ``0 .. 2 * padding``, and whether to mirror it (probability 1/2), as torchvision draws them;
    on the generator's device."""
    device = generator.device
    top = torch.randint(2 * padding + 1, (count,), generator=generator, device=device)
    left = torch.randint(2 * padding + 1, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    return top, left, flip


def crop_flip(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    padding: int = 4,
    angles: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``RandomCrop(size, padding)`` then ``RandomHorizontalFlip()`` of a uint8 NHWC batch with the
    drawn corners and flips (`draw_crop_flip`), and with ``angles`` then `rotate_nearest`, all in
    one gather; returns NCHW."""
    count, height, width, _ = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    if angles is None:
        rows = torch.arange(height, device=device).expand(count, height)[:, :, None]  # [count, h, 1]
        columns = torch.arange(width, device=device).expand(count, width)[:, None, :]  # [count, 1, w]
        inside = None
    else:  # the cropped-and-flipped pixel each rotated pixel takes
        rows, columns, inside = _rotation_sources(angles, height, width)
    columns = torch.where(flip[:, None, None], width - 1 - columns, columns)
    batch = torch.arange(count, device=device)[:, None, None]
    out = padded[batch, top[:, None, None] + rows, left[:, None, None] + columns]  # [count, h, w, C]
    if inside is not None:
        out = torch.where(inside[..., None], out, torch.zeros((), dtype=out.dtype, device=device))
    return out.permute(0, 3, 1, 2).contiguous()


def draw_rotations(count: int, generator: torch.Generator, degrees: float) -> torch.Tensor:
    """Per image an angle uniform in [-degrees, degrees], as ``RandomRotation(degrees)`` draws it."""
    return torch.empty(count, dtype=torch.float64, device=generator.device).uniform_(
        -degrees, degrees, generator=generator
    )


def _rotation_sources(angles: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, ...]:
    """For each image and output pixel of a rotation by ``angles`` (degrees, counter-clockwise,
    about the centre): the source row and column (clamped into the image) and whether the
    source lies inside it. PIL's inverse map: output pixel (x, y) takes the input pixel that
    holds M (x + 1/2, y + 1/2) + t."""
    device = angles.device
    theta = -torch.deg2rad(angles.to(torch.float64))
    cos = torch.round(torch.cos(theta) * 1e15)[:, None, None] / 1e15  # PIL rounds the matrix to 15 decimals
    sin = torch.round(torch.sin(theta) * 1e15)[:, None, None] / 1e15
    centre_x, centre_y = width / 2.0, height / 2.0
    shift_x = cos * -centre_x + sin * -centre_y + centre_x
    shift_y = -sin * -centre_x + cos * -centre_y + centre_y
    xs = (torch.arange(width, dtype=torch.float64, device=device) + 0.5)[None, None, :]
    ys = (torch.arange(height, dtype=torch.float64, device=device) + 0.5)[None, :, None]
    source_x = torch.floor(cos * xs + sin * ys + shift_x).long()
    source_y = torch.floor(-sin * xs + cos * ys + shift_y).long()
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    return source_y.clamp(0, height - 1), source_x.clamp(0, width - 1), inside


def rotate_nearest(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image of an NCHW batch counter-clockwise by its angle (degrees) about the
    image centre, nearest neighbour, zero fill: PIL's ``Image.rotate(angle, NEAREST)``, which is
    what ``RandomRotation`` does to the PIL images of Wang et al.'s CIFAR-100 loader. Computed
    in float64 where PIL uses fixed point, so a point falling on a pixel border may pick the
    neighbour."""
    count, _, height, width = images.shape
    rows, columns, inside = _rotation_sources(angles, height, width)
    batch = torch.arange(count, device=images.device)[:, None, None]
    rotated = images.permute(0, 2, 3, 1)[batch, rows, columns]  # [count, h, w, C]
    zero = torch.zeros((), dtype=images.dtype, device=images.device)
    return torch.where(inside[..., None], rotated, zero).permute(0, 3, 1, 2).contiguous()


def as_float_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1] (``x / 255``, the value ``ToTensor`` gives); floats pass."""
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch
