"""The key → shape and dtype maps of a stored checkpoint, for the check that it fits a job's
architecture.

Checkpoints are validated completely on upload, in the sandboxed validator; this module imports
no torch. A safetensors file is read only as far as its header (two ranged reads); a PyTorch file
has to be fetched and inspected by the validator, since its shapes live inside the pickle.
Where a fit check must tell a wrapper's copy of its network from a second network, it compares
digests of the tensors' values: a PyTorch file's from its inspection, a safetensors file's read
from the byte ranges of the tensors it names alone.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.errors import scratch_unavailable
from api.validation import Validator
from persistence.storage import ObjectStore
from rift.checkpoint_format import (
    MAX_SAFETENSORS_HEADER,
    SAFETENSORS_DTYPE_BITS,
    SAFETENSORS_TORCH_DTYPES,
    decode_floats,
    normalizer_keys,
    strip_wrapper_prefix,
)
from rift.errors import CheckpointEntryError, CheckpointError
from rift.tensor_digest import safetensors_digest

Shapes = dict[str, tuple[int, ...]]
#: Reads bytes [begin, end) of one file, as chunks (the object store's ``iter_range``).
ByteReader = Callable[[int, int], Iterable[bytes]]
#: Tensors the stored-checkpoint cache holds in all (:class:`StoredTensorsCache`): a header of
#: the format's 100 MB holds about a million, so the bound is on tensors, not checkpoints.
MAX_CACHED_TENSORS = 200_000


@dataclass(frozen=True)
class TensorRange:
    """Where a safetensors tensor's bytes are: [begin, end) from the file's first byte."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class CheckpointTensors:
    """Each normalised key's shape and torch dtype name (``float32``; keys whose dtype torch has
    no single name for are absent from ``dtypes``), of the chosen weights entry (or the first),
    and the file's weights entries (key paths; empty when its weights are at its top level)."""

    shapes: Shapes
    dtypes: dict[str, str] = field(default_factory=dict)
    entries: list[str] = field(default_factory=list)
    #: Values of the tensors that may be an input normaliser's (see the validator's
    #: ``CheckpointInspection.normalizers``).
    normalizers: dict[str, list[float]] = field(default_factory=dict)
    #: Digests of values (``rift.tensor_digest``) by normalised key: all of a PyTorch file's
    #: (from its inspection), those of a safetensors file that a fit check asked for.
    digests: dict[str, str] = field(default_factory=dict)
    #: A safetensors file's tensors by normalised key: where their bytes are, for digests.
    ranges: dict[str, TensorRange] = field(default_factory=dict)


def store_reader(store: ObjectStore, storage_key: str) -> ByteReader:
    """Ranges of the stored object ``storage_key``."""
    return lambda begin, end: store.iter_range(storage_key, begin, end)


def file_reader(path: Path) -> ByteReader:
    """Ranges of the local file ``path``, read in pieces of 1 MiB."""
    def read(begin: int, end: int) -> Iterator[bytes]:
        with path.open("rb") as handle:
            handle.seek(begin)
            while begin < end and (chunk := handle.read(min(end - begin, 1 << 20))):
                begin += len(chunk)
                yield chunk
    return read


def _bytes(read: ByteReader, begin: int, end: int) -> bytes:
    return b"".join(read(begin, end))


