"""Whether every tensor storage a PyTorch zip checkpoint's pickle names fits the file's record
of its bytes.

A storage is named in the pickle as ``('storage', <type>, key, location, numel)``; its bytes are
the zip record ``<archive>/data/<key>``. The memory-mapped load the validator uses slices those
bytes out of the whole file and never compares the two, so a pickle claiming 2^31 elements for
a 16-byte record was accepted at upload, and the job's plain load then failed ("record size ...
does not match expected size"). This module reads the pickle with an unpickler that builds only
inert placeholders (no global is ever looked up, let alone called), which is safe for any
pickle; the restricted loader has already refused code by then.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

#: Bytes per element of the storage types a pickle may name (``torch.<Name>``).
_ELEMENT_BYTES = {
    "UntypedStorage": 1, "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1,
    "QUInt8Storage": 1, "QInt8Storage": 1, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
    "ShortStorage": 2, "HalfStorage": 2, "BFloat16Storage": 2,
    "IntStorage": 4, "FloatStorage": 4, "QInt32Storage": 4,
    "LongStorage": 8, "DoubleStorage": 8, "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


class _Inert(dict[Any, Any]):
    """Stands for any object the pickle builds: takes any arguments, items and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _StorageNames(pickle.Unpickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.storages: list[tuple[str, str, int]] = []
        self.classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # A placeholder class per global, so a storage type can be told by its name.
        key = (module, name)
        if key not in self.classes:
            self.classes[key] = type(name, (_Inert,), {"global_name": f"{module}.{name}"})
        return self.classes[key]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], str(pid[2]), pid[4]
            name = getattr(storage_type, "global_name", repr(storage_type))
            self.storages.append((name, key, numel if isinstance(numel, int) else -1))
        return _Inert()


def _repeated_name(names: list[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def storage_size_problem(path: Path) -> str | None:
    """Why a storage of the PyTorch zip file at ``path`` does not fit its record, or None."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        repeated = _repeated_name(names)
        if repeated is not None:
            # Python's zipfile (this check) and torch's reader may not take the same copy: a
            # second data.pkl made this check skip the file, which the job then failed to read.
            return f"the zip holds {repeated!r} more than once"
        # torch reads the folder of the zip's first member (PytorchStreamReader).
        prefix = names[0].split("/", 1)[0] + "/" if names else ""
        if prefix + "data.pkl" not in names:
            return None  # not torch's layout: the loader has judged it already
        with archive.open(prefix + "data.pkl") as handle:
            reader = _StorageNames(handle)
            reader.load()
        sizes = {n[len(prefix) + len("data/"):]: archive.getinfo(n).file_size
                 for n in names if n.startswith(prefix + "data/")}
    for name, key, numel in reader.storages:
        element = _ELEMENT_BYTES.get(name.rsplit(".", 1)[-1])
        if element is None:
            continue  # a type torch's loader accepted that this table lacks: not judged here
        if key not in sizes:
            return f"storage {key!r} has no data record in the file"
        if numel < 0 or numel * element != sizes[key]:
            return (f"storage {key!r} claims {numel} elements of {element} byte(s) but its "
                    f"record holds {sizes[key]} bytes")
    return None
