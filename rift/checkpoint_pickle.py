"""Opening ``torch.save`` files whose pickle holds more than weights, without running any of it.

``torch.load(weights_only=True)`` refuses a whole file as soon as its pickle names a global outside
torch's allow-list, though training scripts routinely save the weights beside an
``argparse.Namespace`` of arguments, a numpy scalar for the best accuracy, a config object
(an ``EasyDict``, a dataclass, an enum member, a ``defaultdict``), or save the whole
``nn.Module``. We still load with ``weights_only=True`` (torch's restricted unpickler), and widen
its allow-list in two ways only:

- numpy's array and scalar constructors (:data:`rift.data.safe_pickle.NUMPY_GLOBALS`, the policy
  the CIFAR reader already uses): they rebuild plain data from bytes.
- every other global the pickle names is bound to a :class:`Placeholder` class of the same name;
  the real class is never imported, so none of its code can run. What the pickle does with it is
  recorded instead of done: an *instance* (pickle's NEWOBJ and BUILD opcodes: how ``torch.save``
  writes any ordinary object) keeps its pickled attributes, a *call* (the REDUCE opcode: how an
  enum member, a ``defaultdict`` or an ``OrderedDict`` subclass is rebuilt) keeps its arguments
  without calling anything, and items or elements added to it (a dict or list subclass such as
  ``EasyDict``) are kept in :attr:`Placeholder.items` / :attr:`Placeholder.elements`.

A call of a global that runs code (:func:`runs_code`: ``builtins.eval``, ``subprocess.Popen``,
``importlib.import_module``, ``pickle.loads``...) is what a malicious ``__reduce__`` payload
compiles to: such a file is an attack, and it is refused whole, naming the global (still without
running it). Globals of the modules torch blocks outright (``os``, ``posix``, ``nt``, ``sys``)
stay refused whatever we allow. A whole pickled ``nn.Module`` arrives as placeholders whose
attributes hold its parameters and buffers: :func:`module_state_dict` reads them in
``state_dict`` order.
"""

from __future__ import annotations

import _compat_pickle
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


# Callables whose call on loading means the file wants code run: whole modules, and builtins
# other than the data types a pickle may rebuild by calling them (a frozenset, a slice). Torch
# itself blocks os, posix, nt and sys before any of this is consulted.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "importlib", "socket", "shutil", "pickle",
    "_pickle", "marshal", "ctypes", "runpy", "code", "codeop", "pty", "multiprocessing",
    "signal", "webbrowser", "asyncio", "threading", "_thread", "io", "_io", "tempfile", "urllib",
    "http", "ftplib", "smtplib", "requests", "dill", "cloudpickle", "joblib", "operator",
    "functools", "inspect", "ast", "timeit", "pdb", "bdb", "cProfile", "profile", "trace",
    "zipimport", "pkgutil", "site", "sysconfig", "setuptools", "pip",
})
# Code constructors of a module whose other globals are data (types.SimpleNamespace).
_CODE_GLOBALS = frozenset({"types.FunctionType", "types.LambdaType", "types.CodeType",
                           "types.MethodType", "types.ModuleType", "types.new_class"})
_DATA_BUILTINS = frozenset({"frozenset", "slice", "range", "bytes", "str", "int", "float",
                            "bool", "tuple", "list", "dict", "object", "complex", "set",
                            "bytearray"})
# Function names that load, run or write things wherever they live (torch.load, numpy.load,
# torch.hub.load, torch.jit.load, yaml.load, a package's own exec helper); also as the first
# word of a longer name (torch.storage._load_from_bytes unpickles with code execution).
_CODE_NAMES = frozenset({"eval", "exec", "execfile", "system", "popen", "Popen", "spawn",
                         "load", "loads", "load_module", "import", "import_module", "__import__",
                         "getattr", "setattr", "delattr", "open", "remove", "unlink", "rmtree",
                         "run", "call", "check_call", "check_output", "apply", "__reduce__",
                         "__reduce_ex__", "__setstate__", "__getattribute__", "__call__"})
_CODE_PACKAGES = ("torch.jit", "torch.hub", "torch.package", "torch.serialization", "torch._C",
                  "torch.ops", "torch.library", "torch.utils.cpp_extension", "torch._dynamo")


