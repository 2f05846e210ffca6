"""Checking an uploaded checkpoint completely, slice by slice, so memory stays flat whatever its
size.

- safetensors: the header is parsed and checked without torch (``rift.checkpoint_format``), then
  every floating-point tensor's bytes are read in chunks of :data:`CHUNK_BYTES` into one reused
  buffer and tested for NaN/Inf on their bit patterns (so bf16 and the 8-bit formats, which numpy
  lacks, are checked too). Plain reads, not a memory map: pages of a mapped file stay in the
  process's resident set until unmapped, reads only pass through the page cache.
- PyTorch files: ``torch.load(weights_only=True, mmap=True)`` through ``rift.checkpoints`` (the
  restricted unpickler: a pickle carrying code is refused without running it, ordinary objects
  beside the weights become inert placeholders; the tensors stay in the file), then each
  tensor is checked in pieces of at most :data:`CHUNK_BYTES`, and the pages of every piece are
  dropped from the resident set after it is checked (``madvise(MADV_DONTNEED)``; the mapping is
  private and never written, so nothing is lost). torch is imported only on this path.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rift.checkpoint_format import (
    SAFETENSORS_DTYPE_BITS,
    SAFETENSORS_TORCH_DTYPES,
    TensorRecord,
    decode_floats,
    detect_checkpoint_format,
    normalizer_keys,
    read_safetensors_header,
    strip_wrapper_prefix,
)
from rift.errors import CheckpointEntryError, CheckpointError, RiftError
from rift.tensor_digest import ValueDigest
from validator.torch_records import storage_size_problem

if TYPE_CHECKING:
    from torch import Tensor

#: Bytes of tensor data checked at a time: bounds the checker's memory (a multiple of 8).
CHUNK_BYTES = 8 * 1024 * 1024
_PREVIEW_ITEMS = 8

# Non-finite values by bit pattern, per safetensors float dtype: (unsigned view, exponent mask,
# mantissa mask). All-ones exponent is Inf (mantissa 0) or NaN (mantissa not 0) in IEEE formats.
_IEEE = {
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F32": (np.uint32, 0x7F800000, 0x007FFFFF),
    "C64": (np.uint32, 0x7F800000, 0x007FFFFF),  # two float32 per element
    "F64": (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F8_E5M2": (np.uint8, 0x7C, 0x03),
}
# Formats without infinities, whose only NaN patterns are these (sign bit ignored): E4M3FN uses
# S.1111.111, E8M0 uses 0xFF. F4 and F6 have no non-finite values at all.
_NAN_ONLY = {"F8_E4M3": (0x7F, 0x7F), "F8_E8M0": (0xFF, 0xFF)}


@dataclass(frozen=True)
class CheckpointInspection:
    """What a valid checkpoint holds. ``num_parameters`` counts elements over all tensors;
    ``shapes`` maps each normalised key (wrapper prefixes stripped) to its shape, ``dtypes`` to
    torch's name of its dtype (``float32``; absent for dtypes torch has no single name for)."""

    format: str  # "safetensors" | "torch"
    num_tensors: int
    num_parameters: int
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str] = field(default_factory=dict)
    #: The file's weights entries (key paths such as "ema"; empty when its weights are at its
    #: top level). The counts, shapes and dtypes are those of the chosen entry, or without one
    #: of the first (each entry is checked in full).
    entries: list[str] = field(default_factory=list)
    #: The values of the tensors that may be an input normaliser's buffers
    #: (``rift.checkpoint_format.normalizer_keys``), by normalised key: job creation
    #: compares them with the job's normalisation (``validator/fit.py``).
    normalizers: dict[str, list[float]] = field(default_factory=dict)
    #: A PyTorch file's tensors of the chosen entry (or the first) by normalised key → digest
    #: of their values (``rift.tensor_digest``), when asked for: job creation tells a
    #: wrapper's copy of its network from a second network by them (``validator/fit.py``).
    digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInspection:
        shapes = {key: tuple(shape) for key, shape in data["shapes"].items()}
        return cls(data["format"], data["num_tensors"], data["num_parameters"], shapes,
                   dict(data.get("dtypes") or {}), list(data.get("entries") or []),
                   dict(data.get("normalizers") or {}), dict(data.get("digests") or {}))


def inspect_checkpoint_file(path: Path, display_name: str, entry: str | None = None, *,
                            digests: bool = False) -> CheckpointInspection:
    """Validate the checkpoint file at ``path`` completely and summarise it: the weights of its
    entry ``entry`` (a key path such as ``"ema"``), or without one every entry's. ``digests``:
    digest a PyTorch file's tensors as they are checked (``CheckpointInspection.digests``; a
    safetensors file's are read by the API from its byte ranges where needed).

    Raises:
        CheckpointEntryError: ``entry`` leads to no weights (a safetensors file has no entries).
        CheckpointError: the file is empty, corrupt, truncated, neither format, holds code or
            non-tensor objects, or non-finite values; the message names ``display_name``.
    """
    try:
        fmt = detect_checkpoint_format(path)
        if fmt == "safetensors":
            if entry is not None:
                raise CheckpointEntryError(
                    f"checkpoint {display_name} is a safetensors file: one flat set of weights, "
                    "without entries; leave out checkpoint_entry")
            return _inspect_safetensors(path, display_name)
        return _inspect_torch(path, display_name, entry, digests)
    except CheckpointEntryError as exc:
        raise CheckpointEntryError(exc.message.replace(path.name, display_name),
                                   exc.entries) from exc
    except RiftError as exc:
        # The library names the scratch file; the user knows the file by the name they uploaded.
        raise CheckpointError(exc.message.replace(path.name, display_name)) from exc
    except Exception as exc:  # any reader failure on untrusted bytes is the file's fault
        raise CheckpointError(
            f"cannot read checkpoint {display_name}: {type(exc).__name__}: {exc}") from exc


