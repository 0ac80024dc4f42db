"""Long-tailed pieces of the engine: image-list datasets (ImageNet-LT's format) over a small tree of
PNG files, the long-tailed subsample's profile, and shot-wise accuracy against hand counts."""

import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image

import engine.metrics
from engine.data import ImageListDataset, class_counts, long_tailed_indices, long_tailed_profile
from engine.errors import UserError
from engine.metrics import SHOT_BINS, shot_accuracy, shot_groups, topk_accuracy

LINE_FORMAT = "`relative/path/to/image.JPEG label` (a path, a space, an integer label)"


def listed_images(root: Path, split: str):
    """Every image of ``root/split`` as a path relative to ``root``, by class folder (sorted)."""
    folders = sorted(os.listdir(root / split))
    return [[f"{split}/{folder}/{name}" for name in sorted(os.listdir(root / split / folder))] for folder in folders]


def write_list(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def user_error(build) -> str:
    """The message of the one UserError ``build()`` raises, checked to print without a chained traceback."""
    with pytest.raises(UserError) as raised:
        build()
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__
    return str(raised.value)


# --- ImageListDataset ----------------------------------------------------------------------


def test_dataset_reads_the_listed_images_with_the_listed_labels(imagenet_root, tmp_path):
    # Labels in the reverse of the folders' sorted order and lines interleaved across classes, so that
    # neither ImageFolder's labelling nor the folder order could pass for the list's.
    by_class = listed_images(imagenet_root, "train")
    entries = [(by_class[folder][i], 2 - folder) for i in range(4) for folder in range(3)]
    list_file = write_list(tmp_path / "train.txt", [f"{path} {label}" for path, label in entries] + ["", "  "])

    dataset = ImageListDataset(imagenet_root, list_file, num_classes=3)

    assert len(dataset) == 12
    assert dataset.samples == [(str(imagenet_root / path), label) for path, label in entries]
    assert dataset.targets == [label for _, label in entries] == [2, 1, 0] * 4
    assert dataset.classes == ["0", "1", "2"]
    for index, (path, label) in enumerate(entries):
        image, item_label = dataset[index]
        assert image.mode == "RGB" and item_label == label
        expected = np.asarray(Image.open(imagenet_root / path).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_dataset_applies_its_transform(imagenet_root, tmp_path):
    path = listed_images(imagenet_root, "val")[1][0]
    list_file = write_list(tmp_path / "val.txt", [f"{path} 7"])
    dataset = ImageListDataset(imagenet_root, list_file, transform=lambda image: ("seen", image.size), num_classes=10)
    assert dataset[0] == (("seen", (40, 30)), 7)  # the tree's images are 40 wide, 30 high


def test_a_missing_list_says_where_the_lists_are_published(imagenet_root, tmp_path):
    missing = tmp_path / "ImageNet_LT_train.txt"
    assert user_error(lambda: ImageListDataset(imagenet_root, missing)) == (
        f"image list {missing} not found. ImageNet-LT's lists (ImageNet_LT_train.txt, ImageNet_LT_val.txt, "
        f"ImageNet_LT_test.txt) are published by the OLTR authors: follow the data-preparation link of "
        f"https://github.com/zhmiao/OpenLongTailRecognition-OLTR, download them and pass the path of one"
    )


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("train/only_a_path.png", f"expected {LINE_FORMAT}, got 'train/only_a_path.png'"),
        ("train/a.png 1 extra", f"expected {LINE_FORMAT}, got 'train/a.png 1 extra'"),
        ("train/a.png cat", f"the label 'cat' is not an integer; expected {LINE_FORMAT}"),
        ("train/a.png 1.5", f"the label '1.5' is not an integer; expected {LINE_FORMAT}"),
        ("train/a.png 3", "label 3 is out of range: labels are 0..2 (num_classes=3)"),
        ("train/a.png -1", "label -1 is out of range: labels are 0..2 (num_classes=3)"),
    ],
    ids=["one-field", "three-fields", "word-label", "float-label", "label-too-large", "negative-label"],
)
def test_a_bad_line_is_named_with_its_line_number(imagenet_root, tmp_path, bad_line, problem):
    good = listed_images(imagenet_root, "train")[0][0]
    # Line 3 is blank: line numbers count the file's lines, blank ones included.
    list_file = write_list(tmp_path / "list.txt", [f"{good} 0", f"{good} 1", "", bad_line, f"{good} 2"])
    message = user_error(lambda: ImageListDataset(imagenet_root, list_file, num_classes=3))
    assert message == f"{list_file}, line 4: {problem}"


