"""Webhook delivery by the worker code against a real HTTP receiver on 127.0.0.1 (allow-listed):
the signature checks out with an independent implementation, a 500 is retried with backoff and
the next attempt succeeds, the log records each attempt, and a target that is not allowed at
delivery time gets no request at all."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, models, webhooks
from persistence.db import create_db_engine, create_session_factory
from persistence.models import utcnow
from persistence.records import create_checkpoint
from persistence.settings import Settings
from tests.clock_skew import skewed_datetime
from tests.persistence.helpers import add_project
from tests.service_fixtures import settings_from_env
from tests.webhook_receiver import Receiver
from worker.runtime import WorkerResources
from worker.webhooks import deliver, retry_delay

SPEC = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(statuses=[]).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(db_url)
    factory = create_session_factory(engine)
    # Endpoints are registered by a project that exists; these tests' jobs have none, which
    # notifies the "default" project's endpoints.
    add_project(factory, webhooks.DEFAULT_PROJECT_ID)
    yield factory
    engine.dispose()


def worker_settings(db_url: str, tmp_path: Path, **env: str) -> Settings:
    return settings_from_env({
        "DATABASE_URL": db_url, "BROKER_URL": "memory://", "STORE_ROOT": str(tmp_path / "o"),
        "WEBHOOK_RETRY_BASE_SECONDS": "0.3", "WEBHOOK_MAX_ATTEMPTS": "3",
        "WEBHOOK_TIMEOUT_SECONDS": "5", **env})


def cancelled_job_message(sessions: sessionmaker[Session], url: str,
                          events: tuple[str, ...] = webhooks.EVENT_TYPES) -> tuple[str, str, str]:
    """A registered endpoint and a job cancelled with its labels: (endpoint id, secret, message
    id of the job.cancelled message)."""
    with sessions() as session:
        endpoint = webhooks.create_endpoint(
            session, project_id=webhooks.DEFAULT_PROJECT_ID, url=url, event_types=events,
            description=None, max_endpoints=5)
        checkpoint = create_checkpoint(
            session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1)
        job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint.id,
                                 labels={"team": "a"})
        jobs.request_cancel(session, job.id)
        [(delivery, _)] = webhooks.list_deliveries(session, endpoint.id, limit=10).items
        return endpoint.id, endpoint.secret, delivery.id


class SteppedClock:
    """``deliver``'s ``now``: the time it was made at, then only what :meth:`advance` adds."""

    def __init__(self) -> None:
        self._now = utcnow()

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def test_signed_delivery_retried_after_500_then_succeeds(
        sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
        receiver: Receiver) -> None:
    receiver.statuses = [500, 204]
    endpoint_id, secret, message_id = cancelled_job_message(sessions, receiver.url)
    resources = WorkerResources(worker_settings(db_url, tmp_path,
                                                WEBHOOK_ALLOW_LIST="127.0.0.1"))
    retries: list[tuple[str, float]] = []
    # The worker's clock, moved by the test only: the duplicate below is "not due" however long
    # the first attempt takes to record (with the real clock, 0.2 s of load made it due).
    clock = SteppedClock()

    def schedule(message: str, delay: float) -> None:
        retries.append((message, delay))

    assert deliver(resources, message_id, schedule_retry=schedule, now=clock) == "retry"
    assert retries == [(message_id, 0.3)]
    # Not due yet: a duplicate of the task sends nothing.
    assert deliver(resources, message_id, schedule_retry=schedule, now=clock) == "not_due"
    clock.advance(0.35)
    assert deliver(resources, message_id, schedule_retry=schedule, now=clock) == "delivered"
    assert deliver(resources, message_id, schedule_retry=schedule, now=clock) == "settled"

    assert len(receiver.received) == 2
    for item in receiver.received:
        assert receiver.verify(item, secret), item.headers
        assert item.headers["webhook-id"] == message_id  # the same message on every attempt
        assert abs(int(item.headers["webhook-timestamp"]) - time.time()) < 60
        assert item.headers["content-type"] == "application/json"
        assert item.path == "/hooks/rift?x=1"
    # A tampered body or another secret does not verify.
    forged = receiver.received[1]
    forged.body = forged.body.replace(b"cancelled", b"succeeded")
    assert not receiver.verify(forged, secret)
    assert not receiver.verify(receiver.received[0], webhooks.new_secret())

    payload = json.loads(receiver.received[0].body)
    assert payload["type"] == "job.cancelled"
    assert payload["data"]["status"] == "cancelled"
    assert payload["data"]["labels"] == {"team": "a"}

    with sessions() as session:
        [(delivery, attempts)] = webhooks.list_deliveries(session, endpoint_id, limit=10).items
    assert delivery.status == "succeeded" and delivery.attempts == 2
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 204)]
    assert attempts[0].error == "the receiver answered HTTP 500" and attempts[1].error is None


