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
