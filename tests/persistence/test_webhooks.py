"""The webhook outbox: a job's end writes one message per subscribed endpoint of its project in
the same transaction, for each of job.succeeded, job.failed and job.cancelled; a transaction that
rolls back writes none; the after-commit hook sends exactly the messages committed."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages, webhooks
from persistence.db import create_session_factory
from persistence.models import WebhookDelivery, utcnow
from persistence.stages import StageOutputs
from persistence.transactions import EventKind, log_event, transaction
from tests.persistence.helpers import add_project, claim, finish


def endpoint(sessions: sessionmaker[Session], events: list[str], project: str = "default") -> str:
    # Jobs of no project (rows from before projects existed) notify the "default" project's
    # endpoints; an endpoint is registered by a project that exists.
    add_project(sessions, project)
    with sessions() as session:
        return webhooks.create_endpoint(
            session, project_id=project, url=f"https://hooks.example.com/{secrets.token_hex(4)}",
            event_types=events,
            description=None, max_endpoints=10).id


def messages(sessions: sessionmaker[Session], endpoint_id: str) -> list[dict[str, object]]:
    with sessions() as session:
        return [json.loads(d.body) for d, _ in
                webhooks.list_deliveries(session, endpoint_id, limit=10).items]


def test_each_kind_of_end_writes_its_message(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    every = endpoint(sessions, list(webhooks.EVENT_TYPES))
    only_failed = endpoint(sessions, ["job.failed"])
    elsewhere = endpoint(sessions, list(webhooks.EVENT_TYPES), project="other-project")

    succeeded = new_job(labels={"k": "v"})
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, succeeded, stage)
        finish(sessions, succeeded, stage,
               outputs=StageOutputs(metrics={"acc": 90.0}) if stage == "interpolate" else None)
    failed = new_job()
    claim(sessions, failed)
    with sessions() as session:
        stages.fail_job(session, failed, "invalid_config", "bad")
    cancelled = new_job()
    with sessions() as session:
        jobs.request_cancel(session, cancelled)

    got = {(m["type"], m["data"]["job_id"]) for m in messages(sessions, every)}  # type: ignore[index]
    assert got == {("job.succeeded", succeeded), ("job.failed", failed),
                   ("job.cancelled", cancelled)}
    by_type = {m["type"]: m for m in messages(sessions, every)}
    assert by_type["job.succeeded"]["data"]["metrics"] == {"acc": 90.0}  # type: ignore[index]
    assert by_type["job.failed"]["data"]["error"] == {  # type: ignore[index]
        "code": "invalid_config", "message": "bad", "field": None}
    assert [m["type"] for m in messages(sessions, only_failed)] == ["job.failed"]
    assert messages(sessions, elsewhere) == []


def test_the_message_counts_the_jobs_warnings(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    """A receiver acting on a job.succeeded message learns that the result comes with warnings
    (before, only the job's events said so)."""
    hook = endpoint(sessions, ["job.succeeded", "job.cancelled"])
    warned, quiet = new_job(), new_job()
    for _ in range(2):  # a retried stage writes its warning again: one warning
        with sessions() as session:
            jobs.append_event(session, warned, EventKind.WARNING,
                              {"stage": "interpolate", "message": "no α > 0 kept it"})
    with sessions() as session:
        jobs.append_event(session, warned, EventKind.WARNING, {"stage": "mrc", "message": "x"})
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, warned, stage)
        finish(sessions, warned, stage)
    with sessions() as session:
        jobs.request_cancel(session, quiet)
    data = {m["data"]["job_id"]: m["data"] for m in messages(sessions, hook)}  # type: ignore[index]
    assert data[warned]["warnings_total"] == 2  # type: ignore[index]
    assert data[quiet]["warnings_total"] == 0  # type: ignore[index]


def test_rolled_back_end_writes_no_message_and_commit_sends_each_once(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    hook = endpoint(sessions, list(webhooks.EVENT_TYPES))
    sent: list[str] = []
    factory = create_session_factory(sessions.kw["bind"])
    webhooks.install_delivery_dispatch(factory, sent.append)
    job_id = new_job()

    with factory() as session, pytest.raises(RuntimeError), transaction(session):
        jobs.get_job(session, job_id)
        log_event(session, job_id, EventKind.JOB_FAILED, {}, utcnow())
        raise RuntimeError("the transaction fails after the event")
    assert messages(sessions, hook) == [] and sent == []

    with factory() as session:
        jobs.request_cancel(session, job_id)
        # A second end of the same kind (a duplicate message, a retried transaction) adds none.
        with transaction(session):
            log_event(session, job_id, EventKind.JOB_CANCELLED, {}, utcnow())
    with sessions() as session:
        [(delivery, _)] = webhooks.list_deliveries(session, hook, limit=10).items
    assert sent == [delivery.id]


def test_an_attempt_whose_endpoint_was_deleted_meanwhile_records_nothing(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # The endpoint is deleted while its message is being POSTed (up to
    # WEBHOOK_TIMEOUT_SECONDS). Before: the attempt's row broke its foreign key, and the
    # delivery task failed with an IntegrityError.
    hook = endpoint(sessions, list(webhooks.EVENT_TYPES))
    job_id = new_job()
    with sessions() as session:
        jobs.request_cancel(session, job_id)
        [(delivery, _)] = webhooks.list_deliveries(session, hook, limit=10).items
        now = utcnow()
        assert webhooks.claim_attempt(session, delivery.id, 0, now, now)
        webhooks.delete_endpoint(session, "default", hook)
        assert not webhooks.record_attempt(
            session, delivery.id, 1, status_code=200, error=None, started_at=now,
            duration_ms=1.0, succeeded=True, retry_at=None)
        assert webhooks.load_delivery(session, delivery.id) is None


def test_a_message_whose_task_was_lost_is_sent_again_once_per_lease_length(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: every recovery pass of every worker returned each late message again, so while
    # the webhook queue was backed up each worker added a copy every recovery interval.
    endpoint(sessions, ["job.cancelled"])
    job_id = new_job()
    with sessions() as session:
        jobs.request_cancel(session, job_id)  # its message's task is never sent
        delivery = session.execute(select(WebhookDelivery)
                                   .where(WebhookDelivery.job_id == job_id)).scalar_one()
    late_after = 60.0

    def recover(now: datetime) -> list[str]:
        with sessions() as session:
            return webhooks.deliveries_to_redispatch(session, late_after=late_after, now=now)

    written = delivery.next_attempt_at
    assert recover(written + timedelta(seconds=late_after / 2)) == []
    late = written + timedelta(seconds=late_after + 1)
    assert recover(late) == [delivery.id]
    assert recover(late) == []  # another worker's pass: sent once
    assert recover(late + timedelta(seconds=late_after / 2)) == []
    again = late + timedelta(seconds=late_after + 1)
    assert recover(again) == [delivery.id]  # that copy was lost too
    # The copy (or the original, late) takes the attempt; the other finds it taken.
    with sessions() as session:
        lease = again + timedelta(seconds=late_after)
        assert webhooks.claim_attempt(session, delivery.id, 0, again, lease)
        assert not webhooks.claim_attempt(session, delivery.id, 0, again, lease)
    assert recover(lease) == []  # the attempt is in flight
