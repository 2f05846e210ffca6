"""numpy arrays in untrusted pickles (second security review): a dtype whose pickled flags are
forged must never reach an array, in a checkpoint or in a CIFAR batch file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rift.checkpoints import load_state_dict
from rift.data.safe_pickle import load_array_pickle
from rift.errors import CheckpointError, DatasetError
from validator.checkpoint import inspect_checkpoint_file


class ForgedDtype:
    """Pickles as ``dtype(kind)`` whose state claims ``flags`` (numpy's own pickling writes
    the real ones)."""

    def __init__(self, kind: str, flags: int) -> None:
        self.kind, self.flags = kind, flags

    def __reduce__(self) -> object:
        return np.dtype, (self.kind, False, True), (3, "|", None, None, None, -1, -1, self.flags)


class ForgedArray:
    """Pickles as numpy's array reconstruction, with raw bytes as the data of ``dtype``: for an
    object dtype stripped of its flags, 0x41414141... read as pointers to Python objects."""

    def __init__(self, dtype: ForgedDtype) -> None:
        self.dtype = dtype

    def __reduce__(self) -> object:
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2,), self.dtype, False, b"\x41" * 16))


def _checkpoint(path: Path, extra: object) -> Path:
    # Beside the weights, where a numpy value (an accuracy, arguments) is kept aside.
    torch.save({"state_dict": {"w": torch.ones(4)}, "args": extra}, path)
    return path


def test_an_object_array_of_raw_pointers_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    # Before: accepted; the object array held pointers the file chose, and the first read of
    # an element (repr, float()) crashed the process (SIGSEGV).
    path = _checkpoint(tmp_path / "c.pt", ForgedArray(ForgedDtype("O8", 0)))
    with pytest.raises(CheckpointError, match=r"a pickled numpy dtype '\|O' claims flags 0 .* "
                                              r"numpy's has 63 .*: a forged dtype"):
        inspect_checkpoint_file(path, "c.pt")
    with pytest.raises(CheckpointError, match="a forged dtype"):
        load_state_dict(path)


def test_forged_flags_on_a_number_dtype_are_refused(tmp_path: Path) -> None:
    # Before: numpy's own clean-up of the half-built array raised "get_clear_loop not set" at
    # a random later point.
    path = _checkpoint(tmp_path / "c.pt", ForgedArray(ForgedDtype("f8", 63)))
    with pytest.raises(CheckpointError, match=r"dtype '\|f8' claims flags 63 .*: a forged dtype"):
        inspect_checkpoint_file(path, "c.pt")


def test_real_numpy_values_beside_the_weights_still_load(tmp_path: Path) -> None:
    values = {"scalar": np.float64(0.9), "array": np.arange(6, dtype=">i4").reshape(2, 3),
              "objects": np.array([{"lr": 0.1}, "text"], dtype=object),
              "strings": np.array(["cat", "dog"])}
    path = _checkpoint(tmp_path / "c.pt", values)
    assert inspect_checkpoint_file(path, "c.pt").num_tensors == 1
    assert list(load_state_dict(path)) == ["w"]


def test_a_cifar_batch_with_a_forged_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": ForgedArray(ForgedDtype("O8", 0)),
                                   "labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetError, match="a forged dtype"):
        load_array_pickle(path)


def test_a_real_cifar_batch_reads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    buffer = io.BytesIO()
    pickle.dump({"data": data, "labels": [0, 1], "scalar": np.float32(1.5)}, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    loaded = load_array_pickle(path)
    assert np.array_equal(loaded["data"], data) and loaded["labels"] == [0, 1]
    assert loaded["scalar"] == np.float32(1.5)