def _normalised_shapes(items: list[tuple[str, tuple[int, ...]]],
                       source: str) -> dict[str, tuple[int, ...]]:
    if not items:
        raise CheckpointError(f"{source} holds no tensors")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in items:
        clean = strip_wrapper_prefix(key)
        if clean in shapes:
            raise CheckpointError(
                f"{source}: key {key!r} collides with another key once prefixes are removed")
        shapes[clean] = shape
    return shapes


def _report_non_finite(bad: list[str], source: str) -> None:
    if bad:
        shown = ", ".join(bad[:_PREVIEW_ITEMS])
        if len(bad) > _PREVIEW_ITEMS:
            shown += f", … and {len(bad) - _PREVIEW_ITEMS} more"
        raise CheckpointError(f"{source} holds non-finite values in {shown}")


# -------------------------------------------------------------------------------- safetensors


def _count_non_finite(chunk: bytes | memoryview, dtype: str) -> tuple[int, int]:
    """(NaN, Inf) counts in the raw bytes of a tensor of safetensors ``dtype``."""
    if dtype in _IEEE:
        view, exponent, mantissa = _IEEE[dtype]
        bits = np.frombuffer(chunk, dtype=np.dtype(view).newbyteorder("<"))
        special = (bits & exponent) == exponent
        if not special.any():
            return 0, 0
        nan = int(((bits & mantissa) != 0)[special].sum())
        return nan, int(special.sum()) - nan
    if dtype in _NAN_ONLY:
        mask, pattern = _NAN_ONLY[dtype]
        return int(((np.frombuffer(chunk, dtype=np.uint8) & mask) == pattern).sum()), 0
    return 0, 0


