"""A rolling deploy: the workers of two releases share one queue, and either release's API sends
to it. A message this worker's release cannot take (a task it does not have, arguments its task
does not accept) goes back to the broker for a worker that can (worker/message_compat.py), with
its task, arguments and request id; it used to be lost (Celery discarded an unregistered task's
message; a ``TypeError`` from the arguments was acknowledged as the task's failure).

Real worker, Redis and Postgres; the newer release is played by messages this one cannot take:
``rift.mlflow_export`` with an argument more (as it gained ``request_event_id``), and a task
name this release lacks.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from persistence.queue import MLFLOW_EXPORT_TASK_NAME, REQUEST_ID_HEADER, RiftCelery
from tests.service_fixtures import WorkerProcess

pytestmark = pytest.mark.service

NEWER_TASK = "rift.stage.next_release_stage"


def _messages(broker_url: str, queue: str, task: str) -> list[dict[str, Any]]:
    """The messages of ``task`` the broker holds for ``queue``: waiting in it, or taken by a
    worker and not yet acknowledged (kombu's ``unacked`` hash: a countdown's copy waits there)."""
    client = redis.Redis.from_url(broker_url)
    raw = [json.loads(entry) for entry in client.lrange(queue, 0, -1)]
    raw += [payload for payload, _, routing_key in
            (json.loads(entry) for entry in client.hvals("unacked")) if routing_key == queue]
    found = []
    for message in raw:
        if message["headers"].get("task") == task:
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.append({"args": args, "kwargs": kwargs, "headers": message["headers"]})
    return found


def _wait_in_log(worker: WorkerProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert worker.process.poll() is None, worker.log()[-3000:]
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize(("task", "args", "reason"), [
    (MLFLOW_EXPORT_TASK_NAME, ["job-of-a-newer-api", 7, "an argument more"],
     "its arguments do not fit"),
    (NEWER_TASK, ["job-of-a-newer-api"], "this release has no such task"),
], ids=["arguments-it-does-not-take", "task-it-does-not-have"])
def test_a_message_this_release_cannot_take_is_left_for_another_worker(
        task: str, args: list[Any], reason: str, start_worker: Callable[..., WorkerProcess],
        sender: RiftCelery, service_env: dict[str, str]) -> None:
    broker, queue = service_env["BROKER_URL"], service_env["CELERY_QUEUE"]
    worker = start_worker(INCOMPATIBLE_MESSAGE_DELAY_SECONDS="60")
    sender.send_task(task, args=args, queue=queue, headers={REQUEST_ID_HEADER: "req-deploy"})
    _wait_in_log(worker, "sent back to queue")
    # Only the copy (an ETA: after the delay, not at once) once the original is acknowledged,
    # after the copy was sent (the log line comes first). Read again until then: the list and
    # the unacked hash are two reads, and a worker moving the copy from one to the other between
    # them hides it (kombu pops, then records it as unacknowledged).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        copies = _messages(broker, queue, task)
        if len(copies) == 1 and copies[0]["headers"].get("eta") is not None:
            break
        time.sleep(0.2)
    assert [(copy["args"], copy["kwargs"], copy["headers"].get("eta") is not None)
            for copy in copies] == [(args, {}, True)], worker.log()[-3000:]
    assert copies[0]["headers"][REQUEST_ID_HEADER] == "req-deploy"
    line = next(line for line in worker.log().splitlines() if "sent back to queue" in line)
    assert task in line and reason in line and "INCOMPATIBLE_MESSAGE_DELAY_SECONDS" in line
    assert worker.process.poll() is None


def test_a_message_no_worker_takes_is_given_up_after_the_resend_period(
        start_worker: Callable[..., WorkerProcess], sender: RiftCelery,
        service_env: dict[str, str]) -> None:
    """Bounded: the recovery loop sends the work a message drives again after
    QUEUED_RESEND_AFTER_SECONDS, so a message no worker took by then is dropped, logged."""
    broker, queue = service_env["BROKER_URL"], service_env["CELERY_QUEUE"]
    worker = start_worker(INCOMPATIBLE_MESSAGE_DELAY_SECONDS="0.3",
                          QUEUED_RESEND_AFTER_SECONDS="1.5")
    sender.send_task(NEWER_TASK, args=["job-of-a-newer-api"], queue=queue)
    _wait_in_log(worker, "dropped")
    time.sleep(0.5)
    assert _messages(broker, queue, NEWER_TASK) == []
    time.sleep(0.5)  # not hidden between the two reads: still none
    assert _messages(broker, queue, NEWER_TASK) == []
    assert worker.log().count("sent back to queue") >= 2
    assert "QUEUED_RESEND_AFTER_SECONDS" in worker.log()
