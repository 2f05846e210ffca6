"""The validator's checkpoint checks (``validator/checkpoint.py``): every value read, in chunks,
for every float format, without torch for safetensors; PyTorch files through the restricted,
memory-mapped loader."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rift.errors import CheckpointEntryError, CheckpointError
from validator import checkpoint as checker
from validator.checkpoint import inspect_checkpoint_file


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    """A safetensors file written by hand (name → (dtype, shape, raw little-endian bytes))."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, _, raw in tensors.values():
            handle.write(raw)
    return path


def test_clean_safetensors_is_summarised_without_torch(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "ok.safetensors", {
        "module.fc.weight": ("F32", [3, 4], np.ones(12, "<f4").tobytes()),
        "fc.bias_int": ("I64", [3], np.array([1, 2, 3], "<i8").tobytes()),
    })
    code = ("import sys; from pathlib import Path; from validator.checkpoint import "
            f"inspect_checkpoint_file as f; r = f(Path({str(path)!r}), 'ok'); "
            "print(r.num_tensors, r.num_parameters, sorted(r.shapes), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "15", "['fc.bias_int',", "'fc.weight']", "False"]


def _float_bits(dtype: str, values: list[float]) -> bytes:
    if dtype == "BF16":  # the high half of float32
        return (np.array(values, "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.array(values, {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]).tobytes()


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
def test_non_finite_values_are_counted_in_every_float_format(tmp_path: Path, dtype: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A chunk of 16 bytes: the tensor is read in several chunks, the bad values in the last.
    monkeypatch.setattr(checker, "CHUNK_BYTES", 16)
    values = [0.5] * 37 + [float("nan"), float("inf"), float("-inf")]
    path = write_safetensors(tmp_path / "bad.safetensors", {
        "ok": ("F32", [2], _float_bits("F32", [1.0, -2.0])),
        "w": (dtype, [len(values)], _float_bits(dtype, values)),
    })
    with pytest.raises(CheckpointError, match=r"upload\.st holds non-finite values in w "
                                              r"\(1 NaN, 2 Inf\)"):
        inspect_checkpoint_file(path, "upload.st")


def test_eight_bit_float_nan_patterns(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "f8.safetensors", {
        "e4m3": ("F8_E4M3", [4], bytes([0x00, 0x7E, 0xFF, 0x7F])),  # 0x7F/0xFF: NaN; 0x7E: 448
        "e5m2": ("F8_E5M2", [3], bytes([0x7C, 0x7D, 0x3C])),  # Inf, NaN, 1.0
    })
    with pytest.raises(CheckpointError, match=r"e4m3 \(2 NaN, 0 Inf\).*e5m2 \(1 NaN, 1 Inf\)"):
        inspect_checkpoint_file(path, "f8")


def test_empty_and_colliding_safetensors_are_refused(tmp_path: Path) -> None:
    empty = write_safetensors(tmp_path / "e.safetensors", {})
    with pytest.raises(CheckpointError, match="no tensors"):
        inspect_checkpoint_file(empty, "e")
    raw = np.zeros(2, "<f4").tobytes()
    twice = write_safetensors(tmp_path / "t.safetensors", {"module.a": ("F32", [2], raw),
                                                           "a": ("F32", [2], raw)})
    with pytest.raises(CheckpointError, match="collides"):
        inspect_checkpoint_file(twice, "t")


def test_pytorch_files_are_checked_piece_by_piece(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(checker, "CHUNK_BYTES", 64)
    weight = torch.zeros(40, 30)
    weight[39, 29] = float("nan")
    strided = torch.ones(30, 40).t()  # not contiguous: split by rows
    strided[5, 7] = float("inf")
    torch.save({"state_dict": {"module.w": weight, "s": strided, "n": torch.arange(5)}},
               tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"w \(1 NaN, 0 Inf\), s \(0 NaN, 1 Inf\)"):
        inspect_checkpoint_file(tmp_path / "c.pt", "c.pt")
    torch.save({"w": torch.ones(40, 30), "s": torch.ones(30, 40).t()}, tmp_path / "ok.pt")
    summary = inspect_checkpoint_file(tmp_path / "ok.pt", "ok.pt")
    assert summary.format == "torch" and summary.shapes == {"w": (40, 30), "s": (40, 30)}
    assert summary.num_parameters == 2400


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_torchscript_uploads_are_refused_as_programs(tmp_path: Path) -> None:
    import torch

    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(tmp_path / "s.pt"))
    with pytest.raises(CheckpointError, match="TorchScript module"):
        inspect_checkpoint_file(tmp_path / "s.pt", "s.pt")


def test_pytorch_fp8_files_are_checked(tmp_path: Path) -> None:
    # Before: NotImplementedError ("isfinite" not implemented for 'Float8_e4m3fn').
    import torch

    weight = torch.zeros(4, 3).to(torch.float8_e4m3fn)
    torch.save({"w": weight}, tmp_path / "f8.pt")
    assert inspect_checkpoint_file(tmp_path / "f8.pt", "f8.pt").shapes == {"w": (4, 3)}
    weight[1, 2] = float("nan")
    torch.save({"w": weight}, tmp_path / "f8nan.pt")
    with pytest.raises(CheckpointError, match=r"w \(1 NaN, 0 Inf\)"):
        inspect_checkpoint_file(tmp_path / "f8nan.pt", "f8nan.pt")


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_pickled_code_is_refused_by_name(tmp_path: Path) -> None:
    import torch

    torch.save({"w": torch.ones(2), "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        inspect_checkpoint_file(tmp_path / "evil.pt", "evil.pt")
    (tmp_path / "legacy.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError):
        inspect_checkpoint_file(tmp_path / "legacy.pkl", "legacy.pkl")


def test_memory_mapped_pickled_model_with_training_arguments_is_read(tmp_path: Path) -> None:
    # The validator loads zip files with mmap=True, a path the library's tests do not take.
    import argparse

    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save({"net": model, "args": argparse.Namespace(lr=0.1), "best": np.float64(0.9)},
               tmp_path / "m.pt")
    summary = inspect_checkpoint_file(tmp_path / "m.pt", "m.pt")
    assert summary.shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_entry_of_a_model_and_its_ema_is_checked_and_listed(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    state = model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "scratch-1.pt"
    torch.save({"model": state, "ema": ema, "epoch": 3}, path)
    # An upload names no entry: all are checked, and listed for the job to choose from.
    upload = inspect_checkpoint_file(path, "two.pt")
    assert upload.entries == ["model", "ema"]
    assert upload.shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert inspect_checkpoint_file(path, "two.pt", entry="ema").entries == ["model", "ema"]
    with pytest.raises(CheckpointEntryError, match=r"two\.pt has no entry 'teacher'") as info:
        inspect_checkpoint_file(path, "two.pt", entry="teacher")
    assert info.value.entries == ["model", "ema"]
    # The entry a job does not choose is still checked whole on upload.
    ema["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"model": state, "ema": ema}, path)
    with pytest.raises(CheckpointError, match=r"two\.pt \(entry 'ema'\) holds non-finite values"):
        inspect_checkpoint_file(path, "two.pt")
    safetensors = write_safetensors(tmp_path / "w.safetensors",
                                    {"w": ("F32", [1], np.ones(1, "<f4").tobytes())})
    with pytest.raises(CheckpointEntryError, match="safetensors file"):
        inspect_checkpoint_file(safetensors, "w.safetensors", entry="ema")


def test_an_entry_error_crosses_the_process_boundary_with_its_entries() -> None:
    from validator.protocol import decode_error, encode_error

    decoded = decode_error(encode_error(CheckpointEntryError("pick one", ["model", "ema"])))
    assert isinstance(decoded, CheckpointEntryError)
    assert (decoded.message, decoded.entries) == ("pick one", ["model", "ema"])


def test_every_library_errors_field_crosses_the_process_boundary() -> None:
    """``field`` belongs to every library error (``RiftError``). Before: only a ConfigError's
    crossed the validator's boundary. The answer's field stays the request field the caller
    names for any other class (an upload's dataset error is about the upload, not a job's
    ``config.dataset.path``); a ConfigError's setting is the answer's, as before."""
    from api.errors import from_rift_error
    from rift.errors import CheckpointError, ConfigError, DatasetError
    from validator.protocol import decode_error, encode_error

    for error in (ConfigError("bad module", field="finetune.module"),
                  CheckpointError("which weights", field="checkpoint_entry"),
                  DatasetError("no such file", field="dataset.path"),
                  CheckpointEntryError("pick one", ["model", "ema"], field="checkpoint_entry")):
        decoded = decode_error(encode_error(error))
        assert type(decoded) is type(error) and decoded.field == error.field
    assert from_rift_error(ConfigError("bad", field="finetune.module"), field="x").field \
        == "config.finetune.module"
    assert from_rift_error(DatasetError("bad", field="dataset.path"), field="file").field \
        == "file"


def test_a_storage_claiming_more_elements_than_its_record_holds_is_refused(tmp_path: Path) -> None:
    """The memory-mapped load slices a storage out of the whole file without comparing its
    claimed size with its record, so this file (4 floats stored, 2^31 - 1 claimed) passed the
    upload and failed the job's plain load ("record size ... does not match")."""
    import copy
    import zipfile

    import torch

    torch.save({"w": torch.ones(4), "b": torch.zeros(3, dtype=torch.float64)}, tmp_path / "ok.pt")
    assert inspect_checkpoint_file(tmp_path / "ok.pt", "ok.pt").shapes == {"w": (4,), "b": (3,)}
    with zipfile.ZipFile(tmp_path / "ok.pt") as source, \
            zipfile.ZipFile(tmp_path / "lie.pt", "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                # The first storage tuple: ('storage', FloatStorage, '0', 'cpu', 4) → 2^31 - 1.
                claimed = b"X\x03\x00\x00\x00cpuq\x06K\x04"
                assert claimed in data
                data = data.replace(claimed, b"X\x03\x00\x00\x00cpuq\x06J"
                                    + struct.pack("<i", 2**31 - 1), 1)
            target.writestr(copy.copy(info), data)
    with pytest.raises(CheckpointError, match=r"lie\.pt is corrupt: storage '0' claims "
                                              r"2147483647 elements of 4 byte\(s\) but its "
                                              r"record holds 16 bytes"):
        inspect_checkpoint_file(tmp_path / "lie.pt", "lie.pt")


def test_a_normalisers_values_are_recorded(tmp_path: Path) -> None:
    # So that job creation can compare them with the job's normalisation without the file.
    import torch

    path = write_safetensors(tmp_path / "n.safetensors", {
        "module.mu": ("BF16", [1, 3, 1, 1], _float_bits("BF16", [0.5, 0.25, 0.125])),
        "module.sigma": ("F16", [3], _float_bits("F16", [0.5, 1.0, 2.0])),
        "fc.weight": ("F32", [3], np.ones(3, "<f4").tobytes()),
        "big.mean": ("F32", [65], np.ones(65, "<f4").tobytes()),
    })
    assert inspect_checkpoint_file(path, "n").normalizers == {
        "mu": [0.5, 0.25, 0.125], "sigma": [0.5, 1.0, 2.0]}
    pt = tmp_path / "n.pt"
    torch.save({"model": {"module.normalizer.new_mean": torch.tensor([0.5]).half(),
                          "module.normalizer.new_std": torch.tensor([[0.25]]),
                          "module.model.fc.weight": torch.ones(3)}}, pt)
    assert inspect_checkpoint_file(pt, "n").normalizers == {
        "normalizer.new_mean": [0.5], "normalizer.new_std": [0.25]}


def test_the_normaliser_values_recorded_are_bounded(tmp_path: Path) -> None:
    # Thousands of small tensors under normalisers' names: each was read and carried to the
    # fit check (and the API read each by a range request); now only whole pairs, bounded.
    from rift.checkpoint_format import MAX_NORMALIZER_TENSORS

    tensors = {f"b{i}.{leaf}": ("F32", [1], _float_bits("F32", [0.5]))
               for i in range(500) for leaf in ("mean", "std")}
    tensors["lonely.mu"] = ("F32", [1], _float_bits("F32", [0.5]))
    normalizers = inspect_checkpoint_file(
        write_safetensors(tmp_path / "many.safetensors", tensors), "many").normalizers
    assert len(normalizers) == MAX_NORMALIZER_TENSORS
    assert "lonely.mu" not in normalizers
