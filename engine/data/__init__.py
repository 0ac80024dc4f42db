"""Data, by concern: what the datasets are (`datasets`, and `image_lists` for datasets given as
lists of images, such as ImageNet-LT), how images are augmented (`transforms`),
which images each process takes (`samplers`), and the loaders that put them together (`loaders`).

Images come out as float tensors in [0, 1] unless ``normalize=True``. Adversarial training
keeps the default: its budgets (eps = 8/255, step sizes) are in pixel units and its clip to
[0, 1] is the valid image range, so the attack must see raw pixels; models that want
normalised inputs normalise inside (see ``models/dm_wide_resnet.py``). Knowledge
distillation passes ``normalize=True``, as mdistiller does: its teachers were trained on
normalised inputs and normalise nothing inside.

The names below are the package's interface; each module's docstring says the details.
"""

from .datasets import (
    DATASET_AUGMENTATIONS,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_SIZE,
    NUM_CLASSES,
    Digits,
    PathLike,
    WithIndices,
    build_test_set,
    build_train_set,
    dataset_num_classes,
    first_examples,
    num_classes,
)
from .image_lists import (
    IMAGENET_LT_LISTS,
    IMAGENET_LT_SOURCE,
    ImageListDataset,
    class_counts,
    long_tailed_indices,
    long_tailed_profile,
)
from .loaders import DeviceBatches, SeededDataLoader, global_batch_sizes, make_eval_loader, make_loader, set_epoch
from .samplers import DealtBatchSampler, ShardedBatchSampler, require_global_batch_divides, shard_bounds
from .transforms import (
    AUGMENTATIONS,
    AUTOAUGMENT_FILL,
    NORMALIZE_STATS,
    AugmentedViews,
    Cutout,
    as_float_images,
    autoaugment_cifar,
    crop_flip,
    draw_crop_flip,
    draw_rotations,
    keyed_generator,
    rotate_nearest,
)

__all__ = [
    "AUGMENTATIONS",
    "AUTOAUGMENT_FILL",
    "DATASET_AUGMENTATIONS",
    "NORMALIZE_STATS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "IMAGENET_LT_LISTS",
    "IMAGENET_LT_SOURCE",
    "NUM_CLASSES",
    "Cutout",
    "DealtBatchSampler",
    "DeviceBatches",
    "Digits",
    "ImageListDataset",
    "PathLike",
    "SeededDataLoader",
    "ShardedBatchSampler",
    "AugmentedViews",
    "WithIndices",
    "as_float_images",
    "autoaugment_cifar",
    "build_test_set",
    "build_train_set",
    "class_counts",
    "crop_flip",
    "dataset_num_classes",
    "draw_crop_flip",
    "draw_rotations",
    "first_examples",
    "global_batch_sizes",
    "keyed_generator",
    "long_tailed_indices",
    "long_tailed_profile",
    "make_eval_loader",
    "make_loader",
    "num_classes",
    "require_global_batch_divides",
    "rotate_nearest",
    "set_epoch",
    "shard_bounds",
]
