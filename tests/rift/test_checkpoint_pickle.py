"""Tests for rift.checkpoint_pickle through rift.checkpoints.load_state_dict: objects saved beside
the weights are kept aside as inert placeholders, a whole pickled model is read as its state dict,
and nothing in the file (a __reduce__ call, a class's __setstate__) ever runs."""

from __future__ import annotations

import argparse
import builtins
import collections
import dataclasses
import enum
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rift.checkpoint_pickle import MAX_PLACEHOLDER_GLOBALS, Placeholder, placeholder_class
from rift.checkpoints import load_state_dict, validate_checkpoint_file
from rift.config import ArchitectureSpec
from rift.errors import CheckpointError
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


class _AttrDict(dict):  # type: ignore[type-arg]
    """A dict subclass, like easydict.EasyDict: its items can only be rebuilt by its own code."""


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


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("extra, words", [
    (collections.defaultdict(int), "calls collections.defaultdict on loading"),
    (_Colour.RED, f"calls {__name__}._Colour on loading"),
    (_AttrDict(a=1), f"holds a {__name__}._AttrDict, a dict or list subclass"),
], ids=["defaultdict", "enum", "dict_subclass"])
def test_objects_only_their_code_can_rebuild_are_refused_by_name(
        tmp_path: Path, extra: object, words: str, legacy: bool) -> None:
    path = _save(tmp_path / "c.pt", {"state_dict": _state(_model()), "x": extra}, legacy)
    with pytest.raises(CheckpointError, match=re.escape(words)) as info:
        load_state_dict(path)
    assert "weights_only=False" not in info.value.message


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


def test_placeholders_carry_the_original_name_and_refuse_calls() -> None:
    cls = placeholder_class("some.module.Thing")
    assert issubclass(cls, Placeholder) and repr(cls) == "<class 'some.module.Thing'>"
    instance = cls.__new__(cls, 1, 2)
    instance.__setstate__({"a": 1})
    assert instance.new_args == (1, 2) and instance.state == {"a": 1}
    with pytest.raises(pickle.UnpicklingError, match=r"refused call of GLOBAL some\.module\.Thing"):
        cls(1)


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