def test_missing_images_are_counted_and_the_first_named(imagenet_root, tmp_path):
    good = listed_images(imagenet_root, "train")[0]
    lines = [f"{good[0]} 0", "train/n00000000/gone.png 0", f"{good[1]} 0", "val/gone_too.png 1"]
    list_file = write_list(tmp_path / "list.txt", lines)
    assert user_error(lambda: ImageListDataset(imagenet_root, list_file, num_classes=3)) == (
        f"{list_file}: 2 of 4 listed images are missing under {imagenet_root}; the first is on line 2: "
        f"train/n00000000/gone.png (looked for {imagenet_root}/train/n00000000/gone.png). root must be the "
        f"folder that the paths of {list_file} are relative to (for ImageNet-LT, the ImageNet folder that "
        f"holds train/ and val/)"
    )


def test_a_root_that_is_no_folder_is_named(imagenet_root, tmp_path):
    list_file = write_list(tmp_path / "list.txt", [f"{listed_images(imagenet_root, 'train')[0][0]} 0"])
    wrong_root = tmp_path / "imagenet"
    assert user_error(lambda: ImageListDataset(wrong_root, list_file)) == (
        f"the image folder {wrong_root} does not exist or is not a folder; root must be the folder that the "
        f"paths of {list_file} are relative to (for ImageNet-LT, the ImageNet folder that holds train/ and val/)"
    )


@pytest.mark.parametrize("text", ["", "\n \n\t\n"], ids=["empty", "blank-lines"])
def test_an_empty_list_is_refused(imagenet_root, tmp_path, text):
    list_file = tmp_path / "list.txt"
    list_file.write_text(text)
    assert user_error(lambda: ImageListDataset(imagenet_root, list_file)) == (
        f"image list {list_file} lists no images (it is empty); expected one {LINE_FORMAT} per line"
    )


def test_classes_without_images_are_refused_only_when_every_class_is_required(imagenet_root, tmp_path):
    by_class = listed_images(imagenet_root, "train")
    list_file = write_list(tmp_path / "list.txt", [f"{by_class[0][0]} 0", f"{by_class[1][0]} 2"])
    assert len(ImageListDataset(imagenet_root, list_file, num_classes=5)) == 2  # not required: fine
    message = user_error(lambda: ImageListDataset(imagenet_root, list_file, num_classes=5, require_all_classes=True))
    assert message == (
        f"{list_file}: 3 of 5 classes have no image (classes 1, 3, 4); require_all_classes needs an image "
        f"of every class 0..4: check that the list is complete and that num_classes=5 is right"
    )
    many_empty = user_error(lambda: ImageListDataset(imagenet_root, list_file, num_classes=9, require_all_classes=True))
    assert "7 of 9 classes have no image (classes 1, 3, 4, 5, 6, ...)" in many_empty


def test_class_counts_count_each_label():
    assert class_counts([2, 0, 2, 2, 4], 6) == [1, 0, 3, 0, 1, 0]
    assert class_counts([], 2) == [0, 0]
    assert user_error(lambda: class_counts([0, 3], 3)) == "label 3 is out of range: labels are 0..2"


# --- long-tailed subsample -----------------------------------------------------------------

# 10 classes from 150 down to 5 images: 150 * (5/150) ** (c/9), worked by hand with
# (1/30) ** (1/9) = exp(-ln(30)/9) = exp(-0.37791) = 0.68529: class 1 keeps 150 * 0.68529 = 102.79
# -> 103, class 2 150 * 0.68529**2 = 70.44 -> 70, ..., class 8 7.30 -> 7, class 9 exactly 5.
PROFILE_150_TO_5 = [150, 103, 70, 48, 33, 23, 16, 11, 7, 5]


