"""What a worker checks once, before it takes any message: the database schema is current, the
object store accepts its bucket and keys (:mod:`persistence.startup`), ``DATA_ROOT`` is a folder
it may read, the MLflow client is installed when ``MLFLOW_TRACKING_URI`` is set, and the device
``WORKER_DEVICE`` names exists here. A failure stops the worker with
one line (``SystemExit``), since every stage it took would otherwise fail: a missing table as an
unexpected error, a missing bucket as an unavailable store, a missing device as
``invalid_config`` on every job, a data folder that is a file as a dataset error.

Connected to Celery's ``worker_init`` (only ``celery worker`` sends it, not ``celery inspect``), in
the main process before the pool forks. The devices are counted in a child process: asking CUDA
here, before the fork, would break CUDA in the pool's children (:mod:`worker.registry`).
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from persistence.settings import Settings
from persistence.startup import check_service_start, os_reason
from persistence.storage import PASSING_LOCAL_ERRORS
from rift.device_names import parse_device_name

logger = logging.getLogger(__name__)

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


def probe_readable_folder(folder: Path) -> None:
    """List ``folder`` (its first entry): raises ``OSError`` when it is missing, not a folder,
    or this user may not read or enter it. The built-in datasets are only ever read there."""
    with os.scandir(folder) as entries:
        next(entries, None)
    if not os.access(folder, os.R_OK | os.X_OK):  # scandir needs read; the files need enter
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def refuse_unreadable_data_root(data_root: Path, *, named: bool) -> None:
    """Stop the worker when ``DATA_ROOT`` is a file, a folder it may not read, or (``named``:
    set by the operator) missing; log when it is missing at its default or the disk fails.

    The worker only reads this folder (nothing is downloaded, so it is never made here: making it
    would hide a volume that was not mounted). A path that is not a readable folder is a setting
    (or a mount) an operator must fix, as for ``WORK_DIR`` and ``STORE_ROOT``: a worker started
    on it took every job naming a built-in dataset and failed each one (``folder ... not found
    under 'root'``). A missing default (``./var/data``) is only logged: a deployment that takes
    uploaded datasets alone never reads it, and should not need an empty folder to start."""
    try:
        probe_readable_folder(data_root)
    except OSError as exc:
        message = f"DATA_ROOT: {str(data_root)!r} is not a readable folder ({os_reason(exc)})"
        missing = exc.errno == errno.ENOENT
        if exc.errno in PASSING_LOCAL_ERRORS or (missing and not named):
            logger.warning("%s at start: jobs naming a built-in dataset (cifar10, cifar100, "
                           "svhn, mnist) will fail until it is there", message)
            return
        raise SystemExit(f"rift: {message}; set DATA_ROOT to the folder holding the built-in "
                         "datasets, readable by this user") from None


#: How the MLflow client is installed, for the refusal below (pyproject's ``mlflow`` extra).
MLFLOW_EXTRA_HINT = ("pip install 'rift-service[mlflow]' (the image: docker build --build-arg "
                     "EXTRAS=mlflow .)")


def refuse_mlflow_without_client(tracking_uri: str | None) -> None:
    """Stop the worker when ``MLFLOW_TRACKING_URI`` is set but the ``mlflow`` package (the
    ``mlflow`` extra) is not installed. Before, the worker started, ran every job to success
    and then failed each export (``ModuleNotFoundError``, a ``warning`` event per job): the
    operator asked for an export that could never happen, and found out job by job. Only the
    worker exports, so only the worker checks (the API never reads the setting). Looked up, not
    imported: the prefork parent stays free of MLflow's import (the export imports it)."""
    if tracking_uri and importlib.util.find_spec("mlflow") is None:
        # The URI is not repeated: it may carry a password.
        raise SystemExit("rift: MLFLOW_TRACKING_URI is set, but the mlflow package is not "
                         f"installed here: {MLFLOW_EXTRA_HINT}, or unset MLFLOW_TRACKING_URI")


#: The URI schemes MLflow takes for a tracking store that also holds a model registry (its
#: registry's list; ``postgresql+psycopg`` and the like count as their dialect); ``""`` and
#: ``file`` are a file store.
MLFLOW_SCHEMES = ("", "file", "databricks", "databricks-uc", "uc", "http", "https", "postgresql",
                  "mysql", "sqlite", "mssql")


