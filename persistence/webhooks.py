"""Webhook endpoints of a project, the messages owed to them, and the log of their delivery.

When a job ends (``job.succeeded``, ``job.failed``, ``job.cancelled``), :func:`log_event` of
:mod:`persistence.transactions` calls :func:`enqueue_job_notifications` in the same transaction,
which writes one :class:`WebhookDelivery` per subscribed endpoint of the job's project (a
transactional outbox: a message exists if and only if the job's end was committed). After the
commit the writer sends the delivery task (:func:`install_delivery_dispatch`); the workers' sweep
(:func:`deliveries_to_redispatch`) re-sends a message whose task was lost, once per lease length
(:mod:`persistence.resend`). The workers
(``worker/webhooks.py``) sign, send and record each attempt here.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from persistence.audit import Actor, record_audit_event
from persistence.db_clock import db_now
from persistence.job_warnings import warnings_of
from persistence.leases import rows_affected
from persistence.models import (
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from persistence.outbound import comparable_url
from persistence.pages import Page, list_binding, newest_first
from persistence.transactions import EventKind, PersistenceError, lock_project, transaction

logger = logging.getLogger(__name__)

#: The project of everything on a service without projects; see :func:`project_of_job`.
DEFAULT_PROJECT_ID = "default"

#: Webhook event type of each job event that ends a job.
JOB_EVENT_TYPES: dict[str, str] = {
    EventKind.JOB_SUCCEEDED: "job.succeeded",
    EventKind.JOB_FAILED: "job.failed",
    EventKind.JOB_CANCELLED: "job.cancelled",
}
EVENT_TYPES: tuple[str, ...] = tuple(JOB_EVENT_TYPES.values())

#: Bytes of randomness in a signing secret (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"

_NEW_DELIVERIES_KEY = "rift_new_webhook_deliveries"


class WebhookNotFound(PersistenceError):
    code = "webhook_not_found"

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no webhook with id {endpoint_id!r}")
        self.endpoint_id = endpoint_id


class WebhookLimitReached(PersistenceError):
    code = "webhook_limit_reached"

    def __init__(self, limit: int, used: int | None = None) -> None:
        used = limit if used is None else used
        super().__init__(f"the project already has {used} webhooks, its limit "
                         f"WEBHOOK_MAX_ENDPOINTS is {limit}; delete one first")
        self.limit, self.used = limit, used


class WebhookUrlTaken(PersistenceError):
    """The project has an endpoint for this URL already: a second would get every message
    twice, which a client retrying a registration without an Idempotency-Key never meant."""

    code = "webhook_url_registered"

    def __init__(self, url: str, endpoint_id: str) -> None:
        super().__init__(f"the project already has webhook {endpoint_id} for this URL; use it, "
                         "or delete it first to register the URL with other events")
        self.url = url
        self.endpoint_id = endpoint_id


class IdempotencyKeyTaken(Exception):
    """An endpoint was registered under this Idempotency-Key while the request waited for the
    project's lock: the caller answers with that one."""


