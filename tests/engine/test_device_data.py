"""The device-resident CIFAR loader: torchvision's crop-and-flip distribution, epochs, shares."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chi2_contingency, chisquare
from torchvision import transforms

from engine.data import DeviceBatches, global_batch_sizes, set_epoch
from engine.errors import UserError

SIDE, PADDING = 32, 4


def coordinate_image() -> np.ndarray:
    """Pixel (r, c) holds (r + 1, c + 1, 255): any crop of it says where it was cut from."""
    rows, columns = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    return np.stack([rows + 1, columns + 1, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def crop_of(output: np.ndarray):
    """(top, left, flipped) of one HWC crop of `coordinate_image`, read off its centre pixels
    (rows and columns 4..27 of a 32 crop of the 4-padded image always lie inside the image)."""
    row, column = 16, 16
    r, c = int(output[row, column, 0]) - 1, int(output[row, column, 1]) - 1
    flipped = int(output[row, column + 1, 1]) - 1 < c
    top = r - row + PADDING
    left = c - (SIDE - 1 - column) + PADDING if flipped else c - column + PADDING
    return top, left, flipped


def torchvision_crops(count: int):
    pipeline = transforms.Compose([transforms.RandomCrop(SIDE, padding=PADDING), transforms.RandomHorizontalFlip()])
    image = Image.fromarray(coordinate_image())
    torch.manual_seed(0)
    return [crop_of(np.asarray(pipeline(image))) for _ in range(count)]


def device_crops(count: int, epoch: int = 1):
    images = np.repeat(coordinate_image()[None], count, axis=0)
    loader = DeviceBatches(images, np.zeros(count, dtype=np.int64), batch_size=500, device=torch.device("cpu"), seed=3)
    set_epoch(loader, epoch)
    return [crop_of(image.permute(1, 2, 0).numpy()) for batch, _ in loader for image in batch]


def test_crop_reader_reads_known_crops():
    padded = np.pad(coordinate_image(), ((PADDING, PADDING), (PADDING, PADDING), (0, 0)))
    for top, left in ((0, 0), (8, 8), (3, 6)):
        crop = padded[top : top + SIDE, left : left + SIDE]
        assert crop_of(crop) == (top, left, False)
        assert crop_of(crop[:, ::-1]) == (top, left, True)


def test_device_crops_and_flips_follow_torchvisions_distribution():
    count = 3000
    theirs, ours = torchvision_crops(count), device_crops(count)
    for position, name in ((0, "top"), (1, "left")):
        their_counts = np.bincount([crop[position] for crop in theirs], minlength=9)
        our_counts = np.bincount([crop[position] for crop in ours], minlength=9)
        assert len(our_counts) == len(their_counts) == 9, name  # offsets 0..8, nothing outside
        assert chisquare(our_counts).pvalue > 1e-3, (name, our_counts)  # uniform over the nine offsets
        assert chi2_contingency([their_counts, our_counts]).pvalue > 1e-3, (name, their_counts, our_counts)
    their_flips, our_flips = sum(c[2] for c in theirs), sum(c[2] for c in ours)
    assert chi2_contingency([[their_flips, count - their_flips], [our_flips, count - our_flips]]).pvalue > 1e-3
    assert abs(our_flips / count - 0.5) < 0.03
    # Top, left and flip are drawn independently of one another.
    joint = np.zeros((9, 9))
    for top, left, _ in ours:
        joint[top, left] += 1
    assert chi2_contingency(joint).pvalue > 1e-3


def dataset(count=23):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, SIDE, SIDE, 3), dtype=np.uint8), rng.integers(0, 10, count)


def collect(loader, epoch):
    set_epoch(loader, epoch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_every_image_once_per_epoch_in_an_order_set_by_seed_and_epoch():
    images, labels = dataset()
    loader = DeviceBatches(images, labels, batch_size=5, device=torch.device("cpu"), seed=1, augment=False)
    assert len(loader) == 5
    first = collect(loader, 1)
    assert [len(batch[1]) for batch in first] == [5, 5, 5, 5, 3]
    seen = torch.cat([batch[0] for batch in first]).permute(0, 2, 3, 1).numpy()
    order = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in seen]
    assert sorted(order) == list(range(23))
    assert torch.equal(torch.cat([batch[1] for batch in first]), torch.as_tensor(labels[order]))
    again, other = collect(loader, 1), collect(loader, 2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    assert first[0][0].dtype == torch.uint8 and first[0][0].shape == (5, 3, SIDE, SIDE)


def test_processes_take_contiguous_shares_of_one_processes_batches():
    images, labels = dataset()
    single = collect(DeviceBatches(images, labels, batch_size=6, device=torch.device("cpu"), seed=4), 2)
    shares = [
        collect(
            DeviceBatches(images, labels, batch_size=6, device=torch.device("cpu"), seed=4, rank=r, world_size=3), 2
        )
        for r in range(3)
    ]
    assert len(single) == 4 and all(len(share) == 4 for share in shares)
    sizes = global_batch_sizes(
        DeviceBatches(images, labels, batch_size=6, device=torch.device("cpu"), seed=4, rank=1, world_size=3)
    )
    assert sizes == [len(batch[1]) for batch in single] == [6, 6, 6, 5]
    for number, (images_one, labels_one) in enumerate(single):
        assert torch.equal(torch.cat([share[number][0] for share in shares]), images_one)
        assert torch.equal(torch.cat([share[number][1] for share in shares]), labels_one)


def test_drop_last_and_bad_inputs():
    images, labels = dataset()
    assert len(DeviceBatches(images, labels, batch_size=5, device=torch.device("cpu"), seed=0, drop_last=True)) == 4
    with pytest.raises(UserError, match="must divide by the 3 processes"):
        DeviceBatches(images, labels, batch_size=5, device=torch.device("cpu"), seed=0, world_size=3)
    with pytest.raises(UserError, match="uint8 N x H x W x C"):
        DeviceBatches(images.astype(np.float32), labels, batch_size=5, device=torch.device("cpu"), seed=0)
    with pytest.raises(UserError, match="23 images but 22 labels"):
        DeviceBatches(images, labels[:22], batch_size=5, device=torch.device("cpu"), seed=0)