def refuse_unusable_mlflow_uri(tracking_uri: str | None, *, allow_file_store: bool) -> None:
    """Stop the worker when ``MLFLOW_TRACKING_URI`` names a store MLflow cannot use at all: an
    unknown scheme (``htp://``, ``mlflow:5000``), or a file store while MLflow 3 refuses those
    (``MLFLOW_ALLOW_FILE_STORE`` unset). Before, the worker started and every job's export failed
    after the job (a ``warning`` event each, naming no setting). A server that is merely down
    is not refused here: the export retries it after each job (``MLFLOW_HTTP_MAX_RETRIES``)."""
    if not tracking_uri:
        return
    scheme = urlsplit(tracking_uri).scheme.lower().split("+", 1)[0]
    if len(scheme) == 1:  # a Windows drive letter (C:\mlruns): a folder
        scheme = ""
    # The URI is not repeated: it may carry a password.
    if scheme not in MLFLOW_SCHEMES:
        raise SystemExit(f"rift: MLFLOW_TRACKING_URI has the scheme {scheme!r}, which MLflow "
                         f"cannot track to; use one of {', '.join(s for s in MLFLOW_SCHEMES if s)}"
                         " (e.g. http://mlflow:5000 or sqlite:///mlflow.db), or unset it")
    if scheme in ("", "file") and not allow_file_store:
        raise SystemExit("rift: MLFLOW_TRACKING_URI is a file store (a folder), which MLflow 3 "
                         "refuses unless MLFLOW_ALLOW_FILE_STORE=true; use a database "
                         "(sqlite:///mlflow.db) or a tracking server, or set "
                         "MLFLOW_ALLOW_FILE_STORE=true")


def refuse_unusable_mlflow_model_name(tracking_uri: str | None, model_name: str) -> None:
    """Stop the worker when ``MLFLOW_MODEL_NAME`` holds ``/`` or ``:``, which MLflow's registry
    refuses ("Invalid model name"): every job's export failed after its run was logged."""
    if tracking_uri and ("/" in model_name or ":" in model_name):
        raise SystemExit(f"rift: MLFLOW_MODEL_NAME {model_name!r} holds '/' or ':', which "
                         "MLflow refuses in a registered model's name; choose another")


def runs_stages(settings: Settings, queues: Collection[str] | None) -> bool:
    """Whether a worker consuming ``queues`` (None: not known, taken as yes) takes the stage
    queue, where every task that reads ``DATA_ROOT``, uses ``WORKER_DEVICE`` or exports to
    MLflow is sent (:mod:`persistence.queue`); a webhook worker (``-Q rift-webhooks``) takes
    none of them."""
    return queues is None or settings.celery_queue in queues


def refuse_unknown_queues(settings: Settings, queues: Collection[str] | None) -> None:
    """Stop the worker when ``-Q`` names a queue the service sends nothing to (every task goes to
    ``CELERY_QUEUE`` or ``WEBHOOK_QUEUE``, :mod:`persistence.queue`). Before, ``-Q rfit`` (or a
    ``CELERY_QUEUE`` set for the API and not for the worker) started a worker that waited for ever
    while the jobs waited for it; it even counted as live in the registry, under its queue."""
    known = (settings.celery_queue, settings.webhook_queue)
    unknown = sorted(set(queues or ()) - set(known))
    if unknown:
        raise SystemExit(
            f"rift: this worker consumes {', '.join(map(repr, unknown))}, where the service sends "
            f"nothing: stages go to CELERY_QUEUE ({known[0]!r}), webhook deliveries to "
            f"WEBHOOK_QUEUE ({known[1]!r}); pass those to -Q, or set the same CELERY_QUEUE and "
            "WEBHOOK_QUEUE as the API")


def check_worker_start(settings: Settings, queues: Collection[str] | None = None) -> None:
    """The queues it consumes (``queues``, from ``-Q``; None: not known), the service's checks
    (schema, object store), then, for a worker of the stage queue, the built-in datasets'
    folder, the MLflow client and the device; returns when the worker may start.

    A webhook worker shares the stage workers' environment (compose's ``webhooks`` service:
    ``DATA_ROOT=/data`` with no ``/data`` mounted, as it reads no dataset), so checking those
    settings there stopped it at every start, and the webhooks were never delivered."""
    refuse_unknown_queues(settings, queues)
    check_service_start(settings)
    if not runs_stages(settings, queues):
        return
    refuse_unreadable_data_root(settings.data_root, named="data_root" in settings.model_fields_set)
    refuse_mlflow_without_client(settings.mlflow_tracking_uri)
    refuse_unusable_mlflow_uri(settings.mlflow_tracking_uri,
                               allow_file_store=settings.mlflow_allow_file_store)
    refuse_unusable_mlflow_model_name(settings.mlflow_tracking_uri, settings.mlflow_model_name)
    refuse_missing_device(settings.worker_device)
