"""Tests for rift.checkpoints: safe loading, container/prefix handling, header checks, fitting."""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from rift.checkpoints import (
    CONTAINER_KEYS,
    check_compatible,
    detect_checkpoint_format,
    load_checkpoint_entries,
    load_into,
    load_state_dict,
    normalize_state_dict,
    read_safetensors_metadata,
    save_safetensors,
    save_torch,
    validate_checkpoint_file,
)
from rift.config import ArchitectureSpec
from rift.errors import CheckpointEntryError, CheckpointError, CheckpointMismatchError
from rift.models import build_model
from tests.module_factories import TiedWeights, VersionedLinear


def _model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ArchitectureSpec(name="small_cnn", num_classes=num_classes))


def _state(model: nn.Module | None = None) -> dict[str, Tensor]:
    model = model if model is not None else _model()
    # Non-default running statistics, so that a copy is distinguishable from a fresh model.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for value in state.values():
        if value.is_floating_point():
            value.add_(torch.randn_like(value) * 0.1)
    return state


def _assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    # safetensors stores keys in its own order, so compare key sets.
    assert sorted(actual) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def _write_safetensors(path: Path, header: dict[str, object], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


class _WritesAFile:
    """Pickles to a call of ``open(target, "w")``: unpickling it would create ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.target, "w"))


# ---------------------------------------------------------------------------------------------
# Round trips and formats
# ---------------------------------------------------------------------------------------------


def test_safetensors_round_trip_keeps_values_and_metadata(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "model.safetensors"
    save_safetensors(path, state, {"architecture": "small_cnn", "alpha": "0.8"})
    _assert_same(load_state_dict(path), state)
    assert read_safetensors_metadata(path) == {"architecture": "small_cnn", "alpha": "0.8"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_torch_round_trip(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "model.pt"
    save_torch(path, state)
    _assert_same(load_state_dict(path), state)
    assert detect_checkpoint_format(path) == "torch"


def test_legacy_torch_format_loads(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(path), state)


def test_format_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    state = _state()
    safetensors_named_pt = tmp_path / "really_safetensors.pt"
    save_safetensors(safetensors_named_pt, state)
    torch_named_safetensors = tmp_path / "really_torch.safetensors"
    save_torch(torch_named_safetensors, state)
    assert detect_checkpoint_format(safetensors_named_pt) == "safetensors"
    assert detect_checkpoint_format(torch_named_safetensors) == "torch"
    _assert_same(load_state_dict(safetensors_named_pt), state)
    _assert_same(load_state_dict(torch_named_safetensors), state)


def test_saving_handles_non_contiguous_and_shared_tensors(tmp_path: Path) -> None:
    base = torch.arange(6.0).reshape(2, 3)
    state = {"transposed": base.t(), "tied_a": base, "tied_b": base}
    save_safetensors(tmp_path / "s.safetensors", state)
    loaded = load_state_dict(tmp_path / "s.safetensors")
    assert loaded["transposed"].tolist() == base.t().tolist()
    assert loaded["tied_b"].tolist() == base.tolist()


@pytest.mark.parametrize("save", [save_safetensors, save_torch])
def test_saving_to_a_folder_names_the_folder(tmp_path: Path, save: object) -> None:
    # Before: IsADirectoryError naming a hidden temporary file beside the folder.
    with pytest.raises(CheckpointError, match=f"{tmp_path}: it is a folder"):
        save(tmp_path, _state())  # type: ignore[operator]
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_saving_rejects_bad_metadata_and_meta_tensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="metadata"):
        save_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(1)}, {"epoch": 3})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="meta device"):
        save_torch(tmp_path / "b.pt", {"w": torch.ones(1, device="meta")})
    assert list(tmp_path.iterdir()) == []


def test_validate_checkpoint_file_summarises(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "upload.safetensors"
    save_safetensors(path, {"module." + k: v for k, v in state.items()}, {"source": "test"})
    summary = validate_checkpoint_file(path, sample_size=3)
    assert summary.format == "safetensors"
    assert summary.num_tensors == len(state)
    assert summary.num_parameters == sum(v.numel() for v in state.values())
    assert len(summary.keys_sample) == 3
    assert set(summary.keys_sample) <= set(state)  # normalised: the "module." prefix is gone
    assert summary.metadata == {"source": "test"}
    save_torch(tmp_path / "upload.pt", state)
    assert validate_checkpoint_file(tmp_path / "upload.pt").format == "torch"


# ---------------------------------------------------------------------------------------------
# Containers and prefixes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", CONTAINER_KEYS)
def test_containers_are_unwrapped(tmp_path: Path, container: str) -> None:
    state = _state()
    torch.save({container: state, "epoch": 7, "acc": 91.5, "optimizer": {"lr": 0.1}},
               tmp_path / "c.pt")
    _assert_same(load_state_dict(tmp_path / "c.pt"), state)


def test_containers_nested_twice_are_unwrapped(tmp_path: Path) -> None:
    state = _state()
    torch.save({"model": {"state_dict": state, "ema": False}, "epoch": 1}, tmp_path / "n.pt")
    _assert_same(load_state_dict(tmp_path / "n.pt"), state)


def _shifted(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same keys and shapes with other values (as an EMA of the weights would hold)."""
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("keys", [("state_dict", "state_dict_ema"), ("model", "ema"),
                                  ("model", "net"), ("model_state_dict", "weights")])
def test_containers_with_different_weights_are_entries_to_choose_from(
        tmp_path: Path, keys: tuple[str, str]) -> None:
    # A model and its EMA both fit the architecture: taking either silently could fine-tune the
    # weights the user did not mean, so the caller names one.
    first, second = _state(), _shifted(_state())
    torch.save({keys[0]: first, keys[1]: second, "epoch": 3}, tmp_path / "two.pt")
    with pytest.raises(CheckpointEntryError) as info:
        load_state_dict(tmp_path / "two.pt")
    assert info.value.entries == list(keys)
    assert f"{keys[0]!r}, {keys[1]!r}" in info.value.message
    assert "checkpoint_entry" in info.value.message and "--checkpoint-entry" in info.value.message
    _assert_same(load_state_dict(tmp_path / "two.pt", entry=keys[0]), first)
    _assert_same(load_state_dict(tmp_path / "two.pt", entry=keys[1]), second)
    summary = validate_checkpoint_file(tmp_path / "two.pt", entry=keys[1])
    assert summary.entries == list(keys) and summary.num_tensors == len(second)
    found = load_checkpoint_entries(tmp_path / "two.pt")
    assert found.entries == list(keys)
    for key, expected in zip(keys, (first, second), strict=True):
        _assert_same(found.weights[key], expected)


def test_nested_entries_are_named_by_their_key_path(tmp_path: Path) -> None:
    state = _state()
    ema = _shifted(state)
    torch.save({"model": {"state_dict": state, "ema": ema}, "epoch": 4}, tmp_path / "n.pt")
    with pytest.raises(CheckpointEntryError) as info:
        load_state_dict(tmp_path / "n.pt")
    assert info.value.entries == ["model.state_dict", "model.ema"]
    _assert_same(load_state_dict(tmp_path / "n.pt", entry="model.ema"), ema)
    # An entry that itself holds several is still a choice to make, inside it.
    with pytest.raises(CheckpointEntryError, match="inside entry 'model'") as inside:
        load_state_dict(tmp_path / "n.pt", entry="model")
    assert inside.value.entries == ["model.state_dict", "model.ema"]


@pytest.mark.parametrize("entry, words", [
    ("teacher", "no entry 'teacher' (no key 'teacher' at its top level)"),
    ("model.ema", "no key 'ema' at model"),
    ("epoch", "entry 'epoch' holds a int, not weights"),
])
def test_an_entry_the_file_does_not_have_is_refused_listing_the_entries(
        tmp_path: Path, entry: str, words: str) -> None:
    torch.save({"model": _state(), "ema": _shifted(_state()), "epoch": 3}, tmp_path / "two.pt")
    with pytest.raises(CheckpointEntryError, match=re.escape(words)) as info:
        load_state_dict(tmp_path / "two.pt", entry=entry)
    assert info.value.entries == ["model", "ema"] and "'model', 'ema'" in info.value.message


def test_a_file_with_one_set_of_weights_needs_no_entry_but_may_name_it(tmp_path: Path) -> None:
    state = _state()
    torch.save({"state_dict": state, "ema": {"decay": 0.999}, "epoch": 3}, tmp_path / "one.pt")
    _assert_same(load_state_dict(tmp_path / "one.pt"), state)
    _assert_same(load_state_dict(tmp_path / "one.pt", entry="state_dict"), state)
    assert load_checkpoint_entries(tmp_path / "one.pt").entries == ["state_dict"]
    torch.save(state, tmp_path / "plain.pt")
    assert load_checkpoint_entries(tmp_path / "plain.pt").entries == []
    with pytest.raises(CheckpointEntryError, match="at its top level: leave out checkpoint_entry"):
        load_state_dict(tmp_path / "plain.pt", entry="state_dict")


def test_containers_with_equal_weights_are_one_state_dict(tmp_path: Path) -> None:
    state = _state()
    prefixed = {f"module.{k}": v.clone() for k, v in state.items()}
    torch.save({"state_dict": state, "model": prefixed, "ema": {"decay": 0.999}},
               tmp_path / "same.pt")
    _assert_same(load_state_dict(tmp_path / "same.pt"), state)


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module."]
)
def test_wrapper_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    state = _state()
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, tmp_path / "p.pt")
    _assert_same(load_state_dict(tmp_path / "p.pt"), state)
    save_safetensors(tmp_path / "p.safetensors", {prefix + k: v for k, v in state.items()})
    _assert_same(load_state_dict(tmp_path / "p.safetensors"), state)


