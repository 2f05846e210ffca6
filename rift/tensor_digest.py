"""Digests of a tensor's values, so that two tensors of one checkpoint can be compared without
holding either: job creation's fit check compares a network's weights with their copy under
another prefix (``rift.checkpoint_layouts``) by the digests of the stored values, where the job
compares the tensors themselves (``torch.equal``). Imports no torch: the API digests a stored
safetensors file's byte ranges, the validator a PyTorch file's tensors (as numpy arrays).

Values are digested in a canonical form, so that equal digests mean what ``torch.equal`` calls
equal: floating-point values as float64 with negative zeros made positive (``-0.0 == 0.0``, and
a bf16 copy of float32 weights holding the same values is the same network), integers and
booleans as int64, complex values as complex128. Digests are only ever compared within one
file, made by one side. Left as raw bytes (compared exactly): safetensors' 8-, 6- and 4-bit
floats and uint64, which numpy cannot read as values; a copy in such a type and another one
differs from its original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

#: Safetensors dtypes read as numpy arrays (little-endian), by the kind they are digested as.
_REAL = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
_INTEGER = {"BOOL": "u1", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "I32": "<i4",
            "U32": "<u4", "I64": "<i8"}
_COMPLEX = {"C64": "<c8"}
_ELEMENT_BYTES = {**{name: np.dtype(code).itemsize
                     for name, code in {**_REAL, **_INTEGER, **_COMPLEX}.items()}, "BF16": 2}


class ValueDigest:
    """A running digest of one tensor's values of one kind (``real``, ``integer``, ``complex``,
    or ``raw:<dtype>`` for bytes compared as they are) and shape."""

    def __init__(self, kind: str, shape: Sequence[int]) -> None:
        self._kind = kind
        self._hash = hashlib.blake2b(digest_size=16)
        self._hash.update(f"{kind}{tuple(int(d) for d in shape)}".encode())

    def add(self, values: np.ndarray | bytes) -> None:
        """The next values, in the tensor's row-major order (bytes: taken as they are)."""
        if isinstance(values, bytes):
            self._hash.update(values)
            return
        if self._kind == "real":
            values = np.asarray(values, dtype="<f8") + 0.0  # -0.0 + 0.0 is +0.0
        elif self._kind == "integer":
            values = np.asarray(values, dtype="<i8")
        elif self._kind == "complex":
            values = np.asarray(values, dtype="<c16") + 0.0
        self._hash.update(values.tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def safetensors_kind(dtype: str) -> str:
    """The kind a tensor of safetensors ``dtype`` is digested as."""
    if dtype in _REAL or dtype == "BF16":
        return "real"
    if dtype in _INTEGER:
        return "integer"
    if dtype in _COMPLEX:
        return "complex"
    return f"raw:{dtype}"


def _values(raw: bytes, dtype: str) -> np.ndarray | bytes:
    if dtype == "BF16":  # bf16 is float32's upper half
        halves = np.frombuffer(raw, dtype="<u2").astype("<u4")
        return (halves << 16).view("<f4")
    code = _REAL.get(dtype) or _INTEGER.get(dtype) or _COMPLEX.get(dtype)
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
