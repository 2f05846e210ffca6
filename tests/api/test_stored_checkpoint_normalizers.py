"""Reading a stored safetensors checkpoint's normaliser values at job creation
(``api/checkpoint_validation.py``): the API reads them by byte ranges and must not trust the
stored bytes — the number of ranges it reads, their lengths and the header's claimed size are
bounded, whatever the file says."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from api.checkpoint_validation import stored_checkpoint_tensors
from persistence.storage import LocalObjectStore
from rift.checkpoint_format import MAX_NORMALIZER_TENSORS
from rift.errors import CheckpointError
from tests.api.helpers import CountingStore


def _safetensors(header: dict[str, object], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def _tensors(named: dict[str, list[float]]) -> bytes:
    header: dict[str, object] = {}
    data = b""
    for name, values in named.items():
        raw = np.asarray(values, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": [len(values)],
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return _safetensors(header, data)


def _read(store: LocalObjectStore, payload: bytes, tmp_path: Path) -> dict[str, list[float]]:
    store.put_bytes("checkpoints/c.safetensors", payload)
    return stored_checkpoint_tensors(store, "checkpoints/c.safetensors", "safetensors",
                                     tmp_path / "scratch", validator=None).normalizers  # type: ignore[arg-type]


def test_many_normaliser_named_tensors_cost_a_bounded_number_of_reads(tmp_path: Path) -> None:
    # 1000 pairs of one value each: one range request per tensor (2000 object-store GETs at
    # every job creation) before the bound.
    store = CountingStore(tmp_path / "store")
    named = {f"layer{i}.{leaf}": [0.5] for i in range(1000) for leaf in ("mean", "std")}
    normalizers = _read(store, _tensors(named), tmp_path)
    assert len(normalizers) == MAX_NORMALIZER_TENSORS
    assert len(store.ranges) <= 2 + MAX_NORMALIZER_TENSORS
    # Pairs kept whole, in file order.
    assert list(normalizers)[:2] == ["layer0.mean", "layer0.std"]


def test_a_normaliser_name_without_its_partner_is_not_read(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    normalizers = _read(store, _tensors({"module.mu": [0.5], "module.sigma": [0.25],
                                         "head.mean": [1.0]}), tmp_path)
    assert normalizers == {"mu": [0.5], "sigma": [0.25]}


def test_a_range_longer_than_its_tensor_is_not_read(tmp_path: Path) -> None:
    # A stored object whose header gives a 3-value tensor a 4000-byte range: read as 1000
    # values before; now skipped (the job's own load compares the real values).
    data = np.ones(1000, "<f4").tobytes() + np.ones(3, "<f4").tobytes()
    header = {"a.mean": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4000]},
              "a.std": {"dtype": "F32", "shape": [3], "data_offsets": [4000, 4012]}}
    store = CountingStore(tmp_path / "store")
    normalizers = _read(store, _safetensors(header, data), tmp_path)
    assert normalizers == {"a.std": [1.0, 1.0, 1.0]}
    assert all(end is not None and end - start <= 4096 for start, end in store.ranges[2:])


def test_a_stored_header_length_beyond_the_format_is_refused(tmp_path: Path) -> None:
    payload = struct.pack("<Q", 1 << 40) + b"{}"
    with pytest.raises(CheckpointError, match="header"):
        _read(LocalObjectStore(tmp_path / "store"), payload, tmp_path)
