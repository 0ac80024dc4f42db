"""Generated data: .npz parts written here in Wang et al.'s format, prepared, memory-mapped and mixed."""

import hashlib
import io
import json
import math
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from adv_training.generated import (
    BatchKey,
    MixedBatches,
    MixedBatchSampler,
    make_mixed_loader,
    open_generated,
    prepare_generated,
)
from adv_training.generated.store import IMAGES, LABELS, MANIFEST
from adv_training.prepare_generated import main as prepare_main
from engine.data import (
    as_float_images,
    crop_flip,
    draw_crop_flip,
    draw_rotations,
    global_batch_sizes,
    keyed_generator,
    rotate_nearest,
    set_epoch,
)
from engine.errors import UserError


def write_part(path, count, seed, num_classes=10, *, compressed=False, image=None, label=None):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8) if image is None else image
    label = rng.integers(0, num_classes, count) if label is None else label
    (np.savez_compressed if compressed else np.savez)(path, image=image, label=label)
    return image, label


@pytest.fixture
def parts(tmp_path):
    first = write_part(tmp_path / "20m_part1.npz", 300, 1)
    second = write_part(tmp_path / "20m_part2.npz", 200, 2, compressed=True)
    return [tmp_path / "20m_part1.npz", tmp_path / "20m_part2.npz"], first, second


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- preparing -----------------------------------------------------------------------------


