"""Device and precision selection. Nothing in the library hard-codes a device: it is passed in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from rift.errors import ConfigError


def resolve_device(requested: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a device; ``auto`` prefers CUDA."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {requested!r}: {exc}", field="device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} was asked for but CUDA is not available", "device")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when asked for (model arithmetic only; callers keep losses in fp32)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Ask PyTorch for deterministic kernels while the block runs, then restore its settings.

    On CPU this changes nothing. On CUDA, cuDNN's autotuner and some atomics-based kernels give
    different low bits from run to run; MRC values differ by ~1e-6 and rankings of near-tied modules
    can flip, so "same seed, same device, same result" needs this (at some speed cost). cuBLAS reads
    ``CUBLAS_WORKSPACE_CONFIG`` when it first starts, so it is set here, before any CUDA work in a
    fresh worker or CLI process; ops without a deterministic kernel warn instead of failing.

    With ``enabled`` false the block gets the fastest kernels instead: cuDNN's autotuner is on
    (it times the convolution algorithms once per input shape and keeps the quickest).
    """
    if not enabled:
        autotune = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = autotune
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]
