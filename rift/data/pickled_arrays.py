"""numpy arrays and scalars rebuilt from an untrusted pickle, with their dtypes checked first.

A pickled dtype carries its own flags (``dtype.__setstate__``), and numpy trusts them: an object
dtype pickled with flags 0 took raw bytes as its data, so every element was a pointer the file
chose, and reading one (a ``repr``, a ``float()``) dereferenced it: the loader crashed, and a
crafted address is a step towards running code. Flags forged onto a float dtype broke numpy's
clean-up instead ("get_clear_loop not set"). So every dtype an array or scalar is built with is
compared with the one numpy builds from its type string (an object dtype's real flags make
numpy take its elements from a list of already unpickled objects, never from bytes), and
structured and sub-array dtypes (never a weight's; their fields are pickled too) are refused.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np


def checked_dtype(dtype: object) -> np.dtype[Any]:
    """The dtype numpy itself builds for ``dtype``'s type string, when ``dtype`` is a plain
    (number, bool, string, bytes, date, object) dtype whose flags and size are numpy's.

    Raises:
        pickle.UnpicklingError: ``dtype`` is no dtype, has fields or a sub-array, or has forged
            flags or size.
    """
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"a pickled numpy array names {type(dtype).__name__} "
                                     "as its dtype")
    if dtype.names is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(
            f"a pickled numpy array of dtype {dtype} (fields or a sub-array) is refused: only "
            "arrays of plain numbers, strings, bytes or objects are read")
    canonical = np.dtype(dtype.str)
    if canonical.flags != dtype.flags or canonical.itemsize != dtype.itemsize:
        raise pickle.UnpicklingError(
            f"a pickled numpy dtype {dtype.str!r} claims flags {dtype.flags} and "
            f"{dtype.itemsize}-byte items where numpy's has {canonical.flags} and "
            f"{canonical.itemsize}: a forged dtype")
    return canonical


class PickledArray(np.ndarray):  # type: ignore[type-arg]
    """What a pickle's ``numpy.ndarray`` stands for: an ndarray whose state (set by the pickle's
    BUILD, after ``_reconstruct`` made it empty) is given a checked dtype."""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledArray:
        # ndarray(shape, dtype, buffer, ...) called by the pickle: a buffer's bytes would be
        # read as the dtype says, so the dtype is checked first.
        arguments = list(args)
        if len(arguments) > 1:
            arguments[1] = checked_dtype(np.dtype(arguments[1]))
        if "dtype" in kwargs:
            kwargs["dtype"] = checked_dtype(np.dtype(kwargs["dtype"]))
        return super().__new__(cls, *arguments, **kwargs)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple):
            raise pickle.UnpicklingError("a pickled numpy array's state is not a tuple")
        checked: Any = tuple(checked_dtype(item) if isinstance(item, np.dtype) else item
                             for item in state)
        super().__setstate__(checked)

    def __reduce__(self) -> Any:
        # Copied or pickled again (by torch's loader or ours), it is a plain ndarray.
        return np.asarray(self).view(np.ndarray).__reduce__()


def checked_constructor(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` (numpy's ``scalar`` or ``_frombuffer``, whose second-to-first argument or
    ``dtype`` is a dtype) with that dtype checked first."""
    def checked(*args: Any, **kwargs: Any) -> Any:
        arguments = list(args)
        position = 0 if build.__name__ == "scalar" else 1
        if len(arguments) > position:
            arguments[position] = checked_dtype(arguments[position])
        if "dtype" in kwargs:
            kwargs["dtype"] = checked_dtype(kwargs["dtype"])
        return build(*arguments, **kwargs)

    checked.__name__ = checked.__qualname__ = build.__name__
    checked.__module__ = build.__module__
    return checked