def test_prepared_folder_holds_the_parts_in_order_with_a_matching_manifest(parts, tmp_path):
    paths, (images1, labels1), (images2, labels2) = parts
    out = tmp_path / "prepared"
    manifest = prepare_generated(paths, out, 10, chunk_images=64, show_progress=False)
    images, labels = np.load(out / IMAGES), np.load(out / LABELS)
    assert np.array_equal(images, np.concatenate([images1, images2]))
    assert np.array_equal(labels, np.concatenate([labels1, labels2])) and labels.dtype == np.uint8
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["count"] == 500 and manifest["num_classes"] == 10
    assert manifest["class_counts"] == np.bincount(labels, minlength=10).tolist()
    assert manifest["images"]["sha256"] == sha256(out / IMAGES)
    assert manifest["labels"]["sha256"] == sha256(out / LABELS)
    assert manifest["images"]["bytes"] == (out / IMAGES).stat().st_size
    assert [(s["file"], s["count"], s["sha256"]) for s in manifest["sources"]] == [
        ("20m_part1.npz", 300, sha256(paths[0])),
        ("20m_part2.npz", 200, sha256(paths[1])),
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([IMAGES, LABELS, MANIFEST])  # no temporaries

    other = prepare_generated(paths, tmp_path / "other", 10, chunk_images=7, show_progress=False)
    assert other["images"]["sha256"] == manifest["images"]["sha256"]  # the chunk size changes nothing


def test_preparing_holds_a_chunk_of_images_in_memory_not_a_part(tmp_path):
    def peak_bytes(count):
        write_part(tmp_path / f"{count}.npz", count, 3)
        tracemalloc.start()
        try:
            prepare_generated(
                [tmp_path / f"{count}.npz"], tmp_path / f"out{count}", 10, chunk_images=128, show_progress=False
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(2000), peak_bytes(8000)  # 6 MB and 25 MB of images
    assert large < 1.1 * small and large < 8000 * 3072 / 4, (small, large)


def test_opened_images_are_a_read_only_memory_map(parts, tmp_path):
    paths, (images1, _), _ = parts
    prepare_generated(paths, tmp_path / "out", 10, show_progress=False)
    generated = open_generated(tmp_path / "out", 10, verify_hashes=True)
    assert isinstance(generated.images, np.memmap) and not generated.images.flags.writeable
    assert len(generated) == 500 and np.array_equal(generated.images[:300], images1)
    carried = pickle.dumps(generated)  # as to a DataLoader worker started by spawn
    assert len(carried) < 500 * 3072 / 10  # the folder travels, not the images
    reopened = pickle.loads(carried)
    assert isinstance(reopened.images, np.memmap) and np.array_equal(reopened.images, generated.images)
    assert np.array_equal(reopened.labels, generated.labels) and reopened.manifest == generated.manifest


def test_the_command_line_explains_the_layout_and_prepares(parts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("N x 32 x 32 x 3 uint8", "label", "20m_part1.npz", "memory map", MANIFEST, "154 GB"):
        assert words in text, words
    paths = [str(p) for p in parts[0]]
    assert prepare_main([*paths, "--out", str(tmp_path / "cli"), "--dataset", "cifar10", "--quiet"]) == 0
    assert "wrote 500 images of 10 classes" in capsys.readouterr().out
    assert prepare_main([*paths, "--out", str(tmp_path / "cli"), "--dataset", "cifar10", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "already holds a prepared set" in error and error.count("\n") == 1
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)  # an unwritable --out: one line, not a traceback
    try:
        code = prepare_main([*paths, "--out", str(tmp_path / "locked" / "out"), "--dataset", "cifar10", "--quiet"])
    finally:
        (tmp_path / "locked").chmod(0o700)
    error = capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anyway
        assert code == 2 and error.startswith("error: ") and error.count("\n") == 1, error


def truncated_images_npz(path, claimed, present):
    """An .npz whose 'image' header claims ``claimed`` images and whose data holds ``present``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (claimed, 32, 32, 3)}
    )
    buffer.write(bytes(present * 3072))
    labels = io.BytesIO()
    np.lib.format.write_array(labels, np.zeros(claimed, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", buffer.getvalue())
        archive.writestr("label.npy", labels.getvalue())


def bad_part(kind, path):
    if kind == "shape":
        write_part(path, 4, 0, image=np.zeros((4, 3, 32, 32), dtype=np.uint8))
    elif kind == "dtype":
        write_part(path, 4, 0, image=np.zeros((4, 32, 32, 3), dtype=np.float32))
    elif kind == "labels out of range":
        write_part(path, 4, 0, label=np.array([0, 3, 10, 2]))
    elif kind == "negative label":
        write_part(path, 4, 0, label=np.array([0, -1, 1, 2]))
    elif kind == "label count":
        write_part(path, 4, 0, label=np.array([0, 1, 2]))
    elif kind == "float labels":
        write_part(path, 4, 0, label=np.array([0.0, 1.0, 2.0, 3.0]))
    elif kind == "no label":
        np.savez(path, image=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    elif kind == "truncated file":
        write_part(path, 40, 0)
        path.write_bytes(path.read_bytes()[:-5000])
    elif kind == "truncated images":
        truncated_images_npz(path, claimed=40, present=25)
    elif kind == "not an npz":
        path.write_text("hello")
    elif kind == "missing":
        pass


BAD_PARTS = {
    "shape": "'image' has shape (4, 3, 32, 32); expected (N, 32, 32, 3)",
    "dtype": "'image' has dtype float32; expected uint8",
    "labels out of range": "labels range over 0..10, outside 0..9",
    "negative label": "labels range over -1..2, outside 0..9",
    "label count": "expected 4 integers, one per image",
    "float labels": "expected 4 integers, one per image",
    "no label": "holds no 'label' array (found: image)",
    "truncated file": "not a readable .npz archive",
    "truncated images": "'image' holds 25 of the 40 images its header declares",
    "not an npz": "not a readable .npz archive",
    "missing": "not found",
}


@pytest.mark.parametrize("kind", list(BAD_PARTS))
def test_a_bad_part_is_one_clear_error_and_nothing_is_left_behind(kind, parts, tmp_path):
    bad = tmp_path / "bad.npz"
    bad_part(kind, bad)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=BAD_PARTS[kind].replace("(", r"\(").replace(")", r"\)")):
        prepare_generated([parts[0][0], bad], out, 10, show_progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_preparing_refuses_no_part_a_repeated_part_and_a_prepared_folder(parts, tmp_path):
    paths = parts[0]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="is a file; give a folder"):
        prepare_generated(paths, tmp_path / "a_file", 10, show_progress=False)
    with pytest.raises(UserError, match="no generated-data part"):
        prepare_generated([], tmp_path / "out", 10, show_progress=False)
    with pytest.raises(UserError, match="given twice"):
        prepare_generated([paths[0], paths[0]], tmp_path / "out", 10, show_progress=False)
    prepare_generated(paths, tmp_path / "out", 10, show_progress=False)
    with pytest.raises(UserError, match="already holds a prepared set"):
        prepare_generated(paths, tmp_path / "out", 10, show_progress=False)


def test_a_folder_that_does_not_match_its_manifest_is_refused(parts, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not found: prepare Wang et al.'s .npz files first"):
        open_generated(out, 10)
    out.mkdir()
    with pytest.raises(UserError, match="holds no manifest.json"):
        open_generated(out, 10)
    prepare_generated(parts[0], out, 10, show_progress=False)
    with pytest.raises(UserError, match="has 10 classes and this run's dataset 100"):
        open_generated(out, 100)
    images = (out / IMAGES).read_bytes()
    (out / IMAGES).write_bytes(images[:-3072])
    with pytest.raises(
        UserError,
        match=r"images.npy does not match manifest.json \(1536128 bytes expected, it has "
        r"1533056\)",
    ):
        open_generated(out, 10)
    flipped = bytearray(images)
    flipped[-1] ^= 1
    (out / IMAGES).write_bytes(bytes(flipped))
    open_generated(out, 10)  # same size: only the hash can tell
    with pytest.raises(UserError, match="does not match the sha256"):
        open_generated(out, 10, verify_hashes=True)
    (out / LABELS).unlink()
    with pytest.raises(UserError, match="labels.npy does not match manifest.json .* it is missing"):
        open_generated(out, 10)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["images"]["bytes"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not a readable manifest"):
        open_generated(out, 10)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not a readable manifest"):
        open_generated(out, 10)


# --- mixing --------------------------------------------------------------------------------


def sampler(num_real=100, num_generated=1000, batch_size=20, fraction=0.7, batches=5, seed=0, **kwargs):
    return MixedBatchSampler(
        num_real,
        num_generated,
        batch_size=batch_size,
        unsup_fraction=fraction,
        epoch_batches=batches,
        seed=seed,
        **kwargs,
    )


def epoch_batches(mixer, epoch):
    mixer.set_epoch(epoch)
    return [key.indices for key in mixer]


@pytest.mark.parametrize(
    "batch_size, fraction, generated", [(20, 0.7, 14), (10, 0.75, 7), (512, 0.7, 358), (2048, 0.8, 1638), (16, 0.0, 0)]
)
def test_each_batch_holds_the_floor_of_the_fraction_in_generated_images(batch_size, fraction, generated):
    num_real = 10_000
    for batch in epoch_batches(sampler(num_real, 50_000, batch_size, fraction), 1):
        assert len(batch) == batch_size
        assert sum(i >= num_real for i in batch) == generated


def test_real_images_come_from_a_permutation_and_generated_ones_with_replacement():
    mixer = sampler(num_real=50, num_generated=5, batch_size=20, fraction=0.7, batches=10)  # 6 real per batch
    batches = epoch_batches(mixer, 3)
    real = [[i for i in batch if i < 50] for batch in batches]
    assert [len(r) for r in real] == [6] * 8 + [2, 6]  # the 9th batch ends the permutation: 2 real, 18 generated
    first_pass = sum(real[:9], [])
    assert sorted(first_pass) == list(range(50))  # every real image once, none twice
    generated = [i for batch in batches for i in batch if i >= 50]
    assert len(generated) > len(set(generated))  # 142 draws from 5 images: with replacement
    assert set(generated) <= set(range(50, 55))


def test_the_draws_depend_only_on_seed_and_epoch():
    fresh = sampler(seed=4)
    assert epoch_batches(fresh, 7) == epoch_batches(sampler(seed=4), 7)  # a resumed run's epoch 7
    for epoch in range(1, 7):
        epoch_batches(fresh, epoch)
    assert epoch_batches(fresh, 7) == epoch_batches(sampler(seed=4), 7)
    assert epoch_batches(fresh, 8) != epoch_batches(fresh, 7)
    assert epoch_batches(sampler(seed=5), 7) != epoch_batches(fresh, 7)
    assert len(sampler(batches=13)) == 13


@pytest.mark.parametrize("world_size", [2, 4])
def test_processes_share_the_global_batch_of_one_process(world_size):
    one = epoch_batches(sampler(batch_size=20), 2)
    shares = [epoch_batches(sampler(batch_size=20, rank=r, world_size=world_size), 2) for r in range(world_size)]
    for number, batch in enumerate(one):
        assert sum((share[number] for share in shares), []) == batch
        assert all(len(share[number]) == 20 // world_size for share in shares)
    assert global_batch_sizes(sampler(batch_size=20, rank=1, world_size=world_size)) == [len(b) for b in one]
    with pytest.raises(UserError, match="batch size 20 is the global batch.*multiple of 3"):
        sampler(batch_size=20, world_size=3)


def test_bad_mixing_settings_are_refused():
    with pytest.raises(UserError, match=r"unsup_fraction must lie in \[0, 1\)"):
        sampler(fraction=1.0)
    with pytest.raises(UserError, match="got 100 real and 0 generated"):
        sampler(num_generated=0)


def test_crop_flip_is_torchvisions_pad_crop_and_mirror():
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    top, left, flip = (
        torch.tensor([0, 8, 4, 3, 0, 8]),
        torch.tensor([0, 8, 1, 7, 8, 0]),
        torch.tensor([False, True, True, False, True, False]),
    )
    ours = crop_flip(images, top, left, flip)
    for i in range(6):
        image = TF.crop(TF.pad(images[i].permute(2, 0, 1), [4]), int(top[i]), int(left[i]), 32, 32)
        assert torch.equal(ours[i], TF.hflip(image) if flip[i] else image)
    top, left, flip = draw_crop_flip(4000, torch.Generator().manual_seed(0))
    assert set(top.tolist()) == set(left.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean() < 0.55


def test_as_float_images_gives_to_tensors_values():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    assert torch.equal(as_float_images(batch)[0], TF.to_tensor(image))
    floats = torch.rand(2, 3, 4, 4)
    assert as_float_images(floats) is floats


@pytest.fixture
def mixed(parts, tmp_path):
    prepare_generated(parts[0], tmp_path / "out", 10, show_progress=False)
    rng = np.random.default_rng(9)
    real_images = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    real_labels = rng.integers(0, 10, 60).tolist()
    return real_images, real_labels, open_generated(tmp_path / "out", 10)


def test_batches_hold_the_drawn_images_and_their_labels(mixed):
    real_images, real_labels, generated = mixed
    loader = make_mixed_loader(
        real_images, real_labels, generated, batch_size=16, unsup_fraction=0.5, seed=1, epoch_images=60, augment=False
    )
    set_epoch(loader, 2)
    keys = list(loader.sampler)
    batches = list(loader)
    assert len(batches) == math.ceil(60 / 16) == len(keys)
    all_images = np.concatenate([real_images, np.asarray(generated.images)])
    all_labels = np.concatenate([real_labels, generated.labels])
    for key, (images, labels) in zip(keys, batches):
        assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
        assert torch.equal(images, torch.from_numpy(all_images[key.indices]).permute(0, 3, 1, 2))
        assert labels.tolist() == all_labels[key.indices].tolist()


def test_processes_feed_the_model_the_images_of_one_process(mixed):
    real_images, real_labels, generated = mixed

    def batches(rank, world_size, workers=0):
        loader = make_mixed_loader(
            real_images,
            real_labels,
            generated,
            batch_size=16,
            unsup_fraction=0.7,
            seed=3,
            epoch_images=60,
            rank=rank,
            world_size=world_size,
            num_workers=workers,
        )
        set_epoch(loader, 5)
        return list(loader)

    one = batches(0, 1)
    two = [batches(0, 2), batches(1, 2, workers=1)]  # a worker process builds the same batches
    for number, (images, labels) in enumerate(one):
        assert torch.equal(torch.cat([two[0][number][0], two[1][number][0]]), images)
        assert torch.equal(torch.cat([two[0][number][1], two[1][number][1]]), labels)
    again = batches(0, 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again))


def test_a_batch_key_of_real_images_only_reads_no_generated_image(mixed):
    real_images, real_labels, generated = mixed
    dataset = MixedBatches(real_images, real_labels, generated, seed=0, augment=False)
    images, labels = dataset[BatchKey(1, 0, 3, 0, [5, 0, 59])]
    assert torch.equal(images, torch.from_numpy(real_images[[5, 0, 59]]).permute(0, 3, 1, 2))
    assert labels.tolist() == [real_labels[5], real_labels[0], real_labels[59]]


@pytest.mark.parametrize("angle", [0.0, 90.0, -90.0, 7.3, -14.9, 15.0, 3.1])
def test_rotation_is_pils_nearest_neighbour_rotate(angle):
    """What torchvision's RandomRotation does to a PIL image, pixel for pixel up to border cases."""
    images = torch.randint(1, 256, (2, 3, 32, 32), dtype=torch.uint8)  # no zero pixel: the fill shows
    ours = rotate_nearest(images, torch.tensor([angle, angle]))
    for image, rotated in zip(images, ours):
        pil = TF.rotate(Image.fromarray(image.permute(1, 2, 0).numpy()), angle, InterpolationMode.NEAREST, fill=0)
        theirs = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        same = (rotated == theirs).all(dim=0).float().mean().item()
        assert same >= (1.0 if angle % 90 == 0 else 0.99), same
    assert (ours[:, 0] == 0).any() == (angle % 90 != 0)  # corners filled with zeros once rotated off-axis


def test_cifar100_batches_are_rotated_after_crop_and_flip(mixed):
    real_images, real_labels, generated = mixed
    plain = MixedBatches(real_images, real_labels, generated, seed=2)
    rotating = MixedBatches(real_images, real_labels, generated, seed=2, rotate_degrees=15)
    key = BatchKey(3, 1, 8, 2, [0, 5, 70, 300, 59, 12])
    generator = keyed_generator(2, 3, 1)
    top, left, flip = draw_crop_flip(8, generator)
    angles = draw_rotations(8, generator, 15)
    assert angles.abs().max() <= 15 and angles.std() > 0
    cropped, labels = plain[key]
    rotated, same_labels = rotating[key]
    assert torch.equal(labels, same_labels)
    assert torch.equal(rotated, rotate_nearest(cropped, angles[2:8]))
