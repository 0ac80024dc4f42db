"""The strong view of MLKD (Jin et al., CVPR 2023): FixMatch's RandAugment with its Cutout, on PIL images.

As Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/dataset/cifar100.py`` and ``imagenet.py`` build it
(``RandAugment(2, 10)`` after the crop and flip): two operations drawn with replacement from fourteen, each at a
magnitude uniform over its range (the 10 is not used), then always one Cutout. Draws come from torch's RNG (theirs
from Python's and numpy's unseeded ones), so a seed reproduces the views. Not torchvision's RandAugment: the
enhancements only weaken (factors below 1), the magnitudes are random, and no sign is drawn.
"""

from typing import List, Tuple

import torch

CUTOUT_FILL = (125, 123, 114)  # their Cutout's grey, about CIFAR's mean colour


def _affine(image, coefficients: Tuple[float, ...]):
    from PIL import Image  # with torchvision, on first use

    return image.transform(image.size, Image.AFFINE, coefficients)


def _operation(name: str, image, v: float):
    """``name`` applied at magnitude ``v`` (PIL's semantics, as their functions call it)."""
    from PIL import ImageEnhance, ImageOps

    width, height = image.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Identity":
        return image
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(v)
    if name == "Posterize":
        return ImageOps.posterize(image, max(1, int(v)))
    if name == "Rotate":
        return image.rotate(v)
    if name == "Solarize":
        return ImageOps.solarize(image, v)
    if name == "ShearX":
        return _affine(image, (1, v, 0, 0, 1, 0))
    if name == "ShearY":
        return _affine(image, (1, 0, 0, v, 1, 0))
    if name == "TranslateX":
        return _affine(image, (1, 0, v * width, 0, 1, 0))
    if name == "TranslateY":
        return _affine(image, (1, 0, 0, 0, 1, v * height))
    raise ValueError(f"unknown operation {name!r}")


# (operation, low, high): their augment_list, in its order (the draw picks by index).
OPERATIONS: List[Tuple[str, float, float]] = [
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


def cutout(image, fraction: float, centre: Tuple[float, float]):
    """Their CutoutAbs: a square of side ``fraction`` x width filled with `CUTOUT_FILL`. ``centre`` is the drawn
    centre; they draw it with ``np.random.uniform(w)``, whose one argument is the *low* end (high stays 1), so it
    lies in (1, w], and the square starts ``side / 2`` before it, clipped at 0. PIL fills both ends inclusive."""
    from PIL import ImageDraw

    if fraction <= 0:
        return image
    width, height = image.size
    side = fraction * width
    x0, y0 = int(max(0.0, centre[0] - side / 2.0)), int(max(0.0, centre[1] - side / 2.0))
    image = image.copy()
    ImageDraw.Draw(image).rectangle((x0, y0, min(width, x0 + side), min(height, y0 + side)), CUTOUT_FILL)
    return image


class FixMatchRandAugment:
    """``count`` random operations of `OPERATIONS` at uniform magnitudes, then `cutout` of up to half the side."""

    def __init__(self, count: int = 2):
        self.count = count

    def __call__(self, image):
        for index in torch.randint(len(OPERATIONS), (self.count,)).tolist():
            name, low, high = OPERATIONS[index]
            image = _operation(name, image, low + float(high - low) * torch.rand(()).item())
        fraction = 0.5 * torch.rand(()).item()
        width, height = image.size
        u, v = torch.rand(2).tolist()
        return cutout(image, fraction, (width + (1 - width) * u, height + (1 - height) * v))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count})"