def _data_offset(path: Path) -> int:
    with path.open("rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _inspect_safetensors(path: Path, display_name: str) -> CheckpointInspection:
    records, _ = read_safetensors_header(path)
    source = f"checkpoint {display_name}"
    shapes = _normalised_shapes([(r.name, r.shape) for r in records], source)
    start = _data_offset(path)
    buffer = bytearray(CHUNK_BYTES)
    bad: list[str] = []
    with path.open("rb", buffering=0) as handle:
        for record in sorted(records, key=lambda r: r.begin):
            nan, inf = _scan_record(handle, start, record, buffer)
            if nan or inf:
                bad.append(f"{strip_wrapper_prefix(record.name)} ({nan} NaN, {inf} Inf)")
    _report_non_finite(bad, source)
    dtypes = {strip_wrapper_prefix(r.name): SAFETENSORS_TORCH_DTYPES[r.dtype] for r in records
              if r.dtype in SAFETENSORS_TORCH_DTYPES}
    normalizers: dict[str, list[float]] = {}
    by_name = {record.name: record for record in records}
    with path.open("rb") as handle:
        for name in normalizer_keys((r.name, r.dtype, int(np.prod(r.shape, dtype=np.int64)))
                                    for r in records):
            record = by_name[name]
            handle.seek(start + record.begin)
            normalizers[strip_wrapper_prefix(record.name)] = decode_floats(
                handle.read(record.end - record.begin), record.dtype)
    return CheckpointInspection(
        "safetensors", len(records),
        sum(int(np.prod(r.shape, dtype=np.int64)) for r in records), shapes, dtypes,
        normalizers=normalizers)


def _scan_record(handle: Any, start: int, record: TensorRecord,
                 buffer: bytearray) -> tuple[int, int]:
    if record.dtype not in _IEEE and record.dtype not in _NAN_ONLY:
        return 0, 0  # integers, bool, F4/F6: every bit pattern is a finite value
    assert CHUNK_BYTES % (SAFETENSORS_DTYPE_BITS[record.dtype] // 8) == 0
    handle.seek(start + record.begin)
    remaining = record.end - record.begin
    nan = inf = 0
    view = memoryview(buffer)
    while remaining:
        size = min(remaining, len(buffer))
        filled = 0
        while filled < size:
            got = handle.readinto(view[filled:size])
            if not got:
                raise CheckpointError(f"tensor {record.name!r} is truncated")
            filled += got
        chunk_nan, chunk_inf = _count_non_finite(view[:size], record.dtype)
        nan += chunk_nan
        inf += chunk_inf
        remaining -= size
    return nan, inf


# ------------------------------------------------------------------------------------ PyTorch


def _inspect_torch(path: Path, display_name: str, entry: str | None,
                   digests: bool) -> CheckpointInspection:
    from rift.checkpoints import load_checkpoint_entries

    source = f"checkpoint {display_name}"
    with path.open("rb") as handle:
        # Only zip files can be memory-mapped; the legacy format is read into memory, within
        # the process's memory limit.
        mapped = handle.read(4) == b"PK\x03\x04"
    found = load_checkpoint_entries(path, entry=entry, mmap=mapped, check_finite=False)
    if mapped:
        problem = storage_size_problem(path)
        if problem is not None:
            raise CheckpointError(f"PyTorch checkpoint {display_name} is corrupt: {problem}")
    digested: dict[str, str] = {}
    for index, (name, state) in enumerate(found.weights.items()):
        # The chosen entry's digests (or the first's) only: the weights the job reads.
        _check_finite_pieces(state, f"{source} (entry {name!r})" if name else source, mapped,
                             digested if digests and index == 0 else None)
    state = next(iter(found.weights.values()))
    shapes = _normalised_shapes([(k, tuple(int(d) for d in t.shape)) for k, t in state.items()],
                                source)
    dtypes = {key: str(t.dtype).removeprefix("torch.") for key, t in state.items()}
    names = {torch_name: name for name, torch_name in SAFETENSORS_TORCH_DTYPES.items()}
    normalizers = {key: [float(v) for v in state[key].detach().double().flatten().tolist()]
                   for key in normalizer_keys((key, names.get(dtypes[key], ""), int(t.numel()))
                                              for key, t in state.items())}
    return CheckpointInspection("torch", len(state),
                                sum(int(t.numel()) for t in state.values()), shapes, dtypes,
                                found.entries, normalizers, digested)


def _check_finite_pieces(state: dict[str, Tensor], source: str, mapped: bool,
                         digests: dict[str, str] | None = None) -> None:
    """Refuse non-finite values; with ``digests``, digest every tensor into it on the way
    (by normalised key), its pages read once."""
    from rift.checkpoints import count_non_finite

    bad: list[str] = []
    for key, tensor in state.items():
        checked = tensor.is_floating_point() or tensor.is_complex()
        if not checked and digests is None:
            continue
        kind = _kind(tensor)
        digest = None if digests is None else ValueDigest(kind, tensor.shape)
        nan = inf = 0
        for piece in _pieces(tensor, CHUNK_BYTES // max(1, tensor.element_size())):
            if checked:
                piece_nan, piece_inf = count_non_finite(piece)  # fp8 included
                nan += piece_nan
                inf += piece_inf
            if digest is not None:
                digest.add(_digested_values(piece, kind))
            if mapped:
                _release(piece)
        if digest is not None and digests is not None:
            digests[strip_wrapper_prefix(key)] = digest.hexdigest()
        if nan or inf:
            bad.append(f"{key} ({nan} NaN, {inf} Inf)")
    _report_non_finite(bad, source)


def _kind(tensor: Tensor) -> str:
    """The kind ``rift.tensor_digest`` digests ``tensor``'s values as."""
    import torch

    if tensor.is_floating_point():
        return "real32"  # float64 too: rounded, so a float64 copy is a copy (rift.tensor_digest)
    if tensor.is_complex():
        return "complex"
    if tensor.dtype != torch.uint64:
        return "integer"  # bool and every integer type fit int64
    return f"raw:{tensor.dtype}"


def _digested_values(piece: Tensor, digest_kind: str) -> Any:
    """``piece``'s values as ``rift.tensor_digest.ValueDigest.add`` takes them."""
    import torch

    flat = piece.detach().reshape(-1)
    if digest_kind == "real32":  # float16, bf16 and float8 values are float32 ones exactly
        return flat.to(torch.float32).numpy()
    if digest_kind == "complex":
        return flat.to(torch.complex128).numpy()
    if digest_kind == "integer":
        return flat.to(torch.int64).numpy()
    return flat.contiguous().view(torch.uint8).numpy().tobytes()


def _pieces(tensor: Tensor, limit: int) -> Iterator[Tensor]:
    """Views of ``tensor`` of at most ``limit`` elements each that together cover it."""
    if tensor.numel() <= limit or tensor.dim() == 0:
        yield tensor
        return
    if tensor.is_contiguous():
        flat = tensor.view(-1)
        for begin in range(0, flat.numel(), limit):
            yield flat[begin:begin + limit]
        return
    rows = max(1, limit // max(1, tensor[0].numel()))
    for part in tensor.split(rows, dim=0):
        if part.numel() > limit:
            for row in part:
                yield from _pieces(row, limit)
        else:
            yield part


_MADV_DONTNEED = 4


def _release(piece: Tensor) -> None:
    """Drop the whole pages under a contiguous ``piece`` of a private, unwritten file mapping
    from the resident set (they are read from the file again if touched). Never call it on
    anonymous memory, whose pages this would zero."""
    if not piece.is_contiguous():
        return
    page = mmap.PAGESIZE
    begin = piece.data_ptr()
    end = begin + piece.numel() * piece.element_size()
    first = -(-begin // page) * page
    last = end // page * page
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
