"""Telling the API's event streams that a job has new events, instead of each stream polling.

Three transports, picked by ``EVENT_NOTIFY`` (:func:`notify_mode`):

- ``postgres``: a trigger on ``job_events`` (migration 0005) runs ``pg_notify`` with the job id
  for every inserted row. NOTIFY is transactional: listeners hear it when the transaction commits,
  never for one rolled back. Writers need no code.
- ``redis``: writers publish the job ids of the events they inserted on :data:`REDIS_CHANNEL`
  after their transaction commits (:func:`install_publisher` hooks a session factory).
- ``poll``: nothing is published; each API process looks for new events with one query per
  interval for all its streams (the embedded SQLite mode, where workers are other processes).

The listening side lives in :mod:`api.event_feed`; this module is shared by the API and workers.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

from sqlalchemy import event, make_url
from sqlalchemy.orm import Session, sessionmaker

from persistence.db import normalise_database_url
from persistence.models import JobEvent
from persistence.setting_checks import is_redis_url
from persistence.settings import Settings

logger = logging.getLogger(__name__)

#: The Postgres NOTIFY channel of the trigger (keep in step with migration 0005).
POSTGRES_CHANNEL = "rift_job_events"
#: The Redis pub/sub channel; messages are job ids.
REDIS_CHANNEL = "rift:job_events"

NotifyMode = Literal["postgres", "redis", "poll"]

_PENDING_KEY = "rift_event_job_ids"


def notify_mode(settings: Settings) -> NotifyMode:
    """The transport ``settings`` ask for, ``auto`` resolved from the database and broker URLs."""
    if settings.event_notify != "auto":
        return settings.event_notify
    if normalise_database_url(settings.database_url).get_backend_name() == "postgresql":
        return "postgres"
    if is_redis_url(settings.broker_url):
        return "redis"
    return "poll"


def postgres_conninfo(settings: Settings) -> str:
    """A libpq connection string for ``settings.database_url`` (psycopg's own form)."""
    url = normalise_database_url(settings.database_url).set(drivername="postgresql")
    return make_url(url).render_as_string(hide_password=False)


class EventPublisher(Protocol):
    """Tells listeners that these jobs have new committed events."""

    def publish(self, job_ids: set[str]) -> None: ...

    def close(self) -> None: ...


class RedisEventPublisher:
    """Publishes job ids on :data:`REDIS_CHANNEL` (a lost message costs a stream at most
    ``EVENT_STREAM_RECHECK_SECONDS`` of delay, so failures are logged, not raised)."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def publish(self, job_ids: set[str]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for job_id in sorted(job_ids):
                pipe.publish(REDIS_CHANNEL, job_id)
            pipe.execute()
        except Exception:
            logger.warning("could not publish new events of %s", sorted(job_ids), exc_info=True)

    def close(self) -> None:
        self._client.close()


def build_publisher(settings: Settings) -> EventPublisher | None:
    """The publisher writers need for ``settings``: Redis only (Postgres' trigger publishes by
    itself, and the poll mode needs nothing)."""
    if notify_mode(settings) == "redis":
        return RedisEventPublisher(settings.broker_url)
    return None


def install_publisher(factory: sessionmaker[Session], publisher: EventPublisher) -> None:
    """Make every session of ``factory`` publish the job ids of the events it inserted, once
    its transaction has committed (nothing for a transaction rolled back)."""

    def collect(session: Session, *_: Any) -> None:
        ids = {obj.job_id for obj in session.new if isinstance(obj, JobEvent)}
        if ids:
            session.info.setdefault(_PENDING_KEY, set()).update(ids)

    def publish(session: Session) -> None:
        ids = session.info.pop(_PENDING_KEY, None)
        if ids:
            publisher.publish(ids)

    def forget(session: Session, *_: Any) -> None:
        session.info.pop(_PENDING_KEY, None)

    # before_flush sees the new objects (after_flush has already moved them out of session.new).
    event.listen(factory, "before_flush", collect)
    event.listen(factory, "after_commit", publish)
    event.listen(factory, "after_rollback", forget)
