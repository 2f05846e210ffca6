"""The queue both sides share: the Celery application built from the settings, the task names,
and how a stage is put on the queue.

This module imports no torch and lives in ``persistence`` so that the API (which must not import
the ``worker`` package) and the workers use the same names: the API builds an app with
:func:`create_celery_app` only to send messages (:func:`enqueue_stage`), while the worker process
(``worker/celery_app.py``) also registers the tasks. A message carries only the job id; the
database holds the truth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy import make_url

from persistence.models import STAGE_ORDER, StageName
from persistence.settings import Settings

#: Celery task name of each stage.
STAGE_TASK_NAMES: dict[str, str] = {stage.value: f"rift.stage.{stage.value}"
                                    for stage in STAGE_ORDER}
#: Celery task name of the periodic recovery of stages whose lease expired.
RECOVER_TASK_NAME = "rift.recover_stale_jobs"
#: Celery task name of "make θ_α of a finished job" (``POST /v1/jobs/{id}/materialize``).
MATERIALIZE_TASK_NAME = "rift.materialize"
#: Celery task name of a succeeded job's MLflow export asked for again (POST .../mlflow-export).
MLFLOW_EXPORT_TASK_NAME = "rift.mlflow_export"
#: Message header carrying the request id of the API request behind a task (for the logs).
REQUEST_ID_HEADER = "rift_request_id"
#: Celery task name of a webhook delivery (on its own queue, WEBHOOK_QUEUE).
WEBHOOK_TASK_NAME = "rift.webhook.deliver"


class RiftCelery(Celery):
    """A Celery app that carries the service settings (``app.settings``) it was built from."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("rift", **kwargs)
        self.settings = settings


def create_celery_app(settings: Settings) -> RiftCelery:
    """A Celery app for ``settings``: late acknowledgement, prefetch 1, reject on worker loss.

    A message is acknowledged only after its task returns, and a worker takes one message at a
    time, so a worker that dies loses no message; ``task_reject_on_worker_lost`` re-queues the
    message of a killed child process. Stage leases in the database make a message delivered
    twice harmless. There is no result backend: the database is the source of truth.
    """
    app = RiftCelery(settings, broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.celery_queue,
        task_routes={**{name: {"queue": settings.celery_queue}
                        for name in [*STAGE_TASK_NAMES.values(), MATERIALIZE_TASK_NAME,
                                     MLFLOW_EXPORT_TASK_NAME]},
                     WEBHOOK_TASK_NAME: {"queue": settings.webhook_queue}},
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        enable_utc=True,
    )
    return app


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Options for the broker's kombu transport.

    Redis (and SQS) redeliver an unacknowledged message after ``visibility_timeout``. kombu's
    SQLAlchemy transport hands its options to ``create_engine`` instead: there, a SQLite broker
    file shared by the API and the workers gets a busy timeout, and its folder is created.
    """
    scheme = settings.broker_url.split("://", 1)[0].lower()
    if scheme.startswith("sqla+"):
        url = make_url(settings.broker_url[len("sqla+"):])
        if url.get_backend_name() != "sqlite":
            return {}
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": settings.broker_visibility_timeout}


#: Tries at declaring the embedded broker's queues (see :func:`declare_queues`).
DECLARE_TRIES = 4


def declare_queues(app: Celery, settings: Settings) -> None:
    """Make the service's queues exist in the broker before this process first uses them.

    kombu's SQLAlchemy transport (the embedded broker) creates its tables, and a queue's row, on
    first use, under a lock that only covers one process's threads: an API and a worker started
    at the same moment could both insert the queue ``rift``, and the loser stopped on the UNIQUE
    constraint (an API whose readiness check lost exited at start; seen when the test suite
    started both within milliseconds). The loser finds the table and row on its next try, each
    try on a fresh connection (a failed one's session cannot go on). Redis and the other
    transports declare queues idempotently: nothing to do for them.
    """
    if not settings.broker_url.lower().startswith("sqla+"):
        return
    for attempt in range(1, DECLARE_TRIES + 1):
        try:
            with app.connection_for_write() as connection:
                channel = connection.default_channel
                for queue in dict.fromkeys((settings.celery_queue, settings.webhook_queue)):
                    channel.queue_declare(queue=queue)
            return
        except (sqlalchemy_errors.IntegrityError, sqlalchemy_errors.OperationalError):
            # IntegrityError: another process inserted the queue's row first; OperationalError:
            # it created the tables first ("already exists") or held SQLite's write lock.
            if attempt == DECLARE_TRIES:
                raise
            time.sleep(0.05 * attempt)


def enqueue_stage(app: Celery, job_id: str, stage: str = StageName.MRC,
                  countdown: float | None = None, request_id: str | None = None) -> None:
    """Send the message that runs ``stage`` of the job (after ``countdown`` seconds); the
    ``request_id`` of the API request behind it travels in a message header, for the logs.

    Call it after the transaction that made the stage runnable has committed.
    """
    settings: Settings | None = getattr(app, "settings", None)
    queue = settings.celery_queue if settings is not None else None
    app.send_task(STAGE_TASK_NAMES[StageName(stage)], args=[job_id], queue=queue,
                  countdown=countdown, headers=_request_headers(request_id))


def enqueue_materialization(app: Celery, materialization_id: str,
                            request_id: str | None = None, countdown: float | None = None
                            ) -> None:
    """Send the message that makes the weights of one materialization request (after
    ``countdown`` seconds)."""
    settings: Settings | None = getattr(app, "settings", None)
    queue = settings.celery_queue if settings is not None else None
    app.send_task(MATERIALIZE_TASK_NAME, args=[materialization_id], queue=queue,
                  countdown=countdown, headers=_request_headers(request_id))


def enqueue_mlflow_export(app: Celery, job_id: str, request_event_id: int,
                          request_id: str | None = None) -> None:
    """Send the message that exports a succeeded job to MLflow again, for the request recorded as
    event ``request_event_id`` (its outcome event names it, so a waiting client finds its own)."""
    settings: Settings | None = getattr(app, "settings", None)
    queue = settings.celery_queue if settings is not None else None
    app.send_task(MLFLOW_EXPORT_TASK_NAME, args=[job_id, request_event_id], queue=queue,
                  headers=_request_headers(request_id))


def _request_headers(request_id: str | None) -> dict[str, str] | None:
    return {REQUEST_ID_HEADER: request_id} if request_id else None


def enqueue_webhook(app: Celery, delivery_id: str, countdown: float | None = None) -> None:
    """Send the message that delivers the webhook message ``delivery_id`` (after ``countdown``
    seconds). Call it after the transaction that wrote the message has committed."""
    settings: Settings | None = getattr(app, "settings", None)
    queue = settings.webhook_queue if settings is not None else None
    app.send_task(WEBHOOK_TASK_NAME, args=[delivery_id], queue=queue, countdown=countdown)


def check_broker(app: Celery, timeout: float = 3.0) -> None:
    """Readiness probe: returns if the broker accepts a connection within ``timeout`` seconds,
    else raises (``kombu.exceptions.OperationalError`` or the transport's error)."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        # Virtual transports (SQLAlchemy) connect lazily: opening a channel proves the database.
        connection.default_channel  # noqa: B018
