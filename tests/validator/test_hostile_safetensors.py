"""Hostile safetensors headers (second security review): shapes the header check and the
job's reader (the safetensors library, then torch) must judge alike."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from rift.checkpoints import load_state_dict
from rift.errors import CheckpointError
from validator.checkpoint import inspect_checkpoint_file


def _file(path: Path, header: dict[str, object], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _with_empty(path: Path, shape: list[int]) -> Path:
    """A file of one real tensor and an empty one of ``shape`` (no bytes)."""
    return _file(path, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "e": {"dtype": "F32", "shape": shape, "data_offsets": [8, 8]}},
                 b"\x00\x00\x80?" * 2)


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64], [2**32, 2**32, 0]])
def test_an_empty_tensor_with_sizes_past_int64_is_refused(tmp_path: Path,
                                                         shape: list[int]) -> None:
    # Before: zero elements, zero bytes, so the header check accepted it; the job's reader
    # then failed (torch's sizes are int64; the safetensors library multiplies the sizes left
    # to right in 64 bits and stops at the overflow).
    path = _with_empty(tmp_path / "m.safetensors", shape)
    with pytest.raises(CheckpointError, match=r"tensor 'e': shape .* has more than "
                                              r"9223372036854775807 elements"):
        inspect_checkpoint_file(path, "m.safetensors")


def test_an_empty_tensor_within_int64_is_read_alike(tmp_path: Path) -> None:
    path = _with_empty(tmp_path / "m.safetensors", [0, 2**62])
    inspection = inspect_checkpoint_file(path, "m.safetensors")
    state = load_state_dict(path)
    assert inspection.shapes == {key: tuple(value.shape) for key, value in state.items()}
