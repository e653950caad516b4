"""Datasets held in memory as uint8 tensors, and tensor-level batching/augmentation.

Every problem with user data raises ikd.errors.DataError with a one-line message.
"""

from ikd.data.batches import (
    AUGMENTATIONS,
    Augmentation,
    augment_batch,
    crop_padding,
    cutout_size,
    iterate_batches,
    normalize,
    to_device,
)
from ikd.data.paths import resolve_data_root
from ikd.data.sources import DATASETS, MAX_IMAGE_SIZE, effective_image_size, load_dataset
from ikd.data.splits import DataSplits, ImageSet

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "MAX_IMAGE_SIZE",
    "Augmentation",
    "DataSplits",
    "ImageSet",
    "augment_batch",
    "crop_padding",
    "cutout_size",
    "effective_image_size",
    "iterate_batches",
    "load_dataset",
    "normalize",
    "resolve_data_root",
    "to_device",
]
