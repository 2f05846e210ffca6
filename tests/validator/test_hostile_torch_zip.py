"""Hostile PyTorch zip checkpoints (second security review): records named twice, which
Python's zipfile (the storage-size check) and torch's reader need not take alike."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rift.checkpoints import load_state_dict
from rift.errors import CheckpointError
from validator.checkpoint import inspect_checkpoint_file

Edit = Callable[[str, bytes], list[tuple[str, bytes]]]


def _rewritten(tmp_path: Path, edit: Edit) -> Path:
    """torch.save's file of one float32 tensor, each record replaced by ``edit``'s."""
    source = tmp_path / "source.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, source)
    target = tmp_path / "c.pt"
    with zipfile.ZipFile(source) as original, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the repeated name
        with zipfile.ZipFile(target, "w") as out:
            for name in original.namelist():
                for new_name, data in edit(name, original.read(name)):
                    out.writestr(new_name, data)
    return target


def _short_storage_and_second_pickle(name: str, data: bytes) -> list[tuple[str, bytes]]:
    if name.endswith("/data.pkl"):
        return [(name, data), (name, data)]
    return [(name, data[:8] if name.endswith("/data/0") else data)]


def test_a_second_data_pkl_does_not_hide_a_short_storage(tmp_path: Path) -> None:
    # Before: with two data.pkl records the storage-size check skipped the file as "not
    # torch's layout"; the memory-mapped load accepted it (reading 8 bytes past the record) and
    # the job's plain load failed ("record size (8 bytes) does not match expected size").
    path = _rewritten(tmp_path, _short_storage_and_second_pickle)
    with pytest.raises(CheckpointError):
        load_state_dict(path)  # the job's read
    with pytest.raises(CheckpointError, match=r"the zip holds 'source/data\.pkl' more than once"):
        inspect_checkpoint_file(path, "c.pt")


def test_a_storage_record_named_twice_is_refused(tmp_path: Path) -> None:
    path = _rewritten(tmp_path, lambda name, data: (
        [(name, b"\x00" * 16), (name, data)] if name.endswith("/data/0") else [(name, data)]))
    with pytest.raises(CheckpointError, match=r"the zip holds 'source/data/0' more than once"):
        inspect_checkpoint_file(path, "c.pt")