def test_the_profile_decays_exponentially_from_max_to_min():
    by_formula = [150 * math.exp(-math.log(30) * c / 9) for c in range(10)]
    print("unrounded profile:", [f"{count:.2f}" for count in by_formula])
    assert [int(count + 0.5) for count in by_formula] == PROFILE_150_TO_5
    assert long_tailed_profile(150, 5, 10) == PROFILE_150_TO_5
    assert long_tailed_profile(7, 7, 3) == [7, 7, 7]
    assert long_tailed_profile(9, 2, 1) == [9]


def test_the_subsample_keeps_each_class_first_images_in_order():
    targets = [c for _ in range(160) for c in range(10)]  # round robin: image k*10 + c is class c's k-th
    indices = long_tailed_indices(targets, max_per_class=150, min_per_class=5, num_classes=10)
    expected = sorted(k * 10 + c for c in range(10) for k in range(PROFILE_150_TO_5[c]))
    assert indices == expected
    assert class_counts([targets[i] for i in indices], 10) == PROFILE_150_TO_5


def test_a_class_with_too_few_images_is_named():
    need = list(PROFILE_150_TO_5)
    need[6] -= 1  # 15 of the 16 class 6 needs
    need[9] -= 1  # 4 of 5
    targets = [c for c in range(10) for _ in range(need[c])]
    assert user_error(lambda: long_tailed_indices(targets, 150, 5, 10)) == (
        "a long-tailed subsample from 150 down to 5 images a class needs 16 images of class 6, which has 15 "
        "(2 classes are short); lower max_per_class or min_per_class, or start from a list with more images"
    )
    exact = [c for c in range(10) for _ in range(PROFILE_150_TO_5[c])]
    assert long_tailed_indices(exact, 150, 5, 10) == list(range(len(exact)))  # just enough: every image


def test_a_profile_growing_towards_the_tail_is_refused():
    assert user_error(lambda: long_tailed_indices([0, 1], 5, 10, 2)) == (
        "a long-tailed profile needs 1 <= min_per_class <= max_per_class, got min_per_class=10, max_per_class=5"
    )


# --- shot-wise accuracy --------------------------------------------------------------------

# Ten test images of six classes. Each row is the logits the model gives image i; the comment
# says its class (t), the top-1 prediction (p) and whether the class is in the top 5.
LOGITS = [
    [3, 0, 0, 0, 0, 0],  # t0 p0
    [3, 0, 0, 0, 0, 0],  # t0 p0
    [1, 2, 0, 0, 0, 0],  # t0 p1  wrong
    [3, 0, 0, 0, 0, 0],  # t0 p0
    [5, -1, 4, 3, 2, 1],  # t1 p0  wrong, and class 1 is the lowest: outside the top 5
    [0, 0, 3, 0, 0, 0],  # t2 p2
    [0, 0, 3, 0, 0, 0],  # t2 p2
    [0, 0, 0, 3, 0, 0],  # t3 p3
    [0, 0, 0, 1, 2, 0],  # t3 p4  wrong
    [0, 0, 0, 0, 3, 0],  # t4 p4
]
TARGETS = [0, 0, 0, 0, 1, 2, 2, 3, 3, 4]  # class 5 has no test image

# Training images per class: 101 and 500 many-shot, 100 and 20 medium (the bounds belong to it), 19
# and 3 few-shot. Per class top-1: class 0 3/4, class 1 0/1, class 2 2/2, class 3 1/2, class 4 1/1,
# class 5 untested (left out). Means over each group's classes:
TRAIN_COUNTS = [500, 101, 100, 20, 19, 3]
EXPECTED = {
    "top1": 70.0,  # 7 of 10
    "top5": 90.0,  # all but image 4
    "many_shot_top1": 37.5,  # (3/4 + 0/1) / 2; over the group's images it would be 3/5 = 60
    "medium_shot_top1": 75.0,  # (2/2 + 1/2) / 2
    "few_shot_top1": 100.0,  # class 4's 1/1 alone
}


