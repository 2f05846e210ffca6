"""Opening ``torch.save`` files whose pickle holds more than weights, without running any of it.

``torch.load(weights_only=True)`` refuses a whole file as soon as its pickle names a global outside
torch's allow-list, though training scripts routinely save the weights beside an
``argparse.Namespace`` of arguments, a numpy scalar for the best accuracy, a config object, or
save the whole ``nn.Module``. We still load with ``weights_only=True`` (torch's restricted
unpickler), and widen its allow-list in two ways only:

- numpy's array and scalar constructors (:data:`rift.data.safe_pickle.NUMPY_GLOBALS`, the policy
  the CIFAR reader already uses): they rebuild plain data from bytes.
- every other global the pickle names is bound to a :class:`Placeholder` class of the same name;
  the real class is never imported. An *instance* of it (pickle's NEWOBJ and BUILD opcodes: how
  ``torch.save`` writes any ordinary object) becomes an inert placeholder holding its pickled
  attributes. A *call* of it (the REDUCE opcode: what a ``__reduce__`` payload such as
  ``os.system(...)`` compiles to) is refused, so a file that wants code run on loading is
  refused whole, naming the global.

Globals of the modules torch blocks outright (``os``, ``posix``, ``nt``, ``sys``) stay refused
whatever we allow. A whole pickled ``nn.Module`` arrives as placeholders whose attributes hold
its parameters and buffers: :func:`module_state_dict` reads them in ``state_dict`` order.
"""

from __future__ import annotations

import functools
import pickle
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rift.data.safe_pickle import NUMPY_GLOBALS, numpy_global
from rift.errors import CheckpointError

# A pickle names each global once per use; a file needing more placeholders than this is not a
# training checkpoint, and each one found by a refused load costs a retry (legacy files).
MAX_PLACEHOLDER_GLOBALS = 64
# Module nesting read by module_state_dict (a cycle or a pathological file stops here).
MAX_MODULE_DEPTH = 200


class Placeholder:
    """An instance of a class a checkpoint names, which was never imported: ``new_args`` are the
    arguments pickle gave ``cls.__new__``, ``state`` what it gave ``__setstate__`` (usually the
    instance's ``__dict__``). Subclasses made by :func:`placeholder_class` carry the name."""

    global_name: ClassVar[str] = "?"
    new_args: tuple[Any, ...]
    state: object

    def __new__(cls, *args: Any) -> Placeholder:
        instance = object.__new__(cls)
        instance.new_args = args
        instance.state = None
        return instance

    def __init__(self, *args: Any) -> None:
        # Reached only when the pickle *calls* the global (REDUCE): running code on loading is
        # exactly what a malicious file asks for. The text keeps torch's "GLOBAL <name>" shape,
        # which rift.checkpoints reads to name the global in its refusal.
        raise pickle.UnpicklingError(
            f"refused call of GLOBAL {self.global_name} (a function call on loading)")

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.global_name}>"


@functools.lru_cache(maxsize=4096)  # bounded: the names come from uploaded files
def placeholder_class(full_name: str) -> type[Placeholder]:
    """The :class:`Placeholder` subclass standing for the global ``full_name``."""
    module, _, name = full_name.rpartition(".")
    # Named like the original, so that torch's messages about it name the original.
    return type(name or "Global", (Placeholder,),
                {"global_name": full_name, "__module__": module, "__qualname__": name})


def _allowance(full_name: str) -> tuple[Callable[..., Any], str]:
    module, _, name = full_name.rpartition(".")
    if (module, name) in NUMPY_GLOBALS:
        return numpy_global(module, name), full_name
    return placeholder_class(full_name), full_name


def _globals_named(path: Path) -> set[str]:
    """The non-allow-listed globals a zip checkpoint's pickle names, read without unpickling it
    (empty for legacy files and unreadable zips: the load loop learns them, or torch fails)."""
    try:
        with path.open("rb") as handle:
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(handle))
    except (ValueError, RuntimeError, OSError, zipfile.BadZipFile, pickle.UnpicklingError,
            EOFError):
        return set()


_NOT_ALLOWED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _refused_global(exc: BaseException) -> str | None:
    """The global a weights-only load refused only for not being allow-listed, else None."""
    match = _NOT_ALLOWED.search(str(exc))
    if match is None:
        return None
    name = match.group(1)
    # torch prints "builtins.x" as plain "x".
    return name if "." in name else f"builtins.{name}"


