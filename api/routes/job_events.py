"""``/v1/jobs/{id}/events``: the job's typed event log, as pages or as a live Server-Sent Events
stream (``Accept: text/event-stream``) that ends when the job has finished."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, EventFeedDep, SessionFactoryDep, SettingsDep, StreamSlotsDep
from api.errors import BadRequest, TooManyRequests, quote
from api.event_feed import EventFeed
from api.routes.jobs import load_job
from api.schemas import EventOut, EventPageOut
from persistence.jobs import list_events
from persistence.models import TERMINAL_STATUSES, ApiKey, Job

router = APIRouter(prefix="/jobs", tags=["events"])
logger = logging.getLogger(__name__)

#: A read of an open stream that fails on these (the database locked past
#: DATABASE_LOCK_TIMEOUT_SECONDS, down, its pool taken) ends the stream cleanly: its headers
#: are sent, so no 503 can be answered, and a stream cut mid-chunk logged a traceback.
_DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)

#: How often an idle stream sends a keep-alive comment (s), so proxies keep the connection open.
HEARTBEAT_INTERVAL_S = 15.0
#: Events read per database round trip of a stream.
EVENTS_PER_READ = 500
MAX_EVENT_ID = 2**63 - 1  # BIGINT


def event_out(event: object) -> EventOut:
    return EventOut.model_validate(event, from_attributes=True)


#: The media types the JSON page answers (a client accepting any of them may get JSON).
_JSON_RANGES = ("application/json", "application/*", "*/*")


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for the live stream: ``text/event-stream`` listed with
    a quality above 0 and at least that of any range the JSON page matches. A substring test
    (as before) also streamed to ``text/event-stream;q=0, application/json``, which refuses the
    stream."""
    if not accept:
        return False
    stream, json_page = 0.0, 0.0
    for media_range in accept.split(","):
        media_type, *params = media_range.split(";")
        media_type = media_type.strip().lower()
        if media_type == "text/event-stream":
            stream = max(stream, _quality(params))
        elif media_type in _JSON_RANGES:
            json_page = max(json_page, _quality(params))
    return stream > 0 and stream >= json_page


def _key_and_job_status(session: Session, key_id: str, job_id: str
                        ) -> tuple[bool, str | None]:
    """Whether the stream's key is live, and the job's status, in one statement (a stream reads
    both at every wake-up: one round trip fewer on the way from a commit to the client)."""
    status = select(Job.status).where(Job.id == job_id).scalar_subquery()
    found = session.execute(select(ApiKey.revoked_at, status)
                            .where(ApiKey.id == key_id)).one_or_none()
    if found is None:
        return False, None
    return found[0] is None, found[1]


def _poll(factory: sessionmaker[Session], job_id: str, after: int, key_id: str
          ) -> tuple[list[EventOut], str | None] | None:
    """Events after ``after``, and the job's status read *before* them: a finished job's last
    events are written with its final status, so once that status is seen none can follow.
    None once the stream's API key is revoked: an open stream answers to the key like every
    request, at each read."""
    with factory() as session:
        live, status = _key_and_job_status(session, key_id, job_id)
        if not live:
            session.commit()
            return None
        events = [event_out(e) for e in list_events(session, job_id, after_id=after,
                                                     limit=EVENTS_PER_READ)]
        session.commit()
    return events, status


def _sse(event: EventOut) -> str:
    data = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


