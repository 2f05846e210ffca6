"""What a worker checks once, before it takes any message: the database schema is current, the
object store accepts its bucket and keys (:mod:`persistence.startup`), and the device
``WORKER_DEVICE`` names exists here. A failure stops the worker with one line (``SystemExit``),
since every stage it took would otherwise fail: a missing table as an unexpected error, a
missing bucket as an unavailable store, a missing device as ``invalid_config`` on every job.

Connected to Celery's ``worker_init`` (only ``celery worker`` sends it, not ``celery inspect``), in
the main process before the pool forks. The devices are counted in a child process: asking CUDA
here, before the fork, would break CUDA in the pool's children (:mod:`worker.registry`).
"""

from __future__ import annotations

import subprocess
import sys

from persistence.settings import Settings
from persistence.startup import check_service_start
from rift.device_names import parse_device_name

#: Seconds the device count may take: a torch import plus CUDA's start, on a loaded host.
DEVICE_PROBE_TIMEOUT_S = 120.0


def count_devices(kind: str) -> int:
    """Devices of type ``kind`` that a fresh Python process on this host sees."""
    code = f"from rift.device import visible_devices; print(visible_devices({kind!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=DEVICE_PROBE_TIMEOUT_S, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"rift: could not count the {kind} devices of this host: {last}")
    return int(result.stdout.strip().splitlines()[-1])


def refuse_missing_device(worker_device: str | None) -> None:
    """Stop the process when ``worker_device`` names an accelerator this host lacks."""
    device = parse_device_name(worker_device) if worker_device else None
    if device is None or not device.is_accelerator:
        return
    count = count_devices(device.type)
    if not device.available_in({device.type: count}):
        seen = f"{count} {device.type} device{'s' if count != 1 else ''}"
        raise SystemExit(
            f"rift: WORKER_DEVICE={worker_device!r}, but this host has {seen}: run the worker "
            "where that device is, or set WORKER_DEVICE to one it has (or leave it unset)")


def check_worker_start(settings: Settings) -> None:
    """The service's checks (schema, object store), then the device; returns when the worker
    may start."""
    check_service_start(settings)
    refuse_missing_device(settings.worker_device)
