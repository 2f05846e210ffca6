"""Safetensors files whose bytes depend only on their tensors and metadata.

``safetensors`` keeps a file's ``__metadata__`` in a Rust ``HashMap`` and writes its keys in that
map's order, which is seeded at random per map: the same tensors and metadata saved twice gave
files with different bytes (measured: 10 saves of one 7-key header, 10 different SHA-256), so two
identical runs' ``tuned.safetensors`` had different digests. Here the header is written again
with the metadata keys sorted and the tensor entries in the order of their data, so equal inputs
give equal bytes; the tensor data itself is left as safetensors wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from torch import Tensor

#: Safetensors pads its header with spaces to a multiple of 8 bytes, so tensor data stays aligned.
_HEADER_ALIGNMENT = 8
_LENGTH_BYTES = 8


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
                      ) -> bytes:
    """``tensors`` (CPU, contiguous, unshared) and str→str ``metadata`` as the bytes of one
    safetensors file, the same bytes for the same tensors and metadata."""
    from safetensors.torch import save

    raw = bytes(save(dict(tensors), metadata=dict(metadata) if metadata is not None else None))
    return canonical_header(raw)


def canonical_header(data: bytes) -> bytes:
    """Safetensors ``data`` with its header written in one order: ``__metadata__`` first with
    its keys sorted, then the tensors in the order of their data offsets."""
    length = int.from_bytes(data[:_LENGTH_BYTES], "little")
    header = json.loads(data[_LENGTH_BYTES:_LENGTH_BYTES + length])
    ordered: dict[str, object] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    for name, entry in sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])):
        ordered[name] = entry
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _HEADER_ALIGNMENT)
    return len(text).to_bytes(_LENGTH_BYTES, "little") + text + data[_LENGTH_BYTES + length:]
