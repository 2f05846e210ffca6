"""Moved to :mod:`persistence.queue` (the API may not import ``worker``); kept so that existing
imports keep working."""

from persistence.queue import (
    MATERIALIZE_TASK_NAME,
    REQUEST_ID_HEADER,
    STAGE_TASK_NAMES,
    WEBHOOK_TASK_NAME,
    RiftCelery,
    broker_transport_options,
    check_broker,
    create_celery_app,
    enqueue_materialization,
    enqueue_stage,
    enqueue_webhook,
)

__all__ = ["MATERIALIZE_TASK_NAME", "REQUEST_ID_HEADER", "STAGE_TASK_NAMES", "WEBHOOK_TASK_NAME",
           "RiftCelery", "broker_transport_options", "check_broker", "create_celery_app",
           "enqueue_materialization", "enqueue_stage", "enqueue_webhook"]