def new_secret() -> str:
    """``whsec_`` and the base64 of fresh random bytes (the HMAC key is the decoded bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def project_of_job(job: Job) -> str:
    """The project a job belongs to: its ``project_id`` where jobs have one, else the default."""
    return str(getattr(job, "project_id", None) or DEFAULT_PROJECT_ID)


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------
def create_endpoint(session: Session, *, project_id: str, url: str, event_types: Sequence[str],
                    description: str | None, max_endpoints: int,
                    idempotency_key: str | None = None,
                    request_hash: str | None = None,
                    actor: Actor | None = None) -> WebhookEndpoint:
    """Register an endpoint with a new secret; :class:`WebhookUrlTaken` when the project has
    one for ``url``; :class:`WebhookLimitReached` past the limit;
    :class:`IdempotencyKeyTaken` when another registration recorded ``idempotency_key`` first
    (looked for before the limit: a retried registration is not a new one). ``actor``'s
    ``webhook.created`` commits with it (its events, not its URL, which may carry a token)."""
    with transaction(session):
        # Counted under the project's lock: concurrent registrations could otherwise all see
        # room for one more and together pass the limit.
        lock_project(session, project_id)
        if idempotency_key is not None and session.execute(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.idempotency_key == idempotency_key)).first() is not None:
            raise IdempotencyKeyTaken(idempotency_key)
        existing = list_endpoints(session, project_id)
        wanted = comparable_url(url)
        for other in existing:
            # Compared as one target (HTTPS://Host:443/x is https://host/x), under the
            # project's lock, so two at once register one; each row keeps the URL as sent.
            if comparable_url(other.url) == wanted:
                raise WebhookUrlTaken(url, other.id)
        if len(existing) >= max_endpoints:
            raise WebhookLimitReached(max_endpoints, len(existing))
        endpoint = WebhookEndpoint(
            id=new_id(), project_id=project_id, url=url, secret=new_secret(),
            event_types=sorted(set(event_types)), description=description, created_at=utcnow(),
            idempotency_key=idempotency_key, request_hash=request_hash)
        session.add(endpoint)
        if actor is not None:
            record_audit_event(session, actor, "webhook.created", project_id=project_id,
                               resource_id=endpoint.id,
                               details={"events": endpoint.event_types})
    return endpoint


def endpoint_by_idempotency_key(session: Session, key: str) -> WebhookEndpoint | None:
    """The endpoint registered under the stored form of an Idempotency-Key, if any."""
    endpoint = session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.idempotency_key == key)
    ).scalar_one_or_none()
    session.commit()
    return endpoint


def list_endpoints(session: Session, project_id: str) -> list[WebhookEndpoint]:
    query = (select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)
             .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id))
    return list(session.execute(query).scalars())


def page_endpoints(session: Session, project_id: str, *, limit: int,
                   cursor: str | None = None) -> Page[WebhookEndpoint]:
    """One page of the project's endpoints, newest first (:mod:`persistence.pages`)."""
    return newest_first(session, "webhooks",
                        select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id),
                        WebhookEndpoint.created_at, WebhookEndpoint.id, limit, cursor,
                        list_binding(project_id))


def get_endpoint(session: Session, project_id: str, endpoint_id: str, *,
                 for_update: bool = False) -> WebhookEndpoint:
    """The project's endpoint (row-locked with ``for_update``); :class:`WebhookNotFound` also
    for another project's."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=for_update or None,
                           populate_existing=for_update)
    if endpoint is None or endpoint.project_id != project_id:
        raise WebhookNotFound(endpoint_id)
    return endpoint


def delete_endpoint(session: Session, project_id: str, endpoint_id: str, *,
                    check: Callable[[WebhookEndpoint], None] | None = None,
                    actor: Actor | None = None) -> None:
    """Remove the endpoint and its delivery log; messages not yet sent are dropped. ``check``
    sees the locked row first and may raise to keep it (a request's ``If-Match``)."""
    with transaction(session):
        # Locked: of two DELETEs at once, the second waits and then finds the row gone (404, as
        # a DELETE sent after the first gets) instead of deleting nothing and answering 204.
        endpoint = get_endpoint(session, project_id, endpoint_id, for_update=True)
        if check is not None:
            check(endpoint)
        session.delete(endpoint)
        if actor is not None:
            record_audit_event(session, actor, "webhook.deleted", project_id=project_id,
                               resource_id=endpoint_id)


def list_deliveries(session: Session, endpoint_id: str, *, limit: int, cursor: str | None = None
                    ) -> Page[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """One page of the endpoint's messages, newest first (:mod:`persistence.pages`), each with
    its attempts (two statements; the ``(endpoint_id, created_at, id)`` index bounds the page)."""
    page = newest_first(session, "deliveries",
                        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id),
                        WebhookDelivery.created_at, WebhookDelivery.id, limit, cursor,
                        list_binding(endpoint_id))
    deliveries: list[WebhookDelivery] = page.items
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.execute(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
                .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)).scalars():
            attempts[attempt.delivery_id].append(attempt)
    return Page([(d, attempts[d.id]) for d in deliveries], page.next_cursor)


