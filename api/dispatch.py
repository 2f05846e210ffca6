"""Putting jobs on the Celery queue from the API, and checking that the broker answers.

The API never imports the worker's tasks (nor torch): it sends the first stage's task by name
(``rift.stage.mrc``) through a Celery app built from the settings by ``persistence.queue``. Each
worker, after finishing a stage, enqueues the next one itself.
"""

from __future__ import annotations

from typing import Protocol

from celery import Celery

from persistence.logs import current_request_id
from persistence.models import StageName
from persistence.queue import (
    create_celery_app,
    declare_queues,
    enqueue_materialization,
    enqueue_mlflow_export,
    enqueue_stage,
    enqueue_webhook,
)
from persistence.settings import Settings


class DispatchError(Exception):
    """The broker did not take the message (it is down or unreachable)."""


class Dispatcher(Protocol):
    """What the API needs from the queue; tests may inject their own."""

    def enqueue_job(self, job_id: str) -> None:
        """Queue the job's first stage; raises :class:`DispatchError` if the broker refuses."""
        ...

    def enqueue_webhook(self, delivery_id: str) -> None:
        """Queue the delivery of a webhook message; may raise (the workers' sweep re-sends)."""
        ...

    def check(self) -> None:
        """Raise :class:`DispatchError` unless the broker can be reached."""
        ...

    def enqueue_materialization(self, materialization_id: str) -> None:
        """Queue the making of θ_α for a materialization request; :class:`DispatchError`."""
        ...

    def enqueue_mlflow_export(self, job_id: str, request_event_id: int) -> None:
        """Queue a succeeded job's MLflow export asked for by event ``request_event_id``;
        :class:`DispatchError`."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class CeleryDispatcher:
    """Sends stage tasks through a Celery app built from ``settings`` (no tasks registered)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_celery_app(settings)
        # A publish to a dead broker should fail within seconds, not retry for minutes: the
        # client is waiting for its answer, and the job row is removed again on failure.
        self.timeout = settings.broker_connect_timeout_seconds
        self.app.conf.broker_connection_timeout = self.timeout
        self.app.conf.task_publish_retry_policy = {
            "max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0,
        }
        self._queues_declared = False  # once per process: later checks find them

    def enqueue_job(self, job_id: str) -> None:
        try:
            # The request being served (bound by the API's middleware) travels to the worker.
            enqueue_stage(self.app, job_id, StageName.MRC, request_id=current_request_id())
        except Exception as exc:  # kombu raises OperationalError and transport-specific errors
            raise DispatchError(f"the broker did not accept the job: {_short(exc)}") from exc

    def enqueue_webhook(self, delivery_id: str) -> None:
        enqueue_webhook(self.app, delivery_id)

    def enqueue_materialization(self, materialization_id: str) -> None:
        try:
            enqueue_materialization(self.app, materialization_id, request_id=current_request_id())
        except Exception as exc:
            raise DispatchError(f"the broker did not accept the request: {_short(exc)}") from exc

    def enqueue_mlflow_export(self, job_id: str, request_event_id: int) -> None:
        try:
            enqueue_mlflow_export(self.app, job_id, request_event_id,
                                  request_id=current_request_id())
        except Exception as exc:
            raise DispatchError(f"the broker did not accept the request: {_short(exc)}") from exc

    def check(self) -> None:
        try:
            if not self._queues_declared:
                declare_queues(self.app, self.settings)
                self._queues_declared = True
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout)
                # Virtual transports (SQLAlchemy, Redis) connect lazily and cache engines: ask
                # the queue's length, a real round trip, to know the broker answers now.
                size = getattr(connection.default_channel, "_size", None)
                if callable(size):
                    size(self.settings.celery_queue)
        except Exception as exc:
            raise DispatchError(f"the broker cannot be reached: {_short(exc)}") from exc

    def close(self) -> None:
        self.app.close()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"