def test_prefix_collision_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="collides"):
        normalize_state_dict({"w": torch.ones(1), "module.w": torch.ones(1)})


@pytest.mark.parametrize("leaf", [3, "text", [1.0, 2.0], None])
def test_non_tensor_leaf_is_rejected_naming_the_key(tmp_path: Path, leaf: object) -> None:
    torch.save({"net": {"conv1.weight": torch.ones(2), "bad_entry": leaf}}, tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="bad_entry"):
        load_state_dict(tmp_path / "l.pt")


@pytest.mark.parametrize("content", [torch.ones(3), [torch.ones(3)], {}])
def test_non_state_dict_content_is_rejected(tmp_path: Path, content: object) -> None:
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError):
        load_state_dict(tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------
# Safety: pickles are never executed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["zip", "legacy", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "pwned.txt"
    payload = {"state_dict": {"w": torch.ones(1)}, "hook": _WritesAFile(target)}
    path = tmp_path / "evil.pt"
    if writer == "zip":
        torch.save(payload, path)
    elif writer == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not target.exists()
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert not target.exists()
    assert "weights_only=False" not in info.value.message
    with pytest.raises(CheckpointError):
        validate_checkpoint_file(path)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------
# Corrupt and truncated files
# ---------------------------------------------------------------------------------------------


def _save_program(path: Path, kind: str) -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    if kind == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    else:
        torch.export.save(torch.export.export(model, (torch.zeros(2, 3),)), str(path))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
@pytest.mark.parametrize(("kind", "words"), [("torchscript", "a TorchScript module"),
                                             ("export", "a torch.export program")])
def test_program_archives_are_refused_by_kind(tmp_path: Path, kind: str, words: str) -> None:
    # Before: a TorchScript file failed as "corrupt or truncated?" passing on torch's advice to
    # retry with weights_only=False; a .pt2 failed as "corrupt" (data.pkl not found).
    path = tmp_path / "program.pt"
    _save_program(path, kind)
    with pytest.raises(CheckpointError, match=f"program.pt is {words}.*state_dict") as error:
        load_state_dict(path)
    assert "weights_only=False" not in error.value.message


def test_torchs_advice_to_load_unsafely_is_never_passed_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_load(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Cannot use weights_only=True here. Re-running `torch.load` with "
                           "`weights_only` set to `False` will likely succeed")

    save_torch(tmp_path / "c.pt", _state())
    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CheckpointError, match=r"c\.pt \(corrupt or truncated\?\): "
                                              r"RuntimeError$"):
        load_state_dict(tmp_path / "c.pt")


