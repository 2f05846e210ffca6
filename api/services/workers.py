"""The worker registry as the API uses it: the device check of job creation and the admin list.

A job that names an accelerator (``cuda``, ``cuda:N``, ``mps``, ``xpu``, ``xpu:N``) is refused
with 422 ``device_unavailable`` when workers of the stage queue are live and none of them has
that device, instead of failing on the worker later. With no live worker at all the job is
accepted: a worker may start later (the registry cannot tell "none yet" from "none with this
device"), and the worker itself still refuses a device it lacks. A worker run with
``WORKER_DEVICE`` runs every job on that device, so it takes any job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from persistence.models import Worker
from persistence.settings import Settings
from persistence.workers import live_workers
from rift.device_names import parse_device_name, union_labels

DEVICE_FIELD = "config.device"
#: Workers listed in the details of a ``device_unavailable`` error (the error stays small).
MAX_LISTED_WORKERS = 20


def check_device_available(session: Session, settings: Settings, device: str) -> None:
    """Refuse ``device`` when live workers of the stage queue exist and none has it.

    Raises:
        InvalidInput: (422, code ``device_unavailable``, field ``config.device``) naming the
            device and the live workers' devices, with the workers in ``live_workers``.
    """
    wanted = parse_device_name(device)
    if wanted is None or not wanted.is_accelerator:
        return
    workers = live_workers(session, heartbeat_seconds=settings.worker_heartbeat_seconds,
                           queue=settings.celery_queue)
    if not workers or any(w.device_override or wanted.available_in(w.devices) for w in workers):
        return
    count = f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"
    labels = "; ".join(union_labels(w.devices for w in workers)) or "none"
    raise InvalidInput(
        f"no live worker has {device!r}: {count}, devices {labels}", field=DEVICE_FIELD,
        code="device_unavailable",
        details={"live_workers": [_worker_summary(w) for w in workers[:MAX_LISTED_WORKERS]]})


def _worker_summary(worker: Worker) -> dict[str, Any]:
    return {"id": worker.id, "hostname": worker.hostname, "devices": worker.devices}


def list_live_workers(session: Session, settings: Settings) -> list[Worker]:
    """Every live worker (any queue), by id."""
    return live_workers(session, heartbeat_seconds=settings.worker_heartbeat_seconds)
