"""scikit-learn's bundled handwritten digits: 1797 grey 8×8 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch

from rift.config import DatasetSpec
from rift.data.tensors import ImageTensors, SourceData

TEST_FRACTION = 0.25  # the dataset has no test split of its own; scikit-learn's usual hold-out
_MAX_VALUE = 16  # the pixel values are counts of set bits in 4×4 blocks: 0..16


def load_digits(spec: DatasetSpec) -> SourceData:
    """(1797, 1, 8, 8) uint8 images (0..16 scaled to 0..255, rounded) and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits  # import cost only when used

    del spec  # nothing to configure: the data ships with scikit-learn
    bunch = sklearn_digits()
    scaled = np.rint(np.asarray(bunch.images) * (255.0 / _MAX_VALUE)).astype(np.uint8)
    images = torch.from_numpy(scaled[:, None])
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return SourceData(train=ImageTensors(images, labels), test=None, num_classes=10,
                      test_fraction=TEST_FRACTION)