def test_missing_empty_and_unknown_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(tmp_path / "empty.pt")
    (tmp_path / "notes.pt").write_bytes(b"just some text, not weights")
    with pytest.raises(CheckpointError, match="neither safetensors nor"):
        load_state_dict(tmp_path / "notes.pt")


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.99])
def test_truncated_torch_zip_is_rejected_as_truncated(tmp_path: Path, kept: float) -> None:
    path = tmp_path / "model.pt"
    save_torch(path, _state())
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * kept)])
    for read in (load_state_dict, validate_checkpoint_file):
        with pytest.raises(CheckpointError, match="damaged or truncated") as info:
            read(path)  # type: ignore[operator]
        assert "Errno" not in info.value.message and "model.pt" in info.value.message


def test_truncated_safetensors_data_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(path, _state())
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="outside"):
        load_state_dict(path)


def test_safetensors_truncated_inside_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(path, _state())
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="header claims"):
        load_state_dict(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(path)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 400]}}, bytes(16), "outside"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-4, 12]}}, bytes(16), "outside"),
        ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, bytes(8), "needs 16"),
        ({"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), "dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "shape"),
        ({"w": {"dtype": "F32", "shape": [4]}}, bytes(16), "data_offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            bytes(16),
            "overlaps",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(16), "cover"),
        ({"__metadata__": {"epoch": 3}}, b"", "__metadata__"),
    ],
)
def test_bad_safetensors_headers_are_rejected_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: dict, data: bytes, message: str
) -> None:
    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read before the header was validated")

    monkeypatch.setattr(safetensors.torch, "load_file", must_not_load)
    path = _write_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        validate_checkpoint_file(path)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(path)


