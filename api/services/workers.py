"""The worker registry as the API uses it: the device and dataset checks of job creation and the
admin list.

A job that names an accelerator (``cuda``, ``cuda:N``, ``mps``, ``xpu``, ``xpu:N``) is refused
with 422 ``device_unavailable`` when workers of the stage queue are live and none of them has
that device, instead of failing on the worker later. A job that names a built-in dataset read
from the workers' ``DATA_ROOT`` (cifar10, cifar100, svhn, mnist) is refused with 422
``dataset_unavailable`` when live workers of the stage queue that could run its device exist and
none of them reports the dataset's files there (each worker looks, ``worker/registry.py``).

With no live worker at all the job is accepted: a worker may start later (the registry cannot
tell "none yet" from "none with this device"), and the worker itself still refuses a device it
lacks and fails a job whose dataset it lacks with a message naming both. A job accepted so with
a built-in dataset gets a warning saying that nothing was checked. A worker run with
``WORKER_DEVICE`` runs every job on that device, so it takes any device; a worker that does not
report its datasets (an older release) counts as holding every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from persistence.models import Worker
from persistence.settings import Settings
from persistence.workers import live_workers
from rift.data_root import DATA_ROOT_FILES, expected_layout, reads_data_root
from rift.device_names import parse_device_name, union_labels

DEVICE_FIELD = "config.device"
DATASET_FIELD = "config.dataset.name"
#: Workers listed in the details of a ``device_unavailable`` error (the error stays small).
MAX_LISTED_WORKERS = 20


def check_device_available(session: Session, settings: Settings,
                           device: str) -> list[Worker] | None:
    """Refuse ``device`` when live workers of the stage queue exist and none has it; returns the
    live workers of the stage queue that can run it (empty when none is live), or None for a
    device every worker has (``cpu``, ``auto``: the registry is not read).

    Raises:
        InvalidInput: (422, code ``device_unavailable``, field ``config.device``) naming the
            device and the live workers' devices, with the workers in ``live_workers``.
    """
    wanted = parse_device_name(device)
    if wanted is None or not wanted.is_accelerator:
        return None
    workers = _stage_workers(session, settings)
    able = [w for w in workers if w.device_override or wanted.available_in(w.devices)]
    if able or not workers:
        return able
    count = f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"
    labels = "; ".join(union_labels(w.devices for w in workers)) or "none"
    raise InvalidInput(
        f"no live worker has {device!r}: {count}, devices {labels}", field=DEVICE_FIELD,
        code="device_unavailable",
        details={"live_workers": [_worker_summary(w) for w in workers[:MAX_LISTED_WORKERS]]})


def check_dataset_available(session: Session, settings: Settings,
                            runners: Sequence[Worker] | None, dataset: str) -> str | None:
    """Refuse the built-in ``dataset`` when live workers that could run the job exist (``runners``,
    from :func:`check_device_available`; None: every live worker of the stage queue) and none
    holds it in its ``DATA_ROOT``. Returns the job's warning when there were none to ask, else
    None (also for a dataset not read from ``DATA_ROOT``: an upload, or digits).

    Raises:
        InvalidInput: (422, code ``dataset_unavailable``, field ``config.dataset.name``) naming
            the dataset, how many workers were checked and the files expected in their
            ``DATA_ROOT``; ``live_workers`` lists them with their datasets, ``expected_files``
            the files.
    """
    if not reads_data_root(dataset):
        return None
    workers = list(runners) if runners is not None else _stage_workers(session, settings)
    if not workers:
        return (f"no live worker was registered when the job was created, so whether the "
                f"workers' DATA_ROOT holds dataset '{dataset}' was not checked; a worker "
                f"without it fails the job (its files: {expected_layout(dataset)})")
    if any(w.datasets is None or dataset in w.datasets for w in workers):
        return None
    count = f"{len(workers)} live worker{'s' if len(workers) != 1 else ''}"
    raise InvalidInput(
        f"dataset '{dataset}' is in no live worker's DATA_ROOT ({count} checked): place its "
        f"files in the workers' DATA_ROOT in torchvision's layout ({expected_layout(dataset)}), "
        "or upload the data (POST /v1/datasets) and pass its 'dataset_id'",
        field=DATASET_FIELD, code="dataset_unavailable",
        details={"workers_checked": len(workers),
                 "live_workers": [{"id": w.id, "hostname": w.hostname, "datasets": w.datasets}
                                  for w in workers[:MAX_LISTED_WORKERS]],
                 "expected_files": list(DATA_ROOT_FILES[dataset])})


def _stage_workers(session: Session, settings: Settings) -> list[Worker]:
    return live_workers(session, heartbeat_seconds=settings.worker_heartbeat_seconds,
                        queue=settings.celery_queue)


def _worker_summary(worker: Worker) -> dict[str, Any]:
    return {"id": worker.id, "hostname": worker.hostname, "devices": worker.devices}


def list_live_workers(session: Session, settings: Settings) -> list[Worker]:
    """Every live worker (any queue), by id."""
    return live_workers(session, heartbeat_seconds=settings.worker_heartbeat_seconds)
