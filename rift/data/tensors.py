"""In-memory image datasets: labelled image tensors and the train/validation/test splits of a run.

Images are kept as tensors (uint8 where the source is 8-bit, to keep memory at one byte per value)
and only turned into float in [0, 1] batch by batch on the compute device (see ``batches.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from rift.errors import DatasetError


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is element-wise, not a bool
class ImageTensors:
    """Labelled images.

    ``images``: (N, C, H, W), uint8 in [0, 255] or float32 in [0, 1]; or (N, F) float feature
    vectors (npz feature datasets).
    ``labels``: (N,) int64 class indices.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dim() not in (2, 4):
            raise DatasetError(
                f"images must be (N, C, H, W) (or (N, F) feature vectors); got shape "
                f"{tuple(self.images.shape)}")
        if self.images.dtype != torch.uint8 and not self.images.dtype.is_floating_point:
            raise DatasetError(f"images must be uint8 or float; got {self.images.dtype}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise DatasetError(
                f"labels must be a 1-D int64 tensor; got {self.labels.dtype} "
                f"of shape {tuple(self.labels.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise DatasetError(
                f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def head(self, n: int) -> ImageTensors:
        """The first ``n`` examples (views, no copy)."""
        return ImageTensors(self.images[:n], self.labels[:n])

    def select(self, indices: Tensor) -> ImageTensors:
        """The examples at ``indices`` (a 1-D integer tensor), in that order."""
        indices = indices.to(self.labels.device)
        return ImageTensors(self.images[indices], self.labels[indices])

    def to(self, device: torch.device | str) -> ImageTensors:
        """The same examples on ``device`` (dtype unchanged)."""
        return ImageTensors(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Everything a run needs from its data.

    ``validation`` is carved out of the training set (never the test set) so that choosing the
    best fine-tuning epoch does not look at the test numbers. ``augment`` is the resolved
    training augmentation: ``"none"``, ``"crop_flip"`` or ``"crop"``.
    """

    train: ImageTensors
    validation: ImageTensors
    test: ImageTensors
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    name: str
    augment: str
    #: The source's class names, class index i named ``class_names[i]`` (ImageFolder folders);
    #: None where classes have no names of their own (npz labels, built-ins).
    class_names: tuple[str, ...] | None = None

    @property
    def in_channels(self) -> int:
        return self.image_shape[0]

    @property
    def feature_vectors(self) -> bool:
        """Whether the examples are feature vectors, which travel as (N, F, 1, 1): one-pixel
        'images' (``rift.data.npz``), used in their own units rather than read in [0, 1]."""
        return self.image_shape[1:] == (1, 1)

    @property
    def nbytes(self) -> int:
        """Memory held by the images and labels of all three splits."""
        return sum(part.images.nbytes + part.labels.nbytes
                   for part in (self.train, self.validation, self.test))

    def to(self, device: torch.device | str) -> DatasetSplits:
        """The same splits with every tensor on ``device``."""
        return dataclasses.replace(self, train=self.train.to(device),
                                   validation=self.validation.to(device), test=self.test.to(device))

    @property
    def image_size(self) -> int:
        """Height of the images (the models assume square inputs)."""
        return self.image_shape[1]


@dataclass(frozen=True, eq=False)
class SourceData:
    """What a source reader returns before splitting: a training set, a test set if the source
    has one, and otherwise the fraction of ``train`` to hold out as test."""

    train: ImageTensors
    test: ImageTensors | None
    num_classes: int
    test_fraction: float = 0.2
    class_names: tuple[str, ...] | None = None  # as DatasetSplits.class_names
