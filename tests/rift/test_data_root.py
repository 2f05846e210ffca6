"""The files each built-in dataset needs under DATA_ROOT (rift/data_root.py): a dataset counts as
held exactly when the library's loader finds all its files, on files the loaders really read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rift.config import DatasetSpec
from rift.data import load_dataset
from rift.data_root import (
    DATA_ROOT_FILES,
    datasets_present,
    expected_layout,
    missing_files,
    reads_data_root,
)
from rift.errors import DatasetError
from tests.rift.test_data import _write_cifar10, _write_cifar100, _write_mnist, _write_svhn

WRITERS: dict[str, Callable[[Path], object]] = {
    "cifar10": _write_cifar10, "cifar100": _write_cifar100, "svhn": _write_svhn,
    "mnist": _write_mnist,
}


def test_every_dataset_read_from_data_root_is_listed() -> None:
    assert set(DATA_ROOT_FILES) == set(WRITERS)
    assert not reads_data_root("digits") and not reads_data_root("npz")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_held_exactly_when_the_loader_finds_every_file(tmp_path: Path, name: str) -> None:
    assert datasets_present(tmp_path / "missing") == []
    WRITERS[name](tmp_path)
    assert datasets_present(tmp_path) == [name] and missing_files(name, tmp_path) == []
    load_dataset(DatasetSpec(name=name, root=str(tmp_path)), seed=0)
    for relative in DATA_ROOT_FILES[name]:
        path = tmp_path / relative
        content = path.read_bytes()
        path.unlink()
        path.mkdir()  # a folder where the file should be is no file
        assert missing_files(name, tmp_path) == [relative]
        assert datasets_present(tmp_path) == []
        with pytest.raises(DatasetError):
            load_dataset(DatasetSpec(name=name, root=str(tmp_path)), seed=0)
        path.rmdir()
        path.write_bytes(content)


def test_the_layout_as_messages_give_it() -> None:
    assert expected_layout("cifar100") == "cifar-100-python/{train, test}"
    assert expected_layout("svhn") == "{train_32x32.mat, test_32x32.mat}"
    assert expected_layout("cifar10") == (
        "cifar-10-batches-py/{data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
        "data_batch_5, test_batch}")