def _safetensors_header(read: ByteReader) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (without ``__metadata__``) and where its data begins.

    Raises:
        CheckpointError: the header claims more than the format's size.
    """
    header_length = int.from_bytes(_bytes(read, 0, 8), "little")
    if header_length > MAX_SAFETENSORS_HEADER:
        # Checked on upload; a stored object is not trusted to be the one checked.
        raise CheckpointError(f"the stored safetensors checkpoint claims a "
                              f"{header_length}-byte header, more than the format's "
                              f"{MAX_SAFETENSORS_HEADER}")
    header = json.loads(_bytes(read, 8, 8 + header_length).decode("utf-8"))
    header.pop("__metadata__", None)
    return header, 8 + header_length


def _ranges(header: dict[str, Any], data: int) -> dict[str, TensorRange]:
    return {strip_wrapper_prefix(key): TensorRange(value["dtype"], tuple(value["shape"]),
                                                   data + value["data_offsets"][0],
                                                   data + value["data_offsets"][1])
            for key, value in header.items()}


def _stored_length(tensor: TensorRange) -> bool:
    """Whether ``tensor``'s range is as long as its dtype × shape take (the file was checked
    whole on upload; a stored object is not trusted to be the one checked)."""
    bits = SAFETENSORS_DTYPE_BITS.get(tensor.dtype)
    return bits is not None and (
        tensor.end - tensor.begin == -(-math.prod(tensor.shape) * bits // 8))


def safetensors_digests(read: ByteReader, ranges: Mapping[str, TensorRange],
                        keys: Iterable[str]) -> dict[str, str]:
    """The value digests of the safetensors tensors ``keys`` (normalised keys of ``ranges``),
    read from their byte ranges alone; keys that are not there, or whose range is not the
    length their dtype and shape take, are left out."""
    return {key: safetensors_digest(read(ranges[key].begin, ranges[key].end), ranges[key].dtype,
                                    ranges[key].shape)
            for key in keys if key in ranges and _stored_length(ranges[key])}


def uploaded_safetensors_ranges(path: Path) -> dict[str, TensorRange]:
    """The tensors of an uploaded (already validated) safetensors file and their byte ranges."""
    return _ranges(*_safetensors_header(file_reader(path)))


def stored_checkpoint_tensors(
    store: ObjectStore, storage_key: str, fmt: str, scratch_dir: Path, validator: Validator,
    entry: str | None = None,
) -> CheckpointTensors:
    """Key (wrapper prefixes stripped) → shape and dtype of a checkpoint already in the store,
    of its weights entry ``entry`` when given (with a PyTorch file's value digests).

    Raises:
        CheckpointEntryError: ``entry`` is not one of the file's (a safetensors file has none).
        RiftError / ApiError: as :meth:`Validator.inspect_checkpoint`, for a PyTorch file.
    """
    if fmt == "safetensors":
        if entry is not None:
            raise CheckpointEntryError(
                "the checkpoint is a safetensors file: one flat set of weights, without entries; "
                "leave out checkpoint_entry")
        read = store_reader(store, storage_key)
        header, data = _safetensors_header(read)
        # A few values each (a bounded number of tensors), read by ranges: the file was checked
        # whole on upload, and a range is read only when its length is what dtype × shape take.
        normalizers: dict[str, list[float]] = {}
        for key in normalizer_keys((k, v["dtype"], math.prod(v["shape"]))
                                   for k, v in header.items()):
            begin, end = header[key]["data_offsets"]
            dtype = header[key]["dtype"]
            if end - begin != math.prod(header[key]["shape"]) * SAFETENSORS_DTYPE_BITS[dtype] // 8:
                continue
            normalizers[strip_wrapper_prefix(key)] = decode_floats(
                _bytes(read, data + begin, data + end), dtype)
        return CheckpointTensors(
            {strip_wrapper_prefix(k): tuple(v["shape"]) for k, v in header.items()},
            {strip_wrapper_prefix(k): SAFETENSORS_TORCH_DTYPES[v["dtype"]]
             for k, v in header.items() if v["dtype"] in SAFETENSORS_TORCH_DTYPES},
            normalizers=normalizers, ranges=_ranges(header, data))
    try:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(dir=scratch_dir, prefix="checkpoint-")
    except OSError as exc:
        raise scratch_unavailable(exc) from exc
    with scratch as folder:
        local = store.download_to(storage_key, Path(folder) / "checkpoint.pt")
        inspection = validator.inspect_checkpoint(local, storage_key, entry, digests=True)
        return CheckpointTensors(inspection.shapes, inspection.dtypes, inspection.entries,
                                 inspection.normalizers, inspection.digests)


class StoredTensorsCache:
    """What job creation read from stored safetensors checkpoints (their headers' shapes,
    dtypes and byte ranges, normaliser values, the digests a fit check asked for), by
    checkpoint id and SHA-256, in one API process: another job from the same checkpoint reads
    none of it again (a header may be 100 MB of JSON). A checkpoint's file never changes, so
    nothing goes stale: a deleted checkpoint is unknown before this is asked. Least recently
    used dropped first, beyond :data:`MAX_CACHED_TENSORS` tensors in all; safe across
    threads."""

    def __init__(self, max_tensors: int = MAX_CACHED_TENSORS) -> None:
        self._max_tensors = max_tensors
        self._entries: OrderedDict[tuple[str, str], CheckpointTensors] = OrderedDict()
        self._tensors = 0
        self._lock = threading.Lock()

    def get(self, checkpoint_id: str, sha256: str) -> CheckpointTensors | None:
        with self._lock:
            found = self._entries.get((checkpoint_id, sha256))
            if found is not None:
                self._entries.move_to_end((checkpoint_id, sha256))
            return found

    def put(self, checkpoint_id: str, sha256: str, tensors: CheckpointTensors) -> None:
        size = len(tensors.shapes)
        if size > self._max_tensors:
            return
        with self._lock:
            replaced = self._entries.pop((checkpoint_id, sha256), None)
            if replaced is not None:
                self._tensors -= len(replaced.shapes)
            self._entries[(checkpoint_id, sha256)] = tensors
            self._tensors += size
            while self._tensors > self._max_tensors:
                _, dropped = self._entries.popitem(last=False)
                self._tensors -= len(dropped.shapes)