def python3_name(full_name: str) -> str:
    """``full_name`` as Python 3 names it: a protocol-2 pickle names some globals by their
    Python 2 module (``commands.call`` for ``subprocess.call``, ``cPickle.loads``)."""
    module, _, name = full_name.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def runs_code(full_name: str) -> bool:
    """Whether calling the global ``full_name`` (``module.name``) on loading would run or load
    code, write files or reach the network: what a checkpoint never needs."""
    full_name = python3_name(full_name)
    module, _, name = full_name.rpartition(".")
    top = module.split(".")[0]
    if top == "builtins":
        return name not in _DATA_BUILTINS
    word = name.lstrip("_").split("_")[0]
    return (top in _CODE_MODULES or full_name in _CODE_GLOBALS or name in _CODE_NAMES
            or word in _CODE_NAMES
            or any(module == package or module.startswith(package + ".")
                   for package in _CODE_PACKAGES))


class Placeholder:
    """An instance of a class a checkpoint names, which was never imported: ``new_args`` are the
    arguments pickle gave ``cls.__new__``, ``call_args`` those of a call of the class the file
    asked for (REDUCE; the call is not made), ``state`` what it gave ``__setstate__`` (usually the
    instance's ``__dict__``), ``items`` the keys and values set on it (a dict subclass) and
    ``elements`` those appended (a list subclass). Subclasses made by :func:`placeholder_class`
    carry the name."""

    global_name: ClassVar[str] = "?"
    new_args: tuple[Any, ...]
    call_args: tuple[Any, ...] | None
    state: object
    items: dict[Any, Any]
    elements: list[Any]

    def __new__(cls, *args: Any) -> Placeholder:
        instance = object.__new__(cls)
        instance.new_args = args
        instance.call_args = None
        instance.state = None
        instance.items = {}
        instance.elements = []
        return instance

    def __init__(self, *args: Any) -> None:
        # Reached only when the pickle *calls* the global (REDUCE). Nothing is called: the
        # arguments are kept, unless the global runs code, which no checkpoint needs and every
        # malicious one does. The text keeps torch's "GLOBAL <name>" shape, which
        # rift.checkpoints reads to name the global in its refusal.
        if runs_code(self.global_name):
            raise pickle.UnpicklingError(
                f"refused call of GLOBAL {python3_name(self.global_name)} (a function call on "
                "loading)")
        self.call_args = args

    def __setstate__(self, state: object) -> None:
        self.state = state

    # SETITEM(S) and APPEND(S) on a dict or list subclass (see _placeholder_containers).
    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: list[Any]) -> None:
        self.elements.extend(values)

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
    with _ALLOW_LIST_LOCK, torch.serialization.safe_globals(allowed), _placeholder_containers():
        yield


@contextmanager
def _placeholder_containers() -> Iterator[None]:
    """Let SETITEM(S) and APPEND(S) add to placeholders (dict and list subclasses, whose items
    torch's unpickler adds only to its exact dict, OrderedDict, Counter and list types): the
    placeholder keeps them (Placeholder.__setitem__, append, extend). Only placeholders are let
    through, and they exist only while their globals are allow-listed, under the lock."""
    unpickler = torch._weights_only_unpickler.Unpickler
    set_item = unpickler.__dict__.get("_check_set_item_target")
    append = unpickler.__dict__.get("_check_append_target")
    if set_item is None or append is None:
        yield  # another torch: dict and list subclasses are refused as before
        return

    def check_set_item(self: Any, opcode: str) -> None:
        if not isinstance(self.stack[-1], Placeholder):
            set_item(self, opcode)

    def check_append(self: Any, target: object) -> None:
        if not isinstance(target, Placeholder):
            append(self, target)

    setattr(unpickler, "_check_set_item_target", check_set_item)  # noqa: B010
    setattr(unpickler, "_check_append_target", check_append)  # noqa: B010
    try:
        yield
    finally:
        setattr(unpickler, "_check_set_item_target", set_item)  # noqa: B010
        setattr(unpickler, "_check_append_target", append)  # noqa: B010


def load_torch_checkpoint(path: Path, load: Callable[[], object]) -> object:
    """Run ``load`` (a ``torch.load(..., weights_only=True)`` of ``path``) with the globals the
    file names allowed as numpy constructors or placeholders (see the module docstring).

    Raises:
        pickle.UnpicklingError: as torch raises it: the file calls a global that runs code
            (:func:`runs_code`), names one of a blocked module, or holds something else
            weights-only loading cannot rebuild (a legacy-format whole model).
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
