"""Datasets as in-memory tensors: loading, deterministic splits, batches and batched augmentation.

Images are NCHW; stored as uint8 (or float in [0, 1]) and served as float32 in [0, 1].
"""

from rift.data.augment import AUGMENTATIONS, augment_batch, crop_padding, random_crop, random_flip
from rift.data.batches import iterate_batches, to_float_images
from rift.data.loading import load_dataset, resolve_augment
from rift.data.tensors import DatasetSplits, ImageTensors

__all__ = [
    "AUGMENTATIONS",
    "DatasetSplits",
    "ImageTensors",
    "augment_batch",
    "crop_padding",
    "iterate_batches",
    "load_dataset",
    "random_crop",
    "random_flip",
    "resolve_augment",
    "to_float_images",
]
