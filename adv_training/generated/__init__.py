"""Wang et al. 2023's generated images: the prepared folder on disk (`store`, written by
``python -m adv_training.prepare_generated``) and the loader that mixes them into every batch (`mixing`)."""

from .mixing import BatchKey, MixedBatches, MixedBatchSampler, epoch_batches, make_mixed_loader
from .store import GeneratedSet, memory_map_images, open_generated, prepare_generated

__all__ = [
    "BatchKey",
    "GeneratedSet",
    "MixedBatchSampler",
    "MixedBatches",
    "epoch_batches",
    "make_mixed_loader",
    "memory_map_images",
    "open_generated",
    "prepare_generated",
]
