"""A user's own data as one ``.npz`` file: images or feature vectors, by the format rules of
``rift.dataset_formats`` (keys ``x``, ``y``, optionally ``x_test`` / ``y_test``).

Images come back as (N, C, H, W) tensors (uint8 kept as uint8, floats as float32 in [0, 1]);
feature vectors, an ``x`` of shape (N, F), as (N, F, 1, 1) float32 tensors: F features as the
channels of a one-pixel image, with any values finite in float32 (their valid range is
``attack.domain``, not [0, 1]), so every image code path (batches, attacks, models) takes them
unchanged. Labels are
non-negative integers; ``num_classes`` is the largest label + 1.

Content (``rift.image_content``, the rules an upload is held to): an input array whose
examples are more than half constant (images), all the same (images or feature vectors), float
images at most 1/255 (divided by 255 twice), and training labels of one class are refused,
naming the key and an example.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from rift.config import DatasetSpec
from rift.data.tensors import ImageTensors, SourceData
from rift.dataset_formats import (
    NPY_MAGIC,
    NPZ_KEYS,
    SAVE_NPZ,
    ZIP_MAGIC,
    NpzLayout,
    ValueScan,
    check_enough_examples,
    check_has_examples,
    check_npz_keys,
    check_npz_member_names,
    check_test_inputs,
    first_bytes_text,
    label_count,
    npz_layout,
    num_classes_from_labels,
    read_npy_header,
    single_array_problem,
)
from rift.errors import DatasetError
from rift.image_content import ExampleScan, faint_problem, one_class_problem

TEST_FRACTION = 0.2  # held out as test when the file has no x_test / y_test
# Examples compared at a time by the content rules: bounds their temporary arrays (the
# comparison with the first example) to about this many values.
_CONTENT_CHUNK_VALUES = 8 * 1024 * 1024


def _inputs(x: np.ndarray, key: str) -> tuple[torch.Tensor, NpzLayout]:
    layout = npz_layout(x.shape, x.dtype, key)
    scan = ValueScan(layout.content, key)
    scan.update(x)
    scan.finish()
    if layout.content == "features":
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, :, None, None], layout
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W): one channel
    elif layout.channels_last:
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)), layout
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), layout


def _check_content(x: np.ndarray, key: str, *, images: bool) -> None:
    """The content rules of the module docstring on input array ``x`` (raises DatasetError)."""
    if images and x.dtype.kind == "f" and x.size:
        faint = faint_problem(key, float(x.max()))
        if faint is not None:
            raise DatasetError(faint)
    size = int(np.prod(x.shape[1:], dtype=np.int64))
    examples = ExampleScan(key, size, images=images, itemsize=x.dtype.itemsize)
    step = max(1, _CONTENT_CHUNK_VALUES // max(size, 1))
    for start in range(0, x.shape[0], step):
        examples.update(x[start:start + step])
    examples.finish()


def _labels(y: np.ndarray, key: str, count: int, inputs_key: str) -> torch.Tensor:
    if label_count(y.shape, y.dtype, key) != count:
        raise DatasetError(f"key '{key}' has {y.shape[0]} labels but '{inputs_key}' has "
                           f"{count} examples")
    y = y.reshape(-1)
    ValueScan("labels", key).update(y)
    return torch.from_numpy(y.astype(np.int64))


def _refuse_object_arrays(path: Path) -> None:
    # np.load(allow_pickle=False) refuses object arrays too, but without naming the key. Only
    # the keys read are checked: other members (class names or a metadata dict the user saved
    # alongside) are never loaded, and the upload accepts them (it reads them only for their
    # CRC); refusing them here failed the job of an accepted upload.
    with zipfile.ZipFile(path) as archive:
        # Checked on upload; a stored file is not trusted to be the one checked.
        check_npz_member_names(archive.namelist(), str(path))
        for name in archive.namelist():
            if name.removesuffix(".npy") in NPZ_KEYS and name.endswith(".npy"):
                with archive.open(name) as member:
                    read_npy_header(member, name.removesuffix(".npy"))


def _refuse_other_formats(path: Path) -> None:
    """Raises DatasetError (field ``dataset.path``) when ``path`` begins as neither an .npz nor
    an .npy file, saying what its first bytes are."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except OSError as exc:
        raise DatasetError(f"cannot read 'path' {path}: {exc.strerror or exc}",
                           field="dataset.path") from exc
    # np.load reads anything else as a pickle, refused as "pickled (object) data" for a text
    # file, an image or a CSV that is none.
    if head.startswith(ZIP_MAGIC) or head.startswith(NPY_MAGIC):
        return
    if tarfile.is_tarfile(path):
        # Before: "its first bytes are b'cat/0.pn'; save the arrays with np.savez": the tar of
        # an ImageFolder tree the service takes as a dataset, given to the wrong reader.
        raise DatasetError(
            f"'path' {path} is a tar archive, not an .npz: an ImageFolder tree (class folders "
            "of images, which the service takes as a tar) is read by dataset 'imagefolder' "
            "from its folder: unpack it and give the folder", field="dataset.path")
    raise DatasetError(f"'path' {path} is not an .npz archive ({first_bytes_text(head)}); "
                       f"{SAVE_NPZ}", field="dataset.path")


def load_npz(spec: DatasetSpec) -> SourceData:
    """Read ``spec.path``; raise DatasetError naming the key at fault."""
    path = Path(spec.path or "")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a file"
        raise DatasetError(f"dataset 'npz': 'path' {path} is {kind}", field="dataset.path")
    _refuse_other_formats(path)
    try:
        # allow_pickle=False: object arrays would unpickle code from a user-supplied file.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            # np.load reads a .npy file as one bare array, with no keys to find x and y under.
            raise DatasetError(single_array_problem(f"'path' {path}", loaded.dtype, loaded.shape),
                               field="dataset.path")
        with loaded as archive:
            _refuse_object_arrays(path)
            names = list(archive.files)
            check_npz_keys(names, str(path))
            arrays = {key: archive[key] for key in names if key in NPZ_KEYS}
    except (ValueError, OverflowError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read 'path' {path} as .npz: {exc}",
                           field="dataset.path") from exc
    x, layout = _inputs(arrays["x"], "x")
    train = ImageTensors(x, _labels(arrays["y"], "y", x.shape[0], "x"))
    test = None
    if "x_test" in arrays:
        stored, stored_test = arrays["x"], arrays["x_test"]
        # The stored arrays are compared, before x_test's values, as the upload compares them
        # (not the tensors read).
        check_test_inputs(layout, stored.dtype, stored.shape,
                          npz_layout(stored_test.shape, stored_test.dtype, "x_test"),
                          stored_test.dtype, stored_test.shape)
        x_test, _ = _inputs(stored_test, "x_test")
        test = ImageTensors(x_test, _labels(arrays["y_test"], "y_test", x_test.shape[0], "x_test"))
    for key, part in (("x", train), ("x_test", test)):
        if part is not None:
            check_has_examples(len(part), key, str(path))
    check_enough_examples(len(train), test is not None, f"key 'x' in {path}", "x_test")
    # Content after format: a file with a missing or misshapen key is told that first.
    for key in ("x", "x_test"):
        if key in arrays:
            _check_content(arrays[key], key, images=layout.content == "images")
    if len(train) and bool((train.labels == train.labels[0]).all()):
        raise DatasetError(one_class_problem("key 'y'", int(train.labels[0])))
    labels = [train.labels] + ([test.labels] if test is not None else [])
    largest = max(int(t.max()) for t in labels)
    return SourceData(train=train, test=test, num_classes=num_classes_from_labels(largest),
                      test_fraction=TEST_FRACTION)
