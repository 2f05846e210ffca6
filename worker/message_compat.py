"""Messages this worker's release cannot take go back to the queue for a worker that can.

During a rolling deploy the workers of two releases consume one queue, and either release's API
sends to it. A message this release cannot take (a task it does not have; arguments its task
does not accept, as when ``rift.mlflow_export`` gained ``request_event_id``) used to be lost:
Celery discards an unregistered task's message, and a task called with arguments its function
refuses raised ``TypeError``, which ``acks_late`` acknowledges like any failure. An MLflow
export asked for during the deploy never ran and its request never got an outcome; a stage
waited ``QUEUED_RESEND_AFTER_SECONDS`` for the recovery loop.

Now such a message is sent again, the same task, arguments and headers, after
``INCOMPATIBLE_MESSAGE_DELAY_SECONDS``, with an error in the log naming the task and why, so a
worker of the other release takes it (or this one once upgraded). The first deferral's time
travels in a header; once a message has waited ``QUEUED_RESEND_AFTER_SECONDS`` it is dropped,
logged: by then the recovery loop sends the work it drives again, in this release's format.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from celery import Task
from celery.worker.consumer import Consumer

from persistence.queue import RiftCelery

logger = logging.getLogger(__name__)

#: Message header: when (epoch seconds) a worker first sent this message back untaken.
DEFERRED_SINCE_HEADER = "rift_deferred_since"
#: Outcome of a task whose message was sent back for a worker of another release.
DEFERRED = "deferred_incompatible"


def defer_message(app: RiftCelery, *, name: str, args: list[Any], kwargs: dict[str, Any],
                  headers: dict[str, Any], queue: str | None, reason: str) -> None:
    """Send the task ``name`` with ``args``/``kwargs`` again after the settings' delay, keeping
    the service's ``rift_*`` headers; or drop it, logged, once it waited past
    ``QUEUED_RESEND_AFTER_SECONDS`` since its first deferral. Raises what the broker raises."""
    settings = app.settings
    now = time.time()
    rift_headers = {key: value for key, value in headers.items()
                    if key.startswith("rift_") and value is not None}
    since = float(rift_headers.get(DEFERRED_SINCE_HEADER, now))
    if now - since >= settings.queued_resend_after_seconds:
        logger.error("message %s%s dropped: %s; no worker could take it within %.0f s "
                     "(QUEUED_RESEND_AFTER_SECONDS), after which the recovery loop sends the "
                     "work it drives again", name, _shown(args, kwargs), reason,
                     settings.queued_resend_after_seconds)
        return
    rift_headers[DEFERRED_SINCE_HEADER] = since
    delay = settings.incompatible_message_delay_seconds
    logger.error("message %s%s cannot be taken by this worker's release: %s; sent back to "
                 "queue %s for a worker of another release in %.1f s "
                 "(INCOMPATIBLE_MESSAGE_DELAY_SECONDS)", name, _shown(args, kwargs), reason,
                 queue or settings.celery_queue, delay)
    app.send_task(name, args=args, kwargs=kwargs, queue=queue or settings.celery_queue,
                  countdown=delay, headers=rift_headers)


def _shown(args: list[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"({', '.join(parts)})"[:300]


class ArgumentsCheckedTask(Task):  # type: ignore[misc]
    """Base of every task the worker registers: a message whose arguments the task's function
    does not accept is deferred (:func:`defer_message`) instead of failing with ``TypeError``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            request = self.request
            delivery = getattr(request, "delivery_info", None) or {}
            defer_message(self.app, name=self.name, args=list(args), kwargs=dict(kwargs),
                          headers=dict(vars(request)), queue=delivery.get("routing_key"),
                          reason=f"its arguments do not fit ({exc})")
            return DEFERRED
        return super().__call__(*args, **kwargs)


class DeferringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but a message of a task this release does not have is deferred
    (:func:`defer_message`) instead of discarded."""

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = dict(message.headers or {})
        name = headers.get("task")
        try:
            args, kwargs, _ = message.decode()
        except (TypeError, ValueError):  # not protocol 2: Celery's own handling
            name = None
        if not isinstance(name, str) or not isinstance(self.app, RiftCelery):
            super().on_unknown_task(body, message, exc)
            return
        try:
            defer_message(self.app, name=name, args=list(args), kwargs=dict(kwargs),
                          headers=headers,
                          queue=(message.delivery_info or {}).get("routing_key"),
                          reason="this release has no such task")
        except Exception:
            # The broker refused the copy: keep the original rather than lose it.
            logger.exception("message %s: could not be sent back; left in its queue", name)
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            return
        message.ack()


def leave_incompatible_messages(app: RiftCelery) -> None:
    """Make ``app``'s worker defer the messages of tasks it does not have (the tasks'
    arguments are checked by their base, :class:`ArgumentsCheckedTask`)."""
    app.conf.worker_consumer = f"{__name__}:{DeferringConsumer.__name__}"
