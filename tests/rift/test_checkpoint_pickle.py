"""Tests for rift.checkpoint_pickle through rift.checkpoints.load_state_dict: objects saved beside
the weights are kept aside as inert placeholders (calls of their classes recorded, not made), a
whole pickled model is read as its state dict, nothing in the file (a __reduce__ call, a class's
__setstate__ or __setitem__) ever runs, and a file calling code on loading is refused."""

from __future__ import annotations

import argparse
import builtins
import collections
import dataclasses
import enum
import importlib
import pathlib
import pickle
import re
import shutil
import socket
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rift.checkpoint_pickle import (
    MAX_PLACEHOLDER_GLOBALS,
    Placeholder,
    load_torch_checkpoint,
    placeholder_class,
    runs_code,
)
from rift.checkpoints import load_state_dict, validate_checkpoint_file
from rift.config import ArchitectureSpec
from rift.errors import CheckpointEntryError, CheckpointError
from rift.models import build_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    # Normalisation inside the model: non-persistent buffers, which a state dict leaves out.
    return build_model(ArchitectureSpec(name="small_cnn", num_classes=10, normalization="cifar10"))


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(path: Path, obj: object, legacy: bool) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@dataclasses.dataclass
class _TrainConfig:
    lr: float = 0.1
    arch: str = "small_cnn"


class _Tripwire:
    """An ordinary object whose own code, if it ever ran on loading, would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict[str, str]) -> None:
        Path(state["marker"]).touch()
        self.__dict__.update(state)


class _TripwireNet(nn.Module):
    """A model whose own unpickling code would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.body = _model()

    def __setstate__(self, state: dict[str, object]) -> None:
        Path(str(state["marker"])).touch()
        super().__setstate__(state)


class _Colour(enum.Enum):
    RED = 1


# What the classes below did on loading, if their own code ever ran.
_CALLS: list[str] = []


