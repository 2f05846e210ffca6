"""Waking the API's event streams when their job has new events.

One :class:`EventFeed` per API process: streams :meth:`~EventFeed.subscribe` to a job id and wait;
one listener task per process (not per stream) hears the notifications of
:mod:`persistence.event_notify` (Postgres LISTEN, Redis pub/sub, or one polling query per
interval) and wakes the job's subscribers, who then read the new rows by id. 800 idle streams
therefore cost the database nothing. When a listener loses its connection it wakes every stream
once it is back, so a notification missed meanwhile only costs a re-read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from persistence.event_notify import (
    POSTGRES_CHANNEL,
    REDIS_CHANNEL,
    notify_mode,
    postgres_conninfo,
)
from persistence.models import JobEvent
from persistence.settings import Settings

logger = logging.getLogger(__name__)


class Subscription:
    """A stream's wake-up flag: set by the feed, cleared by :meth:`wait`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when woken within ``timeout`` seconds (the flag is then cleared), else False."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class NotificationSource(Protocol):
    """Where a feed hears of new events: runs until cancelled, calling ``feed.notify``."""

    async def run(self, feed: EventFeed) -> None: ...


class EventFeed:
    """The subscribers of this process by job id, and the task of its notification source."""

    def __init__(self, source: NotificationSource | None) -> None:
        self._source = source
        self._subscribers: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._source is not None and self._task is None:
            self._task = asyncio.create_task(self._source.run(self), name="rift-event-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def job_ids(self) -> set[str]:
        return set(self._subscribers)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        """A subscription to ``job_id``'s new events for the duration of the block."""
        subscription = Subscription()
        self._subscribers.setdefault(job_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[job_id]

    def notify(self, job_id: str) -> None:
        """Wake the streams of ``job_id`` (call from the event loop)."""
        for subscription in self._subscribers.get(job_id, ()):
            subscription.wake()

    def notify_all(self) -> None:
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.wake()

    def notify_threadsafe(self, job_ids: set[str]) -> None:
        """:meth:`notify` from another thread (the request threads' session hooks)."""
        if self._loop is None or self._loop.is_closed():
            return
        for job_id in job_ids:
            self._loop.call_soon_threadsafe(self.notify, job_id)


class OutageLog:
    """Logs a listener's lost dependency once per outage: a warning with the traceback at the
    first failure, debug lines for the retries, one info line when it is back. Each API process
    retries every ``EVENT_POLL_INTERVAL_SECONDS`` (1 s): a database down for an hour wrote 3,600
    tracebacks per process, which buried whatever else the log said."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    def failed(self, retry_s: float) -> None:
        self.failures += 1
        if self.failures == 1:
            logger.warning("%s; retrying every %.1f s (logged again once it is back)",
                           self.what, retry_s, exc_info=True)
        else:
            logger.debug("%s (attempt %d)", self.what, self.failures, exc_info=True)

    def recovered(self) -> None:
        if self.failures:
            logger.info("%s: back after %d failed attempts", self.what, self.failures)
            self.failures = 0


class PostgresSource:
    """``LISTEN rift_job_events`` on one dedicated connection of this process."""

    def __init__(self, conninfo: str, retry_s: float, connect_timeout_s: int = 5) -> None:
        self._conninfo = conninfo
        self._retry_s = retry_s
        # A host that drops packets would otherwise hold the listener for minutes per attempt.
        self._connect_timeout_s = connect_timeout_s

    async def run(self, feed: EventFeed) -> None:
        import psycopg

        outage = OutageLog("event listener lost Postgres")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True,
                        connect_timeout=self._connect_timeout_s) as connection:
                    await connection.execute(f"LISTEN {POSTGRES_CHANNEL}")
                    outage.recovered()
                    feed.notify_all()  # whatever was missed before LISTEN took effect
                    async for notification in connection.notifies():
                        feed.notify(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                outage.failed(self._retry_s)
            await asyncio.sleep(self._retry_s)


class RedisSource:
    """A subscription to the Redis channel the writers publish on."""

    def __init__(self, url: str, retry_s: float) -> None:
        self._url = url
        self._retry_s = retry_s

    async def run(self, feed: EventFeed) -> None:
        import redis.asyncio as aioredis

        outage = OutageLog("event listener lost Redis")
        while True:
            client = aioredis.Redis.from_url(self._url)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(REDIS_CHANNEL)
                outage.recovered()
                feed.notify_all()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        feed.notify(data.decode("ascii", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception:
                outage.failed(self._retry_s)
            finally:
                with suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(self._retry_s)


class PollingSource:
    """One query per interval for the whole process: which jobs have events past the highest id
    seen. Runs the query only while some stream is open."""

    def __init__(self, factory: sessionmaker[Session], interval_s: float) -> None:
        self._factory = factory
        self._interval_s = interval_s

    def _changed(self, after: int | None) -> tuple[int, set[str]]:
        with self._factory() as session:
            if after is None:
                top = session.execute(select(func.max(JobEvent.id))).scalar_one_or_none()
                return int(top or 0), set()
            rows = session.execute(
                select(JobEvent.job_id, func.max(JobEvent.id))
                .where(JobEvent.id > after).group_by(JobEvent.job_id)).all()
        return max((int(top) for _, top in rows), default=after), {job_id for job_id, _ in rows}

    async def run(self, feed: EventFeed) -> None:
        after: int | None = None
        outage = OutageLog("event poll failed")
        while True:
            await asyncio.sleep(self._interval_s)
            if feed.subscriber_count == 0:
                after = None  # start from the current top when a stream next opens
                continue
            first = after is None
            try:
                after, job_ids = await run_in_threadpool(self._changed, after)
            except Exception:
                outage.failed(self._interval_s)
                continue
            outage.recovered()
            if first:
                # Events written between a stream's first read and this baseline: re-read once.
                feed.notify_all()
            for job_id in job_ids:
                feed.notify(job_id)


class LocalPublisher:
    """Wakes this process's streams directly: the events the API itself writes (job created,
    cancel) in the poll mode, where nothing else would tell it before the next poll."""

    def __init__(self, feed: EventFeed) -> None:
        self._feed = feed

    def publish(self, job_ids: set[str]) -> None:
        self._feed.notify_threadsafe(job_ids)

    def close(self) -> None:
        pass


def build_event_feed(settings: Settings, factory: sessionmaker[Session]) -> EventFeed:
    """The feed ``settings`` ask for (see :func:`persistence.event_notify.notify_mode`)."""
    mode = notify_mode(settings)
    retry = settings.event_poll_interval_seconds
    source: NotificationSource
    if mode == "postgres":
        source = PostgresSource(postgres_conninfo(settings), retry,
                                settings.database_connect_timeout_seconds)
    elif mode == "redis":
        source = RedisSource(settings.broker_url, retry)
    else:
        source = PollingSource(factory, settings.event_poll_interval_seconds)
    return EventFeed(source)
