"""Digests of a tensor's values, so that two tensors of one checkpoint can be compared without
holding either: job creation's fit check compares a network's weights with their copy under
another prefix (``rift.checkpoint_layouts``) by the digests of the stored values, where the job
compares the tensors themselves (``torch.equal``). Imports no torch: the API digests a stored
safetensors file's byte ranges, the validator a PyTorch file's tensors (as numpy arrays).

Values are digested in a canonical form, so that equal digests mean what ``torch.equal`` calls
equal: floating-point values as float32 (which holds every float16, bf16 and float8 value
exactly: a bf16 copy of float32 weights holding the same values is the same network), with
negative zeros made positive (``-0.0 == 0.0``), integers and booleans as int64, complex values
as complex128. float64 values are rounded to float32 too, so a float64 copy of float32 weights
is a copy, as the job reads it; two float64 networks that differ only below float32's precision
then digest alike, and the job, which compares the values themselves, refuses them instead of
job creation: a refusal at creation must never be one the job would not make. Digests are
only ever compared within one file, made by one side. Left different where ``torch.equal`` may
call them equal: safetensors' 8-, 6- and 4-bit floats and uint64, kept as raw bytes (numpy
cannot read them as values), beside a copy in another type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

#: Safetensors dtypes read as numpy arrays (little-endian), by the kind they are digested as.
_REAL32 = {"F16": "<f2", "F32": "<f4"}
_INTEGER = {"BOOL": "u1", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "I32": "<i4",
            "U32": "<u4", "I64": "<i8"}
_COMPLEX = {"C64": "<c8"}
_TYPED = {**_REAL32, "F64": "<f8", **_INTEGER, **_COMPLEX}
_ELEMENT_BYTES = {**{name: np.dtype(code).itemsize for name, code in _TYPED.items()}, "BF16": 2}
#: What each kind of values is digested as.
_CANONICAL = {"real32": "<f4", "integer": "<i8", "complex": "<c16"}


class ValueDigest:
    """A running digest of one tensor's values of one kind (``real32``, ``integer``,
    ``complex``, or ``raw:<dtype>`` for bytes compared as they are) and shape."""

    def __init__(self, kind: str, shape: Sequence[int]) -> None:
        self._kind = kind
        self._hash = hashlib.sha256()  # hardware-accelerated where blake2b is not
        self._hash.update(f"{kind}{tuple(int(d) for d in shape)}".encode())

    def add(self, values: np.ndarray | bytes) -> None:
        """The next values, in the tensor's row-major order (bytes: taken as they are)."""
        if isinstance(values, bytes):
            self._hash.update(values)
            return
        canonical = np.asarray(values, dtype=_CANONICAL.get(self._kind))
        if self._kind != "integer":
            canonical = canonical + canonical.dtype.type(0)  # -0.0 + 0.0 is +0.0
        self._hash.update(np.ascontiguousarray(canonical).data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:32]


def safetensors_kind(dtype: str) -> str:
    """The kind a tensor of safetensors ``dtype`` is digested as."""
    if dtype in _REAL32 or dtype in ("BF16", "F64"):
        return "real32"
    if dtype in _INTEGER:
        return "integer"
    if dtype in _COMPLEX:
        return "complex"
    return f"raw:{dtype}"


def _values(raw: bytes, dtype: str) -> np.ndarray | bytes:
    if dtype == "BF16":  # bf16 is float32's upper half
        halves = np.frombuffer(raw, dtype="<u2").astype("<u4")
        return (halves << 16).view("<f4")
    code = _TYPED.get(dtype)
    return raw if code is None else np.frombuffer(raw, dtype=code)


def safetensors_digest(chunks: Iterable[bytes], dtype: str, shape: Sequence[int]) -> str:
    """The digest of a safetensors tensor of ``dtype`` and ``shape`` whose stored bytes are
    ``chunks`` (of any lengths)."""
    digest = ValueDigest(safetensors_kind(dtype), shape)
    size = _ELEMENT_BYTES.get(dtype, 1)
    pending = b""
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % size
        if whole:
            digest.add(_values(pending[:whole], dtype))
            pending = pending[whole:]
    if pending:
        digest.add(pending)  # a truncated element: part of what is compared all the same
    return digest.hexdigest()
