"""Reading the CIFAR "python version" batch files without running arbitrary pickled code.

The CIFAR files are pickles. ``root`` comes from a job spec, so a plain ``pickle.load`` would let
whoever can place a file under it run code on the worker. This unpickler resolves only the few
globals a pickled dict of numpy arrays needs (the same policy as ``torch.load(weights_only=True)``
for checkpoints); anything else is refused.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from rift.data.pickled_arrays import PickledArray, checked_constructor
from rift.errors import DatasetError

# (module, name) pairs that rebuild numpy arrays and scalars; numpy 2 renamed numpy.core to
# numpy._core, and the CIFAR files (written with an old numpy) name the old module. Also the
# numpy allow-list of checkpoint loading (rift.checkpoint_pickle): one policy for both.
NUMPY_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})
_ALLOWED = NUMPY_GLOBALS | {("_codecs", "encode")}  # protocol-2 pickles of bytes (Python 3)


def numpy_global(module: str, name: str) -> Any:
    """The numpy object a pickle names as ``module.name`` (one of :data:`NUMPY_GLOBALS`), looked up
    under numpy 2's module names first.

    Raises:
        pickle.UnpicklingError: numpy has no such object.
    """
    if (module, name) == ("numpy", "ndarray"):
        return PickledArray  # its dtype checked when the pickle sets its state
    if module == "numpy":
        return getattr(np, name)
    if module.startswith("numpy.core."):
        # Import the numpy-2 location directly: the numpy.core shim warns on access.
        candidates = ["numpy._core." + module.removeprefix("numpy.core."), module]
    else:
        candidates = [module]
    for candidate in candidates:
        try:
            found = getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
        return checked_constructor(found) if name in ("scalar", "_frombuffer") else found
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        return numpy_global(module, name)


def load_array_pickle(path: Path) -> dict[str, Any]:
    """Load a pickled dict whose values are numpy arrays, lists, numbers, str or bytes.

    Keys written as bytes (Python 2 pickles read without latin-1) are turned into str.
    Raises DatasetError naming the file when it is unreadable, unsafe or not a dict.
    """
    try:
        with path.open("rb") as handle:
            # latin-1 as torchvision does: the CIFAR files are Python 2 pickles of byte strings.
            loaded = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path} holds a {type(loaded).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in loaded.items()}