# --------------------------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------------------------
def job_payload(job: Job, event_type: str, now: datetime, warnings_total: int = 0
                ) -> dict[str, Any]:
    """The message body: the Standard Webhooks envelope ``{type, timestamp, data}``;
    ``warnings_total`` is the job's count of distinct warnings (``persistence.job_warnings``),
    so that a receiver acting on a result knows to look at them."""
    error = ({"code": job.error_code, "message": job.error_message, "field": job.error_field}
             if job.error_code else None)
    return {
        "type": event_type,
        "timestamp": now.isoformat(),
        "data": {
            "job_id": job.id, "status": job.status, "labels": job.label_dict,
            "metrics": job.metrics, "error": error,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "warnings_total": warnings_total,
            "links": {"self": f"/v1/jobs/{job.id}"},
        },
    }


def enqueue_job_notifications(session: Session, job_id: str, kind: str, now: datetime
                              ) -> list[WebhookDelivery]:
    """Add (to the caller's transaction) the messages of a job event to every endpoint of the
    job's project subscribed to it; nothing for events that are not a job's end, and nothing
    twice for one endpoint, job and event."""
    event_type = JOB_EVENT_TYPES.get(kind)
    if event_type is None:
        return []
    job = session.get(Job, job_id)
    if job is None:
        return []
    endpoints = [e for e in subscribed_endpoints(session, project_of_job(job))
                 if event_type in e.event_types]
    if not endpoints:
        return []
    already = set(session.execute(
        select(WebhookDelivery.endpoint_id).where(
            WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == event_type)
    ).scalars())
    # Counted only when a message is sent: one statement over the job's own events.
    warnings_total = warnings_of(session, job_id, limit=1).total
    body = json.dumps(job_payload(job, event_type, now, warnings_total), separators=(",", ":"),
                      sort_keys=True)
    deliveries = []
    for endpoint in endpoints:
        if endpoint.id in already:
            continue
        delivery = WebhookDelivery(
            id=new_id(), endpoint_id=endpoint.id, job_id=job_id, event_type=event_type,
            body=body, status=WebhookDeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
            created_at=now, updated_at=now)
        session.add(delivery)
        deliveries.append(delivery)
    session.info.setdefault(_NEW_DELIVERIES_KEY, []).extend(d.id for d in deliveries)
    return deliveries


def subscribed_endpoints(session: Session, project_id: str) -> list[WebhookEndpoint]:
    """The project's endpoints, to add a job's messages to in the caller's transaction; each
    held (FOR KEY SHARE) until it ends. An endpoint deleted at the same moment then waits for
    this transaction, or is gone from the list: without the lock its DELETE, committed between
    this read and the messages' insert, failed the insert's foreign key, and with it the
    transaction that ends the job (a cancel's 500; a worker's finished stage not recorded)."""
    query = (select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)
             .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
             .with_for_update(read=True, key_share=True)
             .execution_options(populate_existing=True))
    return list(session.execute(query).scalars())


def install_delivery_dispatch(factory: sessionmaker[Session],
                              send: Callable[[str], None]) -> None:
    """After a session of ``factory`` commits, ``send`` each message it added (by id). A send
    that fails is left to the workers' sweep (:func:`deliveries_to_redispatch`)."""

    def after_commit(session: Session) -> None:
        for delivery_id in session.info.pop(_NEW_DELIVERIES_KEY, []):
            try:
                send(delivery_id)
            except Exception:
                logger.warning("could not send webhook message %s now; the workers' sweep will",
                               delivery_id, exc_info=True)

    def after_rollback(session: Session) -> None:
        session.info.pop(_NEW_DELIVERIES_KEY, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)