def test_corrupt_safetensors_json_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    raw = b'{"w": {"dtype": "F32",'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="JSON"):
        load_state_dict(path)


def test_handcrafted_valid_safetensors_loads(tmp_path: Path) -> None:
    # Guards the negative tests above: the same writer gives a loadable file when it is right.
    values = torch.tensor([1.0, -2.0, 3.5, 0.25])
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    path = _write_safetensors(tmp_path / "ok.safetensors", header, values.numpy().tobytes())
    assert load_state_dict(path)["w"].tolist() == [[1.0, -2.0], [3.5, 0.25]]


# ---------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad_value", "word"), [(float("nan"), "NaN"), (float("inf"), "Inf")])
@pytest.mark.parametrize("save", [save_safetensors, save_torch])
def test_non_finite_values_are_rejected_naming_the_key(
    tmp_path: Path, bad_value: float, word: str, save: object
) -> None:
    state = _state()
    state["conv2.weight"][0, 0, 0, 0] = bad_value
    path = tmp_path / "nonfinite.bin"
    save(path, state)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=f"conv2.weight \\(.*{word}"):
        load_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_checkpoints_are_checked_and_load(tmp_path: Path, dtype: torch.dtype) -> None:
    # Before: NotImplementedError ("isfinite" not implemented for 'Float8_e4m3fn').
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _state().items()}
    save_safetensors(tmp_path / "fp8.safetensors", state)
    model = _model()
    load_into(model, load_state_dict(tmp_path / "fp8.safetensors"))
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].float())
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"conv2\.weight \(1 NaN"):
        normalize_state_dict(state)


def test_integer_tensors_are_not_checked_for_finiteness() -> None:
    state = normalize_state_dict({"bn.num_batches_tracked": torch.tensor(5), "w": torch.ones(2)})
    assert int(state["bn.num_batches_tracked"]) == 5


# ---------------------------------------------------------------------------------------------
# Fitting a state dict to a model
# ---------------------------------------------------------------------------------------------


def test_check_compatible_accepts_a_matching_state_dict_even_on_a_meta_model() -> None:
    state = _state()
    with torch.device("meta"):
        meta_model = build_model(ArchitectureSpec(name="small_cnn"))
    check_compatible(meta_model, state)


def test_check_compatible_lists_missing_unexpected_and_mismatched() -> None:
    model = _model()
    state = _state(_model(num_classes=3))
    del state["conv1.weight"]
    state["extra.weight"] = torch.ones(1)
    with pytest.raises(CheckpointMismatchError) as info:
        check_compatible(model, state)
    error = info.value
    assert error.missing == ["conv1.weight"]
    assert error.unexpected == ["extra.weight"]
    assert error.mismatched == [("fc.weight", (3, 64), (10, 64)), ("fc.bias", (3,), (10,))]
    for text in ["conv1.weight", "extra.weight", "fc.weight (checkpoint [3, 64] vs model [10, 64])"]:
        assert text in error.message


def test_mismatch_points_out_a_wrapper_prefix() -> None:
    # A Lightning checkpoint names the network by its attribute: "model.conv1.weight". Before,
    # the message listed 17 missing and 17 unexpected keys without saying why.
    state = {f"model.{k}": v for k, v in _state().items()}
    with pytest.raises(CheckpointMismatchError, match=r"extra prefix 'model\.'"):
        check_compatible(_model(), state)
    state["model.stray"] = torch.zeros(1)  # not every key fits: no hint
    with pytest.raises(CheckpointMismatchError) as error:
        check_compatible(_model(), state)
    assert "prefix" not in error.value.message


def test_mismatch_message_is_truncated_but_lists_are_complete() -> None:
    model = _model()
    state = _state()
    state.update({f"stray.{i}.weight": torch.ones(1) for i in range(50)})
    with pytest.raises(CheckpointMismatchError) as info:
        check_compatible(model, state)
    assert len(info.value.unexpected) == 50
    assert "and 42 more" in info.value.message
    assert "stray.49.weight" not in info.value.message
    assert len(info.value.message) < 1000


def test_load_into_copies_values() -> None:
    model = _model()
    state = _state()
    assert load_into(model, state) is model
    _assert_same({k: v for k, v in model.state_dict().items()}, state)
    state["fc.bias"].add_(1.0)  # the model holds copies, not views of the checkpoint
    assert not torch.equal(model.state_dict()["fc.bias"], state["fc.bias"])


