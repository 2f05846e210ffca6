"""Device selection and the deterministic-kernels switch."""

from __future__ import annotations

import pytest
import torch

from rift.device import deterministic_kernels, resolve_device
from rift.errors import ConfigError


def test_auto_prefers_cuda_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_device("cuda:0")
    assert error.value.field == "device"


@pytest.mark.parametrize("device", ["mps", "xpu", "xpu:1"])
def test_an_accelerator_this_build_lacks_is_a_config_error(device: str) -> None:
    # Before: a RuntimeError ("PyTorch is not linked with support for mps devices") at the first
    # tensor moved there, after the data had been loaded.
    if torch.device(device).type == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if torch.device(device).type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    with pytest.raises(ConfigError, match="is not available") as error:
        resolve_device(device)
    assert error.value.field == "device"


def test_a_cuda_index_past_the_visible_devices_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"only 2 cuda device\(s\).*cuda:0 to cuda:1") as error:
        resolve_device("cuda:2")
    assert error.value.field == "device"


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gpu0"):
        resolve_device("gpu0")


def test_deterministic_kernels_are_scoped() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    with deterministic_kernels(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]
        assert torch.backends.cudnn.benchmark  # the fastest kernels: the autotuner is on
    assert torch.backends.cudnn.benchmark == before[1]


def test_deterministic_kernels_do_not_fill_new_tensors_with_nan() -> None:
    """The fill cost a fine-tuning step time for nothing: every kernel writes its output
    (bench/finetune.py: the same θ_FT with and without it). The setting is put back after."""
    fills = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    with deterministic_kernels(True):
        assert not torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    assert torch.utils.deterministic.fill_uninitialized_memory == fills  # type: ignore[attr-defined]