def test_attempts_are_bounded(sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
                              receiver: Receiver) -> None:
    receiver.statuses = [503, 503, 503, 200]
    _, _, message_id = cancelled_job_message(sessions, receiver.url)
    settings = worker_settings(db_url, tmp_path, WEBHOOK_ALLOW_LIST="127.0.0.1/32",
                               WEBHOOK_RETRY_BASE_SECONDS="0.05", WEBHOOK_MAX_ATTEMPTS="3")
    assert [retry_delay(settings, n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    resources = WorkerResources(settings)
    outcomes = []
    for _ in range(3):
        outcomes.append(deliver(resources, message_id, schedule_retry=lambda *_: None))
        time.sleep(0.25)
    assert outcomes == ["retry", "retry", "failed"]
    assert deliver(resources, message_id, schedule_retry=lambda *_: None) == "settled"
    assert len(receiver.received) == 3


def test_target_not_allowed_at_delivery_time_gets_no_request(
        sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
        receiver: Receiver) -> None:
    # Registered while allowed (or a DNS answer that has changed since): checked again now.
    endpoint_id, _, message_id = cancelled_job_message(sessions, receiver.url)
    resources = WorkerResources(worker_settings(db_url, tmp_path))  # empty allow-list
    assert deliver(resources, message_id, schedule_retry=lambda *_: None) == "retry"
    assert receiver.received == []
    with sessions() as session:
        [(delivery, attempts)] = webhooks.list_deliveries(session, endpoint_id, limit=10).items
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert attempts[0].status_code is None
    assert attempts[0].error is not None and "127.0.0.1 (loopback)" in attempts[0].error


def test_only_subscribed_events_and_one_message_per_job_end(
        sessions: sessionmaker[Session], receiver: Receiver) -> None:
    endpoint_id, _, _ = cancelled_job_message(sessions, receiver.url, events=("job.cancelled",))
    other: Any
    with sessions() as session:
        other = webhooks.create_endpoint(
            session, project_id=webhooks.DEFAULT_PROJECT_ID, url=receiver.url + "?other",
            event_types=["job.succeeded"], description=None, max_endpoints=5)
        assert webhooks.list_deliveries(session, other.id, limit=10).items == []
        assert len(webhooks.list_deliveries(session, endpoint_id, limit=10).items) == 1
        with pytest.raises(webhooks.WebhookLimitReached):
            webhooks.create_endpoint(session, project_id=webhooks.DEFAULT_PROJECT_ID,
                                     url=receiver.url + "?third", event_types=["job.failed"],
                                     description=None, max_endpoints=2)


def test_a_delivery_logs_no_receiver_url(sessions: sessionmaker[Session], db_url: str,
                                         tmp_path: Path, receiver: Receiver,
                                         caplog: pytest.LogCaptureFixture) -> None:
    # The root logger at INFO, as Celery's --loglevel=INFO sets it in every worker: httpx wrote
    # "HTTP Request: POST http://.../hooks/rift?x=1" for each attempt (a hook's path or query is
    # often its credential).
    caplog.set_level(logging.INFO)
    receiver.statuses = [204]
    _, _, message_id = cancelled_job_message(sessions, receiver.url)
    resources = WorkerResources(worker_settings(db_url, tmp_path,
                                                WEBHOOK_ALLOW_LIST="127.0.0.1"))
    assert deliver(resources, message_id, schedule_retry=lambda *_: None) == "delivered"
    assert len(receiver.received) == 1
    assert not [r.getMessage() for r in caplog.records if "hooks/rift" in r.getMessage()]


def _post_to_raw_receiver(answer: Callable[[socket.socket, threading.Event], None],
                          timeout: float) -> tuple[Any, float]:
    """One webhook attempt against a socket that ``answer(connection, done)`` serves by hand
    (``done`` is set once the attempt returned); the attempt's result and its seconds."""
    from persistence.outbound import AllowList
    from worker.webhooks import post

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            answer(connection, done)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = post(f"http://127.0.0.1:{listener.getsockname()[1]}/hook",
                      AllowList.parse("127.0.0.1"), headers={}, body=b"{}", timeout=timeout)
        elapsed = time.monotonic() - started
    finally:
        done.set()
        thread.join(5)
        listener.close()
    return result, elapsed


def test_the_receivers_answer_body_is_not_read() -> None:
    """Only the status line decides an attempt: a receiver that announces a 1 GB body and then
    trickles it (or never sends it) must neither fill the worker's memory nor hold the attempt
    until its timeout. It used to be read whole (httpx's default), so this attempt ended in a
    ReadTimeout at its timeout instead of a 200. The timeout is long (30 s) and the bound half
    of it: a loaded machine may take seconds to answer, never 15 to read a status line."""

    def announce_a_huge_body(connection: socket.socket, done: threading.Event) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nxx")
        done.wait(60)

    result, elapsed = _post_to_raw_receiver(announce_a_huge_body, timeout=30.0)
    assert result.status_code == 200 and result.error is None, result
    assert elapsed < 15.0


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_attempts_timeout() -> None:
    """httpx's timeout bounds each read: a receiver sending its status line a byte every 0.5 s
    (each read well within 1 s) held the attempt for the whole line, here ~19 s, and could hold
    a delivery worker for hours with a longer head. The attempt now ends at its timeout (1 s;
    the bound, 10 s, leaves a loaded machine room and is still half the whole line's time)."""

    def trickle(connection: socket.socket, done: threading.Event) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
            if done.wait(0.5):
                return
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return

    result, elapsed = _post_to_raw_receiver(trickle, timeout=1.0)
    assert result.status_code is None
    assert result.error == "no answer within 1 s (WEBHOOK_TIMEOUT_SECONDS, the whole attempt)"
    assert elapsed < 10.0


def test_a_failed_jobs_message_verifies_and_its_error_parses_in_the_client(
        sessions: sessionmaker[Session]) -> None:
    """The body a receiver gets for ``job.failed`` (written by the transaction that fails the
    job, with the error's code, message and blamed field), read by ``verify_webhook`` as the
    service signs it: every documented field, the error as the client's ``JobError``."""
    from persistence.models import WebhookDelivery
    from persistence.stages import fail_job
    from rift_client import verify_webhook
    from worker.webhooks import sign

    with sessions() as session:
        endpoint = webhooks.create_endpoint(
            session, project_id=webhooks.DEFAULT_PROJECT_ID, url="https://hooks.example/rift",
            event_types=["job.failed"], description=None, max_endpoints=5)
        checkpoint = create_checkpoint(
            session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1)
        job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint.id,
                                 labels={"run": "<b>"})
        fail_job(session, job.id, "numerical_error", "loss became NaN", force=True,
                 field="finetune.lr")
        [(delivery, _)] = webhooks.list_deliveries(session, endpoint.id, limit=10).items
        body = session.get(WebhookDelivery, delivery.id).body.encode()
        secret = endpoint.secret
    stamp = int(time.time())
    headers = {"webhook-id": delivery.id, "webhook-timestamp": str(stamp),
               "webhook-signature": sign(secret, delivery.id, stamp, body)}
    message = verify_webhook(secret, headers, body)
    assert (message.type, message.data.status, message.data.job_id) == (
        "job.failed", "failed", job.id)
    assert message.data.error is not None
    assert (message.data.error.code, message.data.error.message, message.data.error.field) == (
        "numerical_error", "loss became NaN", "finetune.lr")
    assert message.data.finished_at is not None and message.data.finished_at.tzinfo is not None
    assert message.data.labels == {"run": "<b>"} and message.data.warnings_total == 0
    assert message.data.links == {"self": f"/v1/jobs/{job.id}"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: one machine's clock
def test_a_retry_is_scheduled_and_judged_on_the_database_clock(
        sessions: sessionmaker[Session], db_url: str, tmp_path: Path, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a worker whose clock lagged two minutes found a message due now not due (it sent
    # nothing until its clock caught up) and wrote its retry's next_attempt_at two minutes
    # early; one whose clock ran two minutes ahead read a message due now as late, and its sweep
    # sent it again at once instead of after its backoff.
    receiver.statuses = [500]
    _, _, message_id = cancelled_job_message(sessions, receiver.url)
    resources = WorkerResources(worker_settings(db_url, tmp_path,
                                                WEBHOOK_ALLOW_LIST="127.0.0.1/32",
                                                WEBHOOK_RETRY_BASE_SECONDS="5"))
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(-120.0))
        assert deliver(resources, message_id, schedule_retry=lambda *_: None) == "retry"
    for skew in (0.0, 120.0):
        with monkeypatch.context() as clock:
            clock.setattr(models, "datetime", skewed_datetime(skew))
            with sessions() as session:
                assert webhooks.deliveries_to_redispatch(session, late_after=1.0) == [], skew
