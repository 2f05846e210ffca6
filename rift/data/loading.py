"""``load_dataset``: read a source, then split it deterministically into train/validation/test."""

from __future__ import annotations

from collections.abc import Callable

from rift.config import DatasetSpec
from rift.data.digits import load_digits
from rift.data.imagefolder import load_imagefolder
from rift.data.npz import load_npz
from rift.data.splits import (
    TEST_CAP_STREAM,
    TEST_SPLIT_STREAM,
    TRAIN_CAP_STREAM,
    VALIDATION_STREAM,
    cap,
    hold_out,
    seeded_generator,
)
from rift.data.tensors import DatasetSplits, ImageTensors, SourceData
from rift.data.torchvision_sources import load_cifar10, load_cifar100, load_mnist, load_svhn
from rift.errors import DatasetError

SOURCES: dict[str, Callable[[DatasetSpec], SourceData]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "mnist": load_mnist,
    "digits": load_digits,
    "npz": load_npz,
    "imagefolder": load_imagefolder,
}

# Digits: a flipped 2, 3, 5, 7 ... is not a digit of its class, so these only crop.
_NO_FLIP = frozenset({"digits", "mnist", "svhn"})


def resolve_augment(spec: DatasetSpec, channels: int, image_side: int = 32) -> str:
    """``spec.augment`` with ``"auto"`` resolved: ``"crop"`` for digit datasets and for
    single-channel data, ``"crop_flip"`` for natural colour images (CIFAR, ImageFolder, npz)."""
    if spec.augment != "auto":
        return spec.augment
    if image_side == 1:  # feature vectors (N, F, 1, 1): nothing to crop or flip
        return "none"
    if spec.name in _NO_FLIP or channels == 1:
        return "crop"
    return "crop_flip"


def _check_labels(name: str, part: str, data: ImageTensors, num_classes: int) -> None:
    # Every source promises labels in [0, num_classes); a damaged file (an MNIST idx label of
    # 12) would otherwise fail only inside the loss, as an IndexError, or not at all.
    if len(data) == 0:
        return
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= num_classes:
        raise DatasetError(f"dataset '{name}': the {part} labels must be class indices in "
                           f"[0, {num_classes}); found labels from {low} to {high}")


def load_dataset(spec: DatasetSpec, seed: int) -> DatasetSplits:
    """Load the dataset ``spec`` describes, as in-memory tensors (images uint8 or float [0, 1]).

    Steps, each with its own random stream from ``seed`` (class-stratified, see ``splits.py``):
    1. if the source has no test set, hold out ``test_fraction`` of it as test;
    2. ``max_train_examples`` caps the training pool, *before* the validation split, so a small
       cap also keeps per-epoch validation cheap;
    3. ``max_test_examples`` caps the test set;
    4. ``validation_fraction`` of the (capped) training pool becomes the validation split.
    The same ``spec`` and ``seed`` always give the same splits. Raises DatasetError.
    """
    source = SOURCES[spec.name](spec)
    for part, data in (("training", source.train), ("test", source.test)):
        if data is not None:
            _check_labels(spec.name, part, data, source.num_classes)
    train, test = source.train, source.test
    if test is None:
        train, test = hold_out(train, source.test_fraction,
                               seeded_generator(seed, TEST_SPLIT_STREAM), what="test")
    if train.image_shape != test.image_shape:
        raise DatasetError(f"dataset '{spec.name}': train images are {train.image_shape} "
                           f"but test images are {test.image_shape}")
    train = cap(train, spec.max_train_examples, seeded_generator(seed, TRAIN_CAP_STREAM))
    test = cap(test, spec.max_test_examples, seeded_generator(seed, TEST_CAP_STREAM))
    train, validation = hold_out(train, spec.validation_fraction,
                                 seeded_generator(seed, VALIDATION_STREAM), what="validation")
    return DatasetSplits(
        train=train, validation=validation, test=test, num_classes=source.num_classes,
        image_shape=train.image_shape, name=spec.name,
        augment=resolve_augment(spec, train.image_shape[0], train.image_shape[1]),
        class_names=source.class_names)
