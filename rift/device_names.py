"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``, ``xpu:N``) read without
torch, so that the API, which never imports torch, can ask whether a worker's devices hold the
one a job names. :func:`rift.device.resolve_device` turns the same names into a ``torch.device``
inside a process that has the devices; :data:`rift.config.DEVICE_PATTERN` is the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rift.config import DEVICE_PATTERN

#: Every device type :func:`rift.device.visible_devices` counts; all but ``cpu`` are accelerators.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


@dataclass(frozen=True)
class DeviceName:
    """A device type with an optional index (``cuda`` is "any CUDA device", ``cuda:1`` the
    second)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    @property
    def is_accelerator(self) -> bool:
        return self.type != "cpu"

    def available_in(self, counts: Mapping[str, int]) -> bool:
        """Whether a process with ``counts`` devices per type (``{"cpu": 1, "cuda": 2}``) has
        this one: its type present, and more devices of it than the index."""
        count = int(counts.get(self.type, 0))
        return count > 0 and (self.index is None or self.index < count)


def parse_device_name(name: str) -> DeviceName | None:
    """The device ``name`` names; None for ``auto`` (the worker picks).

    Raises:
        ValueError: a name outside the grammar of :data:`rift.config.DEVICE_PATTERN`.
    """
    if re.fullmatch(DEVICE_PATTERN, name) is None:
        raise ValueError(f"unknown device {name!r}")
    if name == "auto":
        return None
    kind, _, index = name.partition(":")
    return DeviceName(kind, int(index) if index else None)


def device_labels(counts: Mapping[str, int]) -> list[str]:
    """The devices of ``counts`` one by one: ``{"cpu": 1, "cuda": 2}`` gives ``cpu``,
    ``cuda:0``, ``cuda:1`` (``cpu`` and ``mps`` have no index: one of each at most)."""
    labels = []
    for kind in sorted(counts, key=_type_order):
        count = int(counts[kind])
        if count <= 0:
            continue
        if kind in ("cpu", "mps"):
            labels.append(kind)
        else:
            labels.extend(f"{kind}:{index}" for index in range(count))
    return labels


def union_labels(many: Iterable[Mapping[str, int]]) -> list[str]:
    """The devices found in any of ``many``, each once, cpu first then by type and index."""
    seen = {label for counts in many for label in device_labels(counts)}
    return sorted(seen, key=_label_order)


def _type_order(kind: str) -> tuple[int, str]:
    return (DEVICE_TYPES.index(kind) if kind in DEVICE_TYPES else len(DEVICE_TYPES), kind)


def _label_order(label: str) -> tuple[tuple[int, str], int]:
    kind, _, index = label.partition(":")
    return (_type_order(kind), int(index) if index else -1)