class LookUpModel(nn.Module):
    """Gives ``LOGITS[i]`` for the input i (the image's index), whatever its mode."""

    def __init__(self):
        super().__init__()
        self.register_buffer("logits", torch.tensor(LOGITS, dtype=torch.float32))

    def forward(self, indices):
        return self.logits[indices.long()]


def batches(indices, size=3):
    return [
        (torch.tensor(indices[start : start + size]), torch.tensor([TARGETS[i] for i in indices[start : start + size]]))
        for start in range(0, len(indices), size)
    ]


def test_shot_groups_put_the_bounds_where_the_benchmark_does():
    assert SHOT_BINS == {"many": (101, None), "medium": (20, 100), "few": (0, 19)}
    assert shot_groups([101, 100, 20, 19, 0, 1280, 5]) == {"many": [0, 5], "medium": [1, 2], "few": [3, 4, 6]}
    assert shot_groups([]) == {"many": [], "medium": [], "few": []}


def test_shot_wise_top1_is_the_mean_of_the_group_classes_accuracy():
    accuracy = topk_accuracy(LookUpModel(), batches(list(range(10))), torch.device("cpu"), train_counts=TRAIN_COUNTS)
    assert accuracy == pytest.approx(EXPECTED)


def test_a_group_without_classes_is_none():
    no_few_shot = [500, 101, 100, 20, 20, 21]  # classes 4 and 5 now medium-shot
    accuracy = topk_accuracy(LookUpModel(), batches(list(range(10))), torch.device("cpu"), train_counts=no_few_shot)
    # medium: classes 2, 3, 4 (class 5 untested): (2/2 + 1/2 + 1/1) / 3
    assert accuracy == pytest.approx({**EXPECTED, "medium_shot_top1": 250.0 / 3, "few_shot_top1": None})
    untested = shot_accuracy([1, 0, 0], [2, 0, 0], [500, 50, 5])  # classes 1 and 2 have no test image
    assert untested == {"many_shot_top1": 50.0, "medium_shot_top1": None, "few_shot_top1": None}


def test_without_train_counts_the_result_is_as_before():
    model = LookUpModel().train()
    accuracy = topk_accuracy(model, batches(list(range(10)), size=4), torch.device("cpu"))
    assert accuracy == pytest.approx({"top1": 70.0, "top5": 90.0}) and set(accuracy) == {"top1", "top5"}
    assert model.training  # the mode it came in


def test_every_count_is_summed_in_one_reduction(monkeypatch):
    reduced = []
    real_reduce_sum = engine.metrics.reduce_sum
    monkeypatch.setattr(
        engine.metrics, "reduce_sum", lambda tensor: reduced.append(tensor.shape) or real_reduce_sum(tensor)
    )
    topk_accuracy(LookUpModel(), batches(list(range(10))), torch.device("cpu"), train_counts=TRAIN_COUNTS)
    assert reduced == [torch.Size([3 + 2 * 6])]  # top-1, top-5, seen, then each class's hits and images


def test_train_counts_of_another_number_of_classes_are_refused():
    model = LookUpModel().train()
    message = user_error(lambda: topk_accuracy(model, batches([0, 1]), torch.device("cpu"), train_counts=[5] * 4))
    assert message == (
        "shot-wise accuracy: train_counts has 4 classes but the model gives 6 logits an image; pass the "
        "training images of each class the model predicts (engine.data.class_counts(train_set.targets, num_classes))"
    )
    assert model.training


def _shard_worker(rank, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        shard = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]][rank]  # rank 0 sees classes 0 and 1 only
        queue.put(topk_accuracy(LookUpModel(), batches(shard, size=2), torch.device("cpu"), train_counts=TRAIN_COUNTS))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_the_whole_set(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_shard_worker, args=(rank, str(tmp_path / "init"), queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert all(result == pytest.approx(EXPECTED) for result in results)
