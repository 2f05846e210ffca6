"""Where the parts of a sharded MRC table were computed, and whether they agree.

Each shard records the device and the torch version it ran on beside its rows (its
``mrc_shards.result``: :func:`platform_of`). A merged table whose shards ran on workers of another
device type or GPU model, or under another torch version, than each other or than the prepare step
(which made the adversarial set and the job's ``manifest.json``) mixes rows computed by other
kernels: each is right, but they agree with one task's table up to float rounding only, and the
manifest alone would name one device. :func:`shard_platforms` lists them for ``manifest.json`` and
:func:`mixed_platforms_warning` says so in a ``warning`` event. Two indices of one GPU model
(``cuda:0``, ``cuda:1``) run the same kernels, so the index is not compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: Keys of a shard's recorded part that are not :class:`rift.pipeline.MRCStageResult` fields.
DEVICE_KEY = "device"
TORCH_KEY = "torch"

_DEVICE_INDEX = re.compile(r"^([a-z]+):\d+")


def platform_of(device: str) -> dict[str, str]:
    """The keys a shard adds to its recorded part: ``device`` as the job records one
    (``worker.stages.describe_device``) and the torch version of the process that scored it."""
    return {DEVICE_KEY: device, TORCH_KEY: torch.__version__}


def _kind(device: str | None) -> str | None:
    """The device without its index: ``cuda:1 (NVIDIA H100)`` → ``cuda (NVIDIA H100)``."""
    return None if device is None else _DEVICE_INDEX.sub(r"\1", device)


def shard_platforms(parts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per shard (index order): its modules, device and torch version (None for a part
    recorded before shards recorded them)."""
    return [{"shard": index, "modules": [str(row["name"]) for row in part.get("rows", [])],
             DEVICE_KEY: part.get(DEVICE_KEY), TORCH_KEY: part.get(TORCH_KEY)}
            for index, part in enumerate(parts)]


def mixed_platforms_warning(platforms: Sequence[Mapping[str, Any]],
                            prepared: Mapping[str, Any] | None) -> str | None:
    """The warning for a table whose shards (and the prepare step, ``prepared``: the manifest's
    ``device`` and ``versions.torch``) ran on more than one device kind or torch version; None
    when they agree or nothing was recorded to compare."""
    seen: dict[tuple[str | None, str | None], list[str]] = {}
    if prepared is not None:
        versions = prepared.get("versions")
        torch_version = versions.get("torch") if isinstance(versions, Mapping) else None
        device = prepared.get("device")
        if isinstance(device, str) and isinstance(torch_version, str):
            seen.setdefault((_kind(device), torch_version), []).append("the adversarial set")
    for entry in platforms:
        if entry.get(DEVICE_KEY) is None or entry.get(TORCH_KEY) is None:
            continue
        seen.setdefault((_kind(entry[DEVICE_KEY]), entry[TORCH_KEY]), []).append(
            f"shard {entry['shard']}")
    if len(seen) < 2:
        return None
    where = "; ".join(f"{', '.join(names)} on {device} with torch {version}"
                      for (device, version), names in seen.items())
    return ("the MRC table was computed on more than one kind of device or torch version "
            f"({where}): its rows agree with one worker's table up to float rounding only, "
            "not bit for bit, and a near tie may order modules otherwise; the baseline is "
            "shard 0's. Run the job's workers on one device kind and torch version to avoid "
            "this (manifest.json lists each shard's)")