# --------------------------------------------------------------------------------------------
# Delivery (the workers)
# --------------------------------------------------------------------------------------------
def load_delivery(session: Session, delivery_id: str
                  ) -> tuple[WebhookDelivery, WebhookEndpoint] | None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    return (delivery, endpoint) if endpoint is not None else None


#: A task may take a message this early (s): timers fire a little early or late. A task that
#: comes earlier (a duplicate) is dropped; the sweep re-sends a message whose task was lost.
CLOCK_SLACK_S = 0.1


def claim_attempt(session: Session, delivery_id: str, seen_attempts: int, now: datetime,
                  lease_until: datetime) -> bool:
    """Take attempt ``seen_attempts + 1`` of a pending message that is due: one conditional
    UPDATE, so two copies of its task never both send it. ``next_attempt_at`` moves to
    ``lease_until`` meanwhile, so the sweep leaves an attempt in flight alone. False if another
    task took it, it is not due yet, or it is settled."""
    with transaction(session):
        claimed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id,
                   WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                   WebhookDelivery.attempts == seen_attempts,
                   WebhookDelivery.next_attempt_at <= now + timedelta(seconds=CLOCK_SLACK_S))
            .values(attempts=seen_attempts + 1, next_attempt_at=lease_until, updated_at=now)
            .execution_options(synchronize_session=False))
    return bool(getattr(claimed, "rowcount", 0) == 1)


def record_attempt(session: Session, delivery_id: str, attempt: int, *,
                   status_code: int | None, error: str | None, started_at: datetime,
                   duration_ms: float | None, succeeded: bool,
                   retry_at: datetime | None) -> bool:
    """Log an attempt and settle the message: succeeded, pending until ``retry_at``, or failed
    (no ``retry_at``). False, recording nothing, when the message is gone: its endpoint (or
    job, or project) was deleted while the attempt was under way; the attempt's row would have
    broken its foreign key."""
    now = utcnow()
    status = (WebhookDeliveryStatus.SUCCEEDED if succeeded else
              WebhookDeliveryStatus.PENDING if retry_at is not None else
              WebhookDeliveryStatus.FAILED)
    with transaction(session):
        # Held until the attempt is recorded: a deletion waits for it, or went first.
        if session.execute(select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id)
                           .with_for_update()).first() is None:
            return False
        session.add(WebhookAttempt(delivery_id=delivery_id, attempt=attempt,
                                   status_code=status_code, error=_short(error),
                                   started_at=started_at, duration_ms=duration_ms))
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
            .values(status=status, last_status_code=status_code, last_error=_short(error),
                    next_attempt_at=retry_at, updated_at=now)
            .execution_options(synchronize_session=False))
    return True


def deliveries_to_redispatch(session: Session, *, late_after: float,
                             now: datetime | None = None) -> list[str]:
    """Pending messages whose next attempt is ``late_after`` seconds overdue (their task was
    lost: the broker was down at commit, or a worker died holding it), marked as due now: their
    task must be sent again. Each is taken by one conditional UPDATE, so of the workers' passes
    one sends it, once per ``late_after``; before, every pass of every worker sent each again,
    so a backed-up queue got a copy per worker every recovery interval. A copy that comes
    second finds the attempt claimed (:func:`claim_attempt`) and does nothing."""
    now = now or db_now(session)
    cutoff = now - timedelta(seconds=late_after)
    late = and_(WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at < cutoff)
    with transaction(session):
        ids = list(session.execute(select(WebhookDelivery.id).where(late)
                                   .order_by(WebhookDelivery.next_attempt_at).limit(500))
                   .scalars())
        return [delivery_id for delivery_id in ids if rows_affected(session,
                update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, late)
                .values(next_attempt_at=now)
                .execution_options(synchronize_session=False)) == 1]


def _short(text: str | None) -> str | None:
    return text if text is None or len(text) <= 500 else text[:499] + "…"
