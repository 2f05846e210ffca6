"""The key → shape and dtype maps of a stored checkpoint, for the check that it fits a job's
architecture.

Checkpoints are validated completely on upload, in the sandboxed validator; this module imports
no torch. A safetensors file is read only as far as its header (two ranged reads); a PyTorch file
has to be fetched and inspected by the validator, since its shapes live inside the pickle.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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

Shapes = dict[str, tuple[int, ...]]


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


def stored_checkpoint_tensors(
    store: ObjectStore, storage_key: str, fmt: str, scratch_dir: Path, validator: Validator,
    entry: str | None = None,
) -> CheckpointTensors:
    """Key (wrapper prefixes stripped) → shape and dtype of a checkpoint already in the store,
    of its weights entry ``entry`` when given.

    Raises:
        CheckpointEntryError: ``entry`` is not one of the file's (a safetensors file has none).
        RiftError / ApiError: as :meth:`Validator.inspect_checkpoint`, for a PyTorch file.
    """
    if fmt == "safetensors":
        if entry is not None:
            raise CheckpointEntryError(
                "the checkpoint is a safetensors file: one flat set of weights, without entries; "
                "leave out checkpoint_entry")
        header_length = int.from_bytes(b"".join(store.iter_range(storage_key, 0, 8)), "little")
        if header_length > MAX_SAFETENSORS_HEADER:
            # Checked on upload; a stored object is not trusted to be the one checked.
            raise CheckpointError(f"the stored safetensors checkpoint claims a "
                                  f"{header_length}-byte header, more than the format's "
                                  f"{MAX_SAFETENSORS_HEADER}")
        raw = b"".join(store.iter_range(storage_key, 8, 8 + header_length))
        header = json.loads(raw.decode("utf-8"))
        header.pop("__metadata__", None)
        data = 8 + header_length
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
                b"".join(store.iter_range(storage_key, data + begin, data + end)), dtype)
        return CheckpointTensors(
            {strip_wrapper_prefix(k): tuple(v["shape"]) for k, v in header.items()},
            {strip_wrapper_prefix(k): SAFETENSORS_TORCH_DTYPES[v["dtype"]]
             for k, v in header.items() if v["dtype"] in SAFETENSORS_TORCH_DTYPES},
            normalizers=normalizers)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="checkpoint-") as folder:
        local = store.download_to(storage_key, Path(folder) / "checkpoint.pt")
        inspection = validator.inspect_checkpoint(local, storage_key, entry)
        return CheckpointTensors(inspection.shapes, inspection.dtypes, inspection.entries,
                                 inspection.normalizers)