class _HeldStream(StreamingResponse):
    """A stream that gives its slot back when it ends, however it ends (finished, client gone,
    or never started because the client left first)."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _stream(factory: sessionmaker[Session], feed: EventFeed, job_id: str, after: int,
                  recheck_s: float, key_id: str) -> AsyncIterator[str]:
    """Read the events after ``after`` once, then again only when the feed says the job has new
    ones (or after ``recheck_s`` idle seconds, a safety net): an idle stream costs no query.
    Each read checks the key first: once it is revoked the stream closes without an ``end``
    event (so a client reconnects, and is refused with 401) at the next read, at most
    ``recheck_s`` after the revocation. A read the database fails closes the stream without an
    ``end`` event, so that the client reconnects."""
    yield "retry: 2000\n\n"
    # Subscribed before the first read, so an event written during that read still wakes us.
    with feed.subscribe(job_id) as subscription:
        while True:
            try:
                read = await run_in_threadpool(_poll, factory, job_id, after, key_id)
            except _DATABASE_ERRORS as exc:
                # No `end` event: the client reconnects after `retry:` from its last event id.
                logger.warning("event stream of job %s closed: the database cannot be read "
                               "(%s)", job_id, " ".join(str(exc).split())[:300])
                yield ": the database cannot be read now; reconnect later\n\n"
                return
            if read is None:
                yield ": the API key was revoked\n\n"
                return
            events, status = read
            for event in events:
                after = event.id
                yield _sse(event)
            if len(events) == EVENTS_PER_READ:
                continue
            # The status was read before the events: once it is final, none can follow them.
            if status is None or status in TERMINAL_STATUSES:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            idle_since = time.monotonic()
            while not await subscription.wait(HEARTBEAT_INTERVAL_S):
                yield ": keep-alive\n\n"
                if time.monotonic() - idle_since >= recheck_s:
                    break


def _last_event_id(value: str) -> int:
    """The id a ``Last-Event-ID`` header names. Only this service's ids (plain numbers) are
    read: anything else replayed the whole log silently, which a client resuming after a
    dropped connection takes for events happening again."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > MAX_EVENT_ID:
        raise BadRequest(
            f"Last-Event-ID {quote(value)} is not an event id: send the id of the last event "
            f"received, a whole number from 0 to {MAX_EVENT_ID}, or leave the header out",
            field="Last-Event-ID", code="invalid_last_event_id")
    return int(digits)


@router.get(
    "/{job_id}/events",
    response_model=None,
    summary="The job's event log",
    description=(
        "Events with id > after, oldest first (stage_started, stage_finished, epoch, warning, "
        "job_succeeded, ...). With 'Accept: text/event-stream' the response is a Server-Sent "
        "Events stream of the events after 'after' (or Last-Event-ID), live, ending with an "
        "'end' event once the job has finished. A Last-Event-ID header (pages or stream) is "
        "read as the larger of it and 'after'; one that is not an event id is a 400."
    ),
    responses={200: {"model": EventPageOut, "content": {"text/event-stream": {}}},
               400: {"description": "Last-Event-ID is not an event id"}},
)
def read_events(
    job_id: str,
    request: Request,
    factory: SessionFactoryDep,
    caller: CallerDep,
    slots: StreamSlotsDep,
    feed: EventFeedDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="Last event id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventPageOut | StreamingResponse:
    with factory() as session:
        job = load_job(session, caller, job_id)
        session.commit()
        if last_event_id is not None:  # read as a later ?after=, on pages as on streams
            after = max(after, _last_event_id(last_event_id))
        if wants_event_stream(request.headers.get("accept")):
            limit_streams = caller.limits.max_streams_per_key
            if not slots.acquire(caller.key_id, limit_streams, caller.project_id):
                raise TooManyRequests(
                    f"this API key already has {limit_streams} open event streams "
                    "(max_streams_per_key); close one first", field="max_streams_per_key",
                    code="quota_exceeded", headers={"Retry-After": "5"},
                    details={"quota": "max_streams_per_key", "limit": limit_streams,
                             "used": slots.open_for_key(caller.key_id)})
            return _HeldStream(
                _stream(factory, feed, job.id, after, settings.event_stream_recheck_seconds,
                        caller.key_id),
                partial(slots.release, caller.key_id, caller.project_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        status = job.status
        finished = status in TERMINAL_STATUSES
        events = [event_out(e) for e in list_events(session, job.id, after_id=after, limit=limit)]
    return EventPageOut(items=events, next_after=events[-1].id if events else after,
                        job_status=status, finished=finished and len(events) < limit)