class _AttrDict(dict):  # type: ignore[type-arg]
    """Like easydict.EasyDict: a dict subclass whose items are also attributes; its items can
    only be rebuilt by its own code."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        _CALLS.append("AttrDict.__init__")
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            object.__setattr__(self, key, value)

    def __setitem__(self, key: str, value: object) -> None:
        _CALLS.append("AttrDict.__setitem__")
        super().__setitem__(key, value)
        object.__setattr__(self, key, value)


class _Ordered(collections.OrderedDict):  # type: ignore[type-arg]
    """An OrderedDict subclass (pickled as a call of the class, then its items)."""

    def __setitem__(self, key: object, value: object) -> None:
        _CALLS.append("Ordered.__setitem__")
        super().__setitem__(key, value)


@dataclasses.dataclass(frozen=True)
class _FrozenConfig:
    lr: float = 0.1
    colour: _Colour = _Colour.RED


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("extra", [
    argparse.Namespace(lr=0.1, arch="small_cnn"),
    np.float64(0.93),
    np.arange(5),
    np.array([_TrainConfig()], dtype=object),
    _TrainConfig(),
    {1, 2},
], ids=["namespace", "numpy_scalar", "numpy_array", "numpy_object_array", "dataclass", "set"])
def test_objects_beside_the_weights_are_kept_aside(tmp_path: Path, extra: object,
                                                    legacy: bool) -> None:
    state = _state(_model())
    path = _save(tmp_path / "c.pt", {"state_dict": state, "args": extra, "epoch": 3}, legacy)
    _assert_same(load_state_dict(path), state)
    assert validate_checkpoint_file(path).num_tensors == len(state)


def test_an_objects_own_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state = _state(_model())
    path = _save(tmp_path / "c.pt", {"state_dict": state, "cfg": _Tripwire(marker)}, False)
    _assert_same(load_state_dict(path), state)
    assert not marker.exists()


def _hook(*args: object) -> None:
    return None


@pytest.mark.parametrize("wrap", ["bare", "in_dict", "data_parallel"])
def test_a_pickled_model_is_read_as_its_state_dict_without_running_its_code(
        tmp_path: Path, wrap: str) -> None:
    marker = tmp_path / "ran"
    net = _TripwireNet(marker)
    net.register_forward_hook(_hook)  # a pickled function: a bare global, never called
    expected = {k.removeprefix("body."): v for k, v in _state(net).items()}
    obj = {"bare": net, "in_dict": {"net": net, "epoch": 9},
           "data_parallel": {"model": nn.DataParallel(net)}}[wrap]
    path = _save(tmp_path / "m.pt", obj, False)
    loaded = load_state_dict(path)
    assert not marker.exists()
    _assert_same({k.removeprefix("body."): v for k, v in loaded.items()}, expected)
    non_persistent = {name for name, _ in net.named_buffers()} - set(net.state_dict())
    assert non_persistent and not non_persistent & {k.removeprefix("module.") for k in loaded}


def test_a_legacy_pickled_model_is_refused_naming_the_format(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.pt", _model(), legacy=True)
    with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) format"):
        load_state_dict(path)


_ONLY_THEIR_CODE = {
    "defaultdict": lambda: collections.defaultdict(list, {"seen": [1, 2]}),
    "enum": lambda: _Colour.RED,
    "easydict": lambda: _AttrDict(lr=0.1, milestones=[30, 60]),
    "ordered_dict_subclass": lambda: _Ordered(a=1),
    "frozen_dataclass": lambda: _FrozenConfig(),
    "simple_namespace": lambda: types.SimpleNamespace(lr=0.1),
    "path": lambda: pathlib.PurePosixPath("/runs/at"),
    "frozenset": lambda: frozenset({1, 2}),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", list(_ONLY_THEIR_CODE))
def test_objects_only_their_code_can_rebuild_are_kept_as_inert_data(
        tmp_path: Path, kind: str, legacy: bool) -> None:
    state = _state(_model())
    extra = _ONLY_THEIR_CODE[kind]()
    path = _save(tmp_path / "c.pt", {"state_dict": state, "cfg": extra, "epoch": 3}, legacy)
    _CALLS.clear()
    _assert_same(load_state_dict(path), state)
    assert validate_checkpoint_file(path).num_tensors == len(state)
    assert _CALLS == []


def _raw(path: Path) -> object:
    return load_torch_checkpoint(path, lambda: torch.load(path, weights_only=True))


def test_inert_objects_record_what_the_file_asked_for(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", {"d": collections.defaultdict(list, {"seen": [1]}),
                                     "e": _Colour.RED, "a": _AttrDict(lr=0.5),
                                     "o": _Ordered(b=2)}, False)
    _CALLS.clear()
    loaded = _raw(path)
    assert _CALLS == []
    assert isinstance(loaded, dict)
    d, e, a, o = (loaded[key] for key in "deao")
    assert isinstance(d, Placeholder) and d.global_name == "collections.defaultdict"
    assert d.call_args is not None and d.call_args[0].global_name == "builtins.list"
    assert d.items == {"seen": [1]}
    assert isinstance(e, Placeholder) and e.call_args == (1,)
    assert e.global_name == f"{__name__}._Colour"
    assert isinstance(a, Placeholder) and a.items == {"lr": 0.5} and a.call_args is None
    assert isinstance(o, Placeholder) and o.call_args == () and o.items == {"b": 2}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_weights_inside_an_easydict_are_found(tmp_path: Path, legacy: bool) -> None:
    state = _state(_model())
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    obj = _AttrDict(state_dict=state, cfg=_AttrDict(lr=0.1), epoch=3)
    _assert_same(load_state_dict(_save(tmp_path / "e.pt", obj, legacy)), state)
    both = _AttrDict(model=_AttrDict(state_dict=state), model_ema=_AttrDict(state_dict=ema))
    path = _save(tmp_path / "both.pt", both, legacy)
    with pytest.raises(CheckpointEntryError) as info:
        load_state_dict(path)
    assert info.value.entries == ["model.state_dict", "model_ema.state_dict"]
    _assert_same(load_state_dict(path, entry="model_ema"), ema)


class _Evaluates:
    """Pickles to ``eval(source)``: builtins is not one of torch's blocked modules."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.eval, (self.source,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_call_of_an_unblocked_builtin_is_refused_and_never_runs(tmp_path: Path,
                                                                   legacy: bool) -> None:
    marker = tmp_path / "ran"
    payload = _Evaluates(f"open({str(marker)!r}, 'w')")
    path = _save(tmp_path / "e.pt", {"state_dict": _state(_model()), "x": payload}, legacy)
    with pytest.raises(CheckpointError, match=r"calls builtins\.eval on loading"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_placeholder_where_a_tensor_belongs_is_named(tmp_path: Path) -> None:
    state: dict[str, object] = dict(_state(_model()))
    state["conv1.weight"] = _TrainConfig()
    path = _save(tmp_path / "c.pt", {"state_dict": state}, False)
    with pytest.raises(CheckpointError,
                       match=re.escape(f"'conv1.weight' is a pickled {__name__}._TrainConfig")):
        load_state_dict(path)


def test_a_pickled_object_that_is_no_model_is_named(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _TrainConfig(), False)
    with pytest.raises(CheckpointError,
                       match=re.escape(f"pickled {__name__}._TrainConfig object, not a")):
        load_state_dict(path)


def test_too_many_named_classes_are_refused(tmp_path: Path) -> None:
    classes = [dataclasses.make_dataclass(f"C{i}", []) for i in range(MAX_PLACEHOLDER_GLOBALS + 1)]
    for cls in classes:  # make them picklable by reference
        cls.__module__ = __name__
        globals()[cls.__name__] = cls
    path = _save(tmp_path / "c.pt", {"state_dict": _state(_model()),
                                     "objs": [cls() for cls in classes]}, False)
    with pytest.raises(CheckpointError, match=f"more than {MAX_PLACEHOLDER_GLOBALS} Python") as info:
        load_state_dict(path)
    assert "corrupt" not in info.value.message


def test_placeholders_carry_the_original_name_and_record_calls() -> None:
    cls = placeholder_class("some.module.Thing")
    assert issubclass(cls, Placeholder) and repr(cls) == "<class 'some.module.Thing'>"
    instance = cls.__new__(cls, 1, 2)
    instance.__setstate__({"a": 1})
    assert instance.new_args == (1, 2) and instance.state == {"a": 1}
    assert instance.call_args is None and cls(3).call_args == (3,)
    with pytest.raises(pickle.UnpicklingError, match=r"refused call of GLOBAL builtins\.eval"):
        placeholder_class("builtins.eval")("1")


@pytest.mark.parametrize("name, runs", [
    ("builtins.eval", True), ("builtins.exec", True), ("builtins.getattr", True),
    ("builtins.print", True), ("subprocess.Popen", True), ("subprocess.run", True),
    ("posix.system", True), ("importlib.import_module", True), ("socket.socket", True),
    ("shutil.rmtree", True), ("pickle.loads", True), ("sys.modules", True),
    ("functools.partial", True), ("torch.load", True), ("numpy.load", True),
    ("torch.jit.load", True), ("types.FunctionType", True), ("mypkg.utils.Config.load", True),
    ("commands.getoutput", True), ("cPickle.loads", True),
    ("torch.storage._load_from_bytes", True), ("mypkg.run_script", True),
    ("builtins.frozenset", False), ("collections.defaultdict", False), ("enum.Enum", False),
    ("easydict.EasyDict", False), ("types.SimpleNamespace", False), ("pathlib.PosixPath", False),
    ("datetime.datetime", False), ("mypkg.Colour", False), ("mypkg.RunConfig", False),
    ("mypkg.loader_settings", False), ("re._compile", False),
])
def test_which_calls_run_code(name: str, runs: bool) -> None:
    assert runs_code(name) is runs


class _Calls:
    """Pickles to ``func(*args)``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.func, self.args)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("attack, name", [
    ("exec", "builtins.exec"), ("subprocess", "subprocess.call"),
    ("import_module", "importlib.import_module"), ("pickle_loads", "pickle.loads"),
    ("rmtree", "shutil.rmtree"), ("socket", "socket.create_connection"),
    ("nested_in_an_object", "builtins.eval")])
def test_a_file_calling_code_is_refused_as_an_attack_and_nothing_runs(
        tmp_path: Path, attack: str, name: str, legacy: bool) -> None:
    marker = tmp_path / "ran"
    victim = tmp_path / "victim"
    victim.mkdir()
    payload = {
        "exec": lambda: _Calls(builtins.exec, f"open({str(marker)!r}, 'w')"),
        "subprocess": lambda: _Calls(subprocess.call, ["touch", str(marker)]),
        "import_module": lambda: _Calls(importlib.import_module, "this"),
        "pickle_loads": lambda: _Calls(pickle.loads, pickle.dumps(1)),
        "rmtree": lambda: _Calls(shutil.rmtree, str(victim)),
        "socket": lambda: _Calls(socket.create_connection, ("127.0.0.1", 9)),
        "nested_in_an_object": lambda: _AttrDict(
            cfg=_TrainConfig(lr=_Calls(builtins.eval, f"open({str(marker)!r}, 'w')"))),  # type: ignore[arg-type]
    }[attack]()
    path = _save(tmp_path / "evil.pt", {"state_dict": _state(_model()), "x": payload}, legacy)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = info.value.message
    assert f"calls {name} on loading" in message and "attack" in message, message
    assert not marker.exists() and victim.is_dir()


def test_a_pickled_model_that_contains_itself_is_refused(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    net.add_module("loop", net)  # nn.Module.state_dict() would recurse forever on it
    path = _save(tmp_path / "loop.pt", net, False)
    with pytest.raises(CheckpointError, match="nests deeper than"):
        load_state_dict(path)


def test_loads_on_several_threads_do_not_undo_each_others_allowances(tmp_path: Path) -> None:
    # torch's allow-list is one process-wide set: a load leaving it removed the placeholders
    # another thread's load of the same classes was still using.
    from concurrent.futures import ThreadPoolExecutor

    state = _state(_model())
    paths = [_save(tmp_path / f"c{i}.pt", {"state_dict": state, "args": _TrainConfig(),
                                           "ns": argparse.Namespace(i=i)}, legacy=i % 2 == 1)
             for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(load_state_dict, paths * 5))
    for loaded in results:
        _assert_same(loaded, state)