def test_missing_num_batches_tracked_is_optional_and_filled_from_the_model() -> None:
    model = _model()
    model.bn1.num_batches_tracked.fill_(17)
    state = {k: v for k, v in _state().items() if not k.endswith("num_batches_tracked")}
    load_into(model, state)
    assert int(model.bn1.num_batches_tracked) == 17
    torch.testing.assert_close(model.bn1.running_mean, state["bn1.running_mean"])


def test_load_into_rejects_mismatch_without_touching_the_model() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _state(_model(num_classes=3))
    with pytest.raises(CheckpointMismatchError):
        load_into(model, state)
    _assert_same(model.state_dict(), before)


def test_load_into_casts_to_the_model_dtype() -> None:
    model = _model().double()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in _state().items()}
    load_into(model, state)
    assert model.conv1.weight.dtype == torch.float64
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].double())


@pytest.mark.parametrize(("change", "words"), [
    (lambda v: v.round().to(torch.int64), "conv1.weight (integer torch.int64"),
    (lambda v: v.to(torch.complex64), "conv1.weight (complex torch.complex64"),
    (lambda v: (v.double() * 1e300), "conv1.weight (torch.float64 values beyond"),
])
def test_load_into_refuses_tensors_the_cast_would_change(change, words: str) -> None:
    # load_state_dict casts silently: integer weights ran as garbage, complex lost its
    # imaginary part and a float64 1e300 became inf, all without an error.
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _state()
    state["conv1.weight"] = change(state["conv1.weight"])
    with pytest.raises(CheckpointMismatchError, match=r"cannot be cast.*" + re.escape(words)):
        load_into(model, state)
    _assert_same(model.state_dict(), before)


def test_load_into_lets_batchnorm_counters_be_any_dtype() -> None:
    # e.g. a checkpoint converted with {k: v.half() for k, v in ...}: the counters do not
    # affect outputs.
    model = _model()
    load_into(model, {k: v.half() for k, v in _state().items()})
    assert model.bn1.num_batches_tracked.dtype == torch.int64


def test_load_into_gives_modules_their_format_version(tmp_path: Path) -> None:
    # Before: torchvision:mnasnet* failed with ValueError on every checkpoint read from a file.
    torch.manual_seed(0)
    source = nn.Sequential(VersionedLinear(3, 2))
    save_safetensors(tmp_path / "v.safetensors", source.state_dict())
    target = nn.Sequential(VersionedLinear(3, 2))
    load_into(target, load_state_dict(tmp_path / "v.safetensors"))
    torch.testing.assert_close(target[0].weight, source[0].weight)
    mnasnet = build_model(ArchitectureSpec(name="torchvision:mnasnet0_5"))
    load_into(mnasnet, {k: v.clone() for k, v in mnasnet.state_dict().items()})


def test_a_module_that_refuses_its_values_is_a_mismatch_error() -> None:
    class Refusing(nn.Linear):
        def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("this layer wants another layout")

    model = nn.Sequential(Refusing(3, 2))
    with pytest.raises(CheckpointMismatchError, match=r"refused the checkpoint.*another layout"):
        load_into(model, {k: v.clone() for k, v in model.state_dict().items()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_into_a_model_on_the_gpu() -> None:
    model = _model().to("cuda")
    state = _state()
    load_into(model, state)
    assert model.conv1.weight.device.type == "cuda"
    torch.testing.assert_close(model.conv1.weight.cpu(), state["conv1.weight"])


def test_tied_keys_must_hold_one_value(tmp_path: Path) -> None:
    """``a.weight`` and ``b.weight`` are one Parameter of the model. A checkpoint of an untied
    model with different values under them loaded before without a word, the last key winning;
    a round trip through our own safetensors files (which store shared tensors twice) loads."""
    model = TiedWeights()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    save_safetensors(tmp_path / "tied.safetensors", state)
    load_into(TiedWeights(), load_state_dict(tmp_path / "tied.safetensors"))
    state["b.weight"] = state["b.weight"] + 1.0
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"a\.weight = b\.weight"):
        load_into(model, state)
    _assert_same(model.state_dict(), before)


def test_a_container_without_tensors_is_passed_over_in_the_error(tmp_path: Path) -> None:
    # 'state' often holds a trainer's counters: the error lists the keys where the weights
    # might be, not the counters.
    torch.save({"state": {"step": 3}, "student": _state()}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="top-level keys: state, student"):
        load_state_dict(tmp_path / "s.pt")
