"""A user's own data as one ``.npz`` file.

Keys: ``x`` images and ``y`` labels, optionally ``x_test`` / ``y_test``. Images are either uint8
(N, H, W, C) — the layout numpy image code produces — or float (N, C, H, W) with values in [0, 1]
— the layout of PyTorch tensors saved with ``.numpy()``. (N, H, W) is read as one channel.
Labels are non-negative integers; ``num_classes`` is the largest label + 1.

Feature vectors: a float ``x`` of shape (N, F) is read as (N, F, 1, 1), F features as channels of a
one-pixel image, with any finite values (their valid range is ``attack.domain``, not [0, 1]).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from rift.config import DatasetSpec
from rift.data.tensors import ImageTensors, SourceData
from rift.errors import DatasetError

MAX_CHANNELS = 16  # the largest in_channels an architecture accepts (ArchitectureSpec)
MIN_IMAGE_SIDE = 1  # empty images would only fail later, inside the first convolution
TEST_FRACTION = 0.2  # held out as test when the file has no x_test / y_test


# --- feature vectors (N, F); kept apart from the image rules above and below so that the shared
# format-rules module (issue 7, item 6) can absorb it in one piece.
def _features(x: np.ndarray, key: str) -> torch.Tensor:
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"key '{key}': feature vectors (N, F) must be float; got {x.dtype}")
    if x.size and not np.isfinite(x).all():
        raise DatasetError(f"key '{key}' holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, :, None, None]
# --- end of feature vectors


def _images(x: np.ndarray, key: str) -> torch.Tensor:
    if x.ndim == 2:
        return _features(x, key)
    images = _images_nchw(x, key)
    if min(images.shape[2:]) < MIN_IMAGE_SIDE:
        raise DatasetError(
            f"key '{key}': shape {x.shape} gives {images.shape[2]}×{images.shape[3]} images; each "
            f"side must be at least {MIN_IMAGE_SIDE} pixels")
    return images


def _images_nchw(x: np.ndarray, key: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None] if x.dtype != np.uint8 else x[..., None]
    if x.ndim != 4:
        raise DatasetError(
            f"key '{key}' must have 4 dimensions (uint8 N×H×W×C or float N×C×H×W); "
            f"got shape {x.shape}")
    if x.dtype == np.uint8:
        channels = x.shape[3]
        if not 1 <= channels <= MAX_CHANNELS:
            raise DatasetError(
                f"key '{key}': uint8 images must be N×H×W×C with at most {MAX_CHANNELS} channels; "
                f"shape {x.shape} has {channels} on the last axis (N×C×H×W uint8 is not read)")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if np.issubdtype(x.dtype, np.floating):
        channels = x.shape[1]
        if not 1 <= channels <= MAX_CHANNELS:
            raise DatasetError(
                f"key '{key}': float images must be N×C×H×W with at most {MAX_CHANNELS} channels; "
                f"shape {x.shape} has {channels} on axis 1")
        if x.size and not np.isfinite(x).all():
            raise DatasetError(f"key '{key}' holds NaN or infinite values")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise DatasetError(
                f"key '{key}': float images must lie in [0, 1]; found values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    raise DatasetError(f"key '{key}' must be uint8 or float; got {x.dtype}")


def _labels(y: np.ndarray, key: str, count: int, images_key: str) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"key '{key}' must be 1-D (one label per image); got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"key '{key}' must hold integers; got {y.dtype}")
    if y.shape[0] != count:
        raise DatasetError(f"key '{key}' has {y.shape[0]} labels but '{images_key}' has "
                           f"{count} images")
    if y.size and y.min() < 0:
        raise DatasetError(f"key '{key}' holds negative labels (smallest {int(y.min())})")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(spec: DatasetSpec) -> SourceData:
    """Read ``spec.path``; raise DatasetError naming the key at fault."""
    path = Path(spec.path or "")
    if not path.is_file():
        raise DatasetError(f"dataset 'npz': 'path' {path} is not a file")
    try:
        # allow_pickle=False: object arrays would unpickle code from a user-supplied file.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read 'path' {path} as .npz: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(f"{path} has no key '{key}' (keys: {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        missing = "y_test" if "x_test" in arrays else "x_test"
        raise DatasetError(f"{path} has no key '{missing}': give both 'x_test' and 'y_test' "
                           "or neither")
    x = _images(arrays["x"], "x")
    train = ImageTensors(x, _labels(arrays["y"], "y", x.shape[0], "x"))
    test = None
    if "x_test" in arrays:
        x_test = _images(arrays["x_test"], "x_test")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise DatasetError(
                f"key 'x_test' must match 'x' in image shape and dtype: {x_test.dtype} "
                f"{tuple(x_test.shape[1:])} vs {x.dtype} {tuple(x.shape[1:])}")
        test = ImageTensors(x_test, _labels(arrays["y_test"], "y_test", x_test.shape[0], "x_test"))
    for key, part in (("x", train), ("x_test", test)):
        if part is not None and len(part) == 0:
            raise DatasetError(f"key '{key}' in {path} holds no images")
    labels = [train.labels] + ([test.labels] if test is not None else [])
    num_classes = int(max(int(t.max()) for t in labels)) + 1
    return SourceData(train=train, test=test, num_classes=num_classes, test_fraction=TEST_FRACTION)