def _numpy_dtype_classes() -> list[tuple[Callable[..., Any], str]]:
    # torch's BUILD accepts an object only if its exact type is allowed, and a numpy 2 dtype's
    # type is its class in numpy.dtypes (Float64DType), which the pickle never names.
    import numpy.dtypes

    return [(value, f"numpy.dtypes.{name}") for name, value in vars(numpy.dtypes).items()
            if isinstance(value, type) and issubclass(value, np.dtype)]


# torch keeps the allow-list in one process-wide set, and leaving safe_globals removes its
# entries even if another thread's load (with the same placeholder classes) is still running,
# which would then be refused: loads that widen the list take turns.
_ALLOW_LIST_LOCK = threading.Lock()


@contextmanager
def _allowing(names: set[str]) -> Iterator[None]:
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        _allowance(name) for name in sorted(names)]
    if any(name.startswith("numpy") for name in names):
        allowed += _numpy_dtype_classes()
    with _ALLOW_LIST_LOCK, torch.serialization.safe_globals(allowed):
        yield


def load_torch_checkpoint(path: Path, load: Callable[[], object]) -> object:
    """Run ``load`` (a ``torch.load(..., weights_only=True)`` of ``path``) with the globals the
    file names allowed as numpy constructors or placeholders (see the module docstring).

    Raises:
        pickle.UnpicklingError: as torch raises it: the file calls a global, names one of a
            blocked module, or holds something else weights-only loading cannot rebuild (a dict
            subclass, a legacy-format whole model).
        CheckpointError: the file names more than :data:`MAX_PLACEHOLDER_GLOBALS` globals.
    """
    names = _globals_named(path)
    while True:
        if len(names) > MAX_PLACEHOLDER_GLOBALS:
            raise CheckpointError(
                f"checkpoint {path.name} names more than {MAX_PLACEHOLDER_GLOBALS} Python classes "
                "besides tensors; save the state dict on its own (torch.save(model.state_dict()"
                ", ...)) or as safetensors")
        try:
            with _allowing(names):
                return load()
        except pickle.UnpicklingError as exc:
            # A legacy (non-zip) file cannot be listed beforehand: each refusal names one more.
            name = _refused_global(exc)
            if name is None or name in names:
                raise
            names.add(name)


# ------------------------------------------------------------------------ pickled nn.Modules

_MODULE_ATTRIBUTES = ("_parameters", "_buffers", "_modules")


def is_pickled_module(value: object) -> bool:
    """Whether ``value`` is a placeholder for a pickled ``nn.Module`` (its attributes hold the
    parameter, buffer and submodule tables every module has)."""
    return (isinstance(value, Placeholder) and isinstance(value.state, Mapping)
            and all(isinstance(value.state.get(name), Mapping) for name in _MODULE_ATTRIBUTES))


def module_state_dict(module: Placeholder, source: str) -> dict[str, object]:
    """What ``module.state_dict()`` would return for the pickled module, read from its pickled
    attributes: parameters, then persistent buffers, then each submodule's under its name and a
    dot, ``None`` entries left out. The class's own code never runs, so a module that overrides
    ``_save_to_state_dict`` or registers state-dict hooks is read as a plain ``nn.Module``; the
    strict key and shape check against the job's architecture still applies.

    Raises:
        CheckpointError: a submodule is not a pickled module, or the nesting is deeper than
            :data:`MAX_MODULE_DEPTH` (a cycle).
    """
    result: OrderedDict[str, object] = OrderedDict()
    _collect(module, "", result, source, 0)
    return result


def _collect(module: Placeholder, prefix: str, result: OrderedDict[str, object], source: str,
             depth: int) -> None:
    if depth > MAX_MODULE_DEPTH:
        raise CheckpointError(f"{source}: the pickled module nests deeper than "
                              f"{MAX_MODULE_DEPTH} levels at {prefix or 'its root'}")
    state = module.state
    assert isinstance(state, Mapping)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in state["_parameters"].items():
        if value is not None:
            result[prefix + str(name)] = value
    for name, value in state["_buffers"].items():
        if value is not None and name not in non_persistent:
            result[prefix + str(name)] = value
    for name, child in state["_modules"].items():
        if child is None:
            continue
        if not is_pickled_module(child):
            raise CheckpointError(
                f"{source}: submodule {prefix + str(name)!r} of the pickled model is a "
                f"{describe_value(child)}, not a module")
        _collect(child, f"{prefix}{name}.", result, source, depth + 1)


def describe_value(value: object) -> str:
    """How an error names a checkpoint value (placeholders by the class the file names)."""
    if isinstance(value, Placeholder):
        return f"pickled {value.global_name} object"
    if isinstance(value, type) and issubclass(value, Placeholder):
        return f"reference to {value.global_name}"
    return type(value).__name__
