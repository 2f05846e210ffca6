"""Hostile npz archives (second security review): a zip that stores one array under two
members, so that the upload's checks and the job's loader could read different arrays."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rift.config import DatasetSpec
from rift.data import load_dataset
from rift.errors import DatasetError
from validator.dataset import inspect_dataset_file


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _images(nan: bool = False) -> np.ndarray:
    images = (np.arange(20 * 64).reshape(20, 1, 8, 8) * 37 % 251 + 2).astype(np.float32) / 255
    if nan:
        images[0, 0, 0, 0] = np.nan
    return images


def _archive(path: Path, members: list[tuple[str, bytes]]) -> str:
    with warnings.catch_warnings():  # zipfile warns of the duplicate name it is told to write
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("second_name", ["x", "x.npy"])
def test_an_array_stored_twice_is_refused_by_the_upload_and_the_loader(
        tmp_path: Path, second_name: str) -> None:
    # Before: the upload checked "x.npy" (for a repeated name, the last of them) and accepted
    # the file, while numpy's archive["x"] opens a member named "x" first: the job read a NaN
    # array the upload never saw (or, with finite values, another shape and count).
    path = _archive(tmp_path / "d.npz", [("x.npy", _npy(_images())),
                                         ("y.npy", _npy(np.arange(20) % 3)),
                                         (second_name, _npy(_images(nan=True)))])
    message = r"holds array 'x' twice \(zip members 'x\.npy' and '" + second_name.replace(
        ".", r"\.") + "'\\)"
    with pytest.raises(DatasetError, match=message):
        inspect_dataset_file(path, "d.npz", 10**8)
    with pytest.raises(DatasetError, match=message):
        load_dataset(DatasetSpec(name="npz", path=path), seed=0)


def test_an_array_stored_once_beside_other_members_is_read_by_both(tmp_path: Path) -> None:
    path = _archive(tmp_path / "d.npz", [("x.npy", _npy(_images())),
                                         ("y.npy", _npy(np.arange(20) % 3)),
                                         ("notes", b"not an array")])
    assert inspect_dataset_file(path, "d.npz", 10**8).num_examples == 20
    assert load_dataset(DatasetSpec(name="npz", path=path), seed=0).num_classes == 3


def _header_only(shape: tuple[int, ...]) -> bytes:
    """An ``.npy`` of float32 ``shape`` without its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(4, 1, 2**31, 2**31), (4, 2**62), (4, 1, 2**32, 2**30)])
def test_a_shape_whose_size_overflows_int64_is_refused(tmp_path: Path,
                                                      shape: tuple[int, ...]) -> None:
    # Before: numpy's int64 product of the shape wrapped to 0, so a member holding only its
    # header matched it; the upload recorded 2**31 × 2**31 images (or 2**62 features, past the
    # row's integer column) and the job failed reading the file.
    path = _archive(tmp_path / "d.npz", [("x.npy", _header_only(shape)),
                                         ("y.npy", _npy(np.arange(4) % 2))])
    with pytest.raises(DatasetError, match=r"key 'x' is truncated or corrupt: shape .* needs "
                                           r"\d{19,} bytes, the member has 128"):
        inspect_dataset_file(path, "d.npz", 10**8)
