"""CIFAR augmentation on whole uint8 batches, on whatever device the batch lives on.

torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` (and Wang et al.'s
``RandomRotation``) transform one PIL image at a time in DataLoader workers. Here the
corners, flips and angles of a whole batch are drawn at once (`draw_crop_flip`,
`draw_rotations`) with the distribution torchvision draws them from, and applied by one
gather (`crop_flip`): on the CPU by the generated-data loader's workers, on the GPU by the
device-resident loader (`engine.device_data`), which then needs no worker at all.
"""
import hashlib
from typing import Optional, Tuple

import torch


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


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int = 4, angles: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    return torch.empty(count, dtype=torch.float64, device=generator.device).uniform_(-degrees, degrees,
                                                                                      generator=generator)


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
