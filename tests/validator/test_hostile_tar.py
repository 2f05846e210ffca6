"""Hostile ImageFolder tars (second security review): PAX records the upload accepted but the
worker could not extract. Each archive goes through the upload's check and the worker's
extraction (``worker.inputs.fetch_dataset``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from persistence.models import Dataset
from persistence.storage import LocalObjectStore
from rift.errors import DatasetError
from validator.dataset import inspect_dataset_file
from worker.inputs import fetch_dataset


def _png(shift: int) -> bytes:
    buffer = io.BytesIO()
    ramp = (np.arange(64).reshape(8, 8) * 3 + shift).astype(np.uint8)
    Image.fromarray(ramp).save(buffer, "PNG")
    return buffer.getvalue()


def _tar(path: Path, last: str, pax: dict[str, str] | None = None) -> Path:
    """Two classes of three images, then one more image named ``last`` with PAX records ``pax``."""
    names = [f"{label}/{i}.png" for label in ("cat", "dog") for i in range(3)] + [last]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for shift, name in enumerate(names):
            data = _png(shift)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == last:
                info.pax_headers = dict(pax or {})
            archive.addfile(info, io.BytesIO(data))
    return path


def _extract(tmp_path: Path, archive: Path) -> Path:
    store = LocalObjectStore(tmp_path / "objects")
    stored = store.put_bytes("datasets/d", archive.read_bytes())
    dataset = Dataset(id="d", filename="d.tar", kind="imagefolder", size=stored.size,
                      sha256=stored.sha256, storage_key=stored.key)
    return fetch_dataset(store, dataset, tmp_path / "work")


@pytest.mark.parametrize(("last", "pax", "problem"), [
    # The plain header ends a name at its first NUL; a PAX path record keeps it. Before: the
    # upload accepted it and extraction failed ("embedded null byte", a ValueError).
    ("dog/plain.png", {"path": "dog/a\x00b.png"}, "contains a NUL byte"),
    # Before: accepted; extraction failed (ENAMETOOLONG).
    ("dog/" + "n" * 300 + ".png", None, "has a path part longer than 255 bytes"),
], ids=["nul", "long_name"])
def test_names_no_file_system_keeps_are_refused_by_both(tmp_path: Path, last: str,
                                                        pax: dict[str, str] | None,
                                                        problem: str) -> None:
    archive = _tar(tmp_path / "d.tar", last, pax)
    with pytest.raises(DatasetError, match=problem):
        inspect_dataset_file(str(archive), "d.tar", 10**8)
    with pytest.raises(DatasetError, match=f"cannot be extracted: member .* {problem}"):
        _extract(tmp_path, archive)


def test_a_modification_time_out_of_range_is_not_applied(tmp_path: Path) -> None:
    # Before: accepted on upload; extraction failed ("timestamp out of range for platform
    # time_t", an OverflowError). The times of the extracted files are never read.
    archive = _tar(tmp_path / "d.tar", "dog/late.png", {"mtime": "-1e300"})
    assert inspect_dataset_file(str(archive), "d.tar", 10**8).num_classes == 2
    root = _extract(tmp_path, archive)
    assert (root / "dog" / "late.png").read_bytes() == _png(6)


def _tar_of(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of ``members`` in order: (name, file bytes), or (name, None) for a folder."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


_TREE = [(f"{label}/{i}.png", _png(3 * n + i)) for n, label in enumerate(("cat", "dog"))
         for i in range(3)]


def test_a_path_stored_as_a_file_and_a_folder_is_refused(tmp_path: Path) -> None:
    # Before: accepted on upload; extraction failed ("Not a directory").
    archive = _tar_of(tmp_path / "d.tar", [*_TREE, ("fox", b"notes"), ("fox/0.png", _png(9))])
    with pytest.raises(DatasetError, match=r"member 'fox/0\.png' needs 'fox' to be a folder and a "
                                           r"file at once .*tar czf data\.tgz -C FOLDER \."):
        inspect_dataset_file(str(archive), "d.tar", 10**8)
    with pytest.raises(DatasetError, match="cannot be extracted"):
        _extract(tmp_path, archive)
    archive = _tar_of(tmp_path / "e.tar", [*_TREE, ("cat/x", None), ("cat/x", b"notes")])
    with pytest.raises(DatasetError, match=r"member 'cat/x' needs 'cat/x' to be a folder"):
        inspect_dataset_file(str(archive), "e.tar", 10**8)


def test_an_image_stored_twice_is_read_once_or_refused_when_the_copies_differ(
        tmp_path: Path) -> None:
    # tar -rf appends a second copy, which extraction keeps. Before: a broken first copy
    # refused an upload whose job reads the good last one, and identical copies counted twice.
    twice = _tar_of(tmp_path / "d.tar", [*_TREE, ("./cat/0.png", _png(0)), ("cat", None)])
    assert inspect_dataset_file(str(twice), "d.tar", 10**8).num_examples == 6
    appended = _tar_of(tmp_path / "e.tar", [("cat/0.png", b"broken"), *_TREE])
    with pytest.raises(DatasetError, match=r"stores 'cat/0\.png' twice with different content "
                                           r".*extraction keeps the last copy"):
        inspect_dataset_file(str(appended), "e.tar", 10**8)
