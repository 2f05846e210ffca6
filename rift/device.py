"""Device and precision selection. Nothing in the library hard-codes a device: it is passed in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from rift.errors import ConfigError


def visible_devices(kind: str) -> int:
    """How many devices of type ``kind`` (``cpu``, ``cuda``, ``mps``, ``xpu``) this process can
    use; 0 when the build or the machine has none."""
    if kind == "cpu":
        return 1
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return int(xpu.device_count()) if xpu is not None and xpu.is_available() else 0
    return 0


def resolve_device(requested: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"xpu"`` or ``"xpu:N"``
    into a device; ``auto`` prefers CUDA.

    Raises:
        ConfigError: (field ``device``) an unknown name, or a device this process cannot use
            (no such accelerator, or an index past the visible ones), which would otherwise fail
            at the first tensor moved there.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {requested!r}: {exc}", field="device") from exc
    count = visible_devices(device.type)
    if count == 0:
        name = "CUDA" if device.type == "cuda" else device.type.upper()
        raise ConfigError(f"device {requested!r} was asked for but {name} is not available",
                          field="device")
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {requested!r} was asked for but only {count} {device.type} device(s) are "
            f"visible ({device.type}:0 to {device.type}:{count - 1})", field="device")
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

    On CPU the kernels are the same either way. On CUDA, cuDNN's autotuner and some atomics-based
    kernels give different low bits from run to run; MRC values differ by ~1e-6 and rankings of
    near-tied modules can flip, so "same seed, same device, same result" needs this (at some speed
    cost). cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it first starts, so it is set here, before
    any CUDA work in a fresh worker or CLI process; ops without a deterministic kernel warn instead
    of failing.

    PyTorch's deterministic mode also fills every new uninitialised tensor (``torch.empty``,
    ``empty_like``: each activation, gradient and workspace) with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``), a debugging aid for code that
    reads memory it never wrote. That fill is turned off in the block: every kernel we run
    writes its whole output, so results are bit for bit the same, and on one CPU thread the
    fills were 20 % of a ResNet-18 fine-tuning step (torch.profiler: ``aten::fill_``, 3,346
    calls in two epochs; ``bench/finetune.py`` measures the stage with and without).

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
    # A property of a module class, which torch's type stubs do not declare.
    fills = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]
        torch.utils.deterministic.fill_uninitialized_memory = fills  # type: ignore[attr-defined]
