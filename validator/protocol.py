"""The validator's request and reply, JSON sent over one Unix-socket connection per check, and the
library errors carried across the process boundary. Imports no torch: the API uses it too.

A request is ``{"op": OP, "limits": {memory_bytes, cpu_seconds, wall_seconds}, ...arguments}``
with OP one of :data:`OPERATIONS`. A reply is
``{"ok": true, "result": {...}}``, or ``{"ok": false, "error": {...}}`` for a library error (the
upload's fault: encoded by :func:`encode_error`), or ``{"ok": false, "internal": "..."}`` for
anything else; every reply also carries ``"peak_rss_kb": {"start": kB, "end": kB}``, the child's
VmHWM before and after the work.
"""

from __future__ import annotations

from typing import Any

from rift.errors import (
    CheckpointEntryError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DatasetError,
    RiftError,
    UnknownArchitectureError,
)

#: ``checkpoint``: {path, display_name, entry?, digests?}; ``dataset``: {path, display_name,
#: max_unpacked_bytes}; ``fit``: {config, shapes, dtypes?, normalizers?, digests?, final?,
#: in_channels, image_size, num_features, image_width} → {unknown_values: keys whose value
#: digests the answer needs, example_flops: the model's forward FLOPs on one input, or null};
#: ``probe``: {sleep_seconds?, allocate_bytes?, busy_seconds?} (what the sandbox looks like from
#: inside: environment variable names, limits, pids, and when it ran; after sleeping, allocating
#: and spending CPU seconds as asked, to show the limits at work).
OPERATIONS = ("checkpoint", "dataset", "fit", "probe")

_ERRORS: dict[str, type[RiftError]] = {
    cls.__name__: cls
    for cls in (RiftError, ConfigError, UnknownArchitectureError, CheckpointError, DatasetError)
}


def encode_error(exc: RiftError) -> dict[str, Any]:
    """A library error as JSON (its class, message and the fields the API maps to HTTP)."""
    data: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message,
                            "field": exc.field}
    if isinstance(exc, CheckpointEntryError):
        data["entries"] = list(exc.entries)
    if isinstance(exc, CheckpointMismatchError):
        data["missing"] = list(exc.missing)
        data["unexpected"] = list(exc.unexpected)
        data["mismatched"] = [[key, list(got), list(want)] for key, got, want in exc.mismatched]
    return data


def decode_error(data: dict[str, Any]) -> RiftError:
    """The library error :func:`encode_error` encoded (a plain RiftError for unknown types)."""
    kind, message = data.get("type"), str(data.get("message", "validation failed"))
    field = data.get("field") if isinstance(data.get("field"), str) else None
    if kind == "CheckpointMismatchError":
        return CheckpointMismatchError(
            message, missing=list(data.get("missing", [])),
            unexpected=list(data.get("unexpected", [])),
            mismatched=[(key, tuple(got), tuple(want))
                        for key, got, want in data.get("mismatched", [])], field=field)
    if kind == "CheckpointEntryError":
        return CheckpointEntryError(message, [str(entry) for entry in data.get("entries", [])],
                                    field=field)
    return _ERRORS.get(str(kind), RiftError)(message, field=field)
