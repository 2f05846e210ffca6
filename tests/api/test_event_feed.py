"""Live events are pushed: many idle event streams cost the database no query, and an event a
worker commits reaches its stream within about a second, for each transport (Postgres
LISTEN/NOTIFY, Redis pub/sub, and the one-query-per-interval poll of the embedded mode)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from persistence import jobs
from persistence.db import session_factory_from_settings
from persistence.event_notify import build_publisher, install_publisher
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher
from tests.api.test_job_list_queries import add_jobs
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service

STREAMS = 200
# Half an idle stream's recheck (60 s by default): an event every stream has sooner was pushed,
# not found by the recheck.
PUSHED_WITHIN_S = Settings.model_fields["event_stream_recheck_seconds"].default / 2


class Streams:
    """``count`` SSE connections to one job's events, held open by an asyncio loop in a thread;
    ``received`` lists (monotonic time, event kind) as they arrive."""

    def __init__(self, url: str, job_id: str, count: int, key: str) -> None:
        self.url, self.job_id, self.count = url, job_id, count
        self.headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {key}"}
        self.received: list[tuple[float, str]] = []
        self.open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"/v1/jobs/{self.job_id}/events",
                                 headers=self.headers) as response:
            self.open += 1
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    self.received.append((time.monotonic(), line[len("event: "):]))

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.count + 10)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client)) for _ in range(self.count)]
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Streams:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    def kinds(self, kind: str) -> list[float]:
        return [t for t, k in self.received if k == kind]


@pytest.fixture
def feed_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    mode = request.param
    env = {"STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects"),
           "WORK_DIR": str(tmp_path / "work"), "EVENT_NOTIFY": mode,
           "EVENT_POLL_INTERVAL_SECONDS": "0.5", "BROKER_URL": "memory://",
           # One key holds all the test's streams.
           "DEFAULT_MAX_STREAMS_PER_KEY": str(STREAMS + 10),
           "DEFAULT_MAX_REQUESTS_PER_MINUTE": "100000"}
    if mode == "poll":
        env["DATABASE_URL"] = request.getfixturevalue("sqlite_url")
    else:
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    if mode == "redis":
        env["BROKER_URL"] = request.getfixturevalue("redis_broker_url")
    return settings_from_env(env)


@pytest.fixture
def worker_sessions(feed_settings: Settings) -> Iterator[Any]:
    """A session factory set up as a worker process sets up its own (publisher included)."""
    factory = session_factory_from_settings(feed_settings)
    publisher = build_publisher(feed_settings)
    if publisher is not None:
        install_publisher(factory, publisher)
    yield factory
    if publisher is not None:
        publisher.close()
    factory.kw["bind"].dispose()


@pytest.mark.parametrize("feed_settings", ["postgres", "redis", "poll"], indirect=True)
def test_idle_streams_do_not_query_and_new_events_are_pushed(
        feed_settings: Settings, worker_sessions: Any,
        start_api: Callable[..., Api]) -> None:
    api = start_api(feed_settings, dispatcher=RecordingDispatcher())
    job_id = add_jobs(api, 1)[0]
    engine = api.sessions.kw["bind"]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with Streams(api.url, job_id, STREAMS, api.key) as streams:
        streams.wait_until(lambda: len(streams.kinds("job_created")) == STREAMS, timeout=60)
        time.sleep(0.5)  # let the listener settle (Postgres LISTEN / first poll)
        event.listen(engine, "before_cursor_execute", record)
        try:
            time.sleep(3.0)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        idle_statements = len(statements)

        written_at = time.monotonic()
        with worker_sessions() as session:
            jobs.append_event(session, job_id, "warning", {"message": "live"})
        streams.wait_until(lambda: len(streams.kinds("warning")) == STREAMS,
                           timeout=PUSHED_WITHIN_S)
        latencies = sorted(t - written_at for t in streams.kinds("warning"))

    if feed_settings.event_notify == "poll":
        # One query per interval for all 200 streams (0.5 s over 3 s: about 6, plus BEGINs).
        assert idle_statements <= 2 * (3.0 / 0.5 + 2), statements
    else:
        assert idle_statements == 0, statements
    # The event is pushed: without a wake-up no stream would read before its 60 s recheck, and
    # wait_until above would time out at PUSHED_WITHIN_S, half of that. Only that bound proves
    # the push; how soon the last of 200 streams has it measures the API process's CPU (with the
    # suite's other processes on the same 2 cores: 1.6 s for the first stream once, all within
    # 20 ms of each other, the process starved, not a wake-up lost; 5.5 s for the last on a
    # machine twice as slow), which is no pass/fail matter.
    assert latencies[-1] < PUSHED_WITHIN_S, latencies[-5:]
    assert streams.kinds("end") == []  # the job is still queued: every stream stays open


@pytest.mark.parametrize("feed_settings", ["postgres"], indirect=True)
def test_stream_resumes_with_last_event_id_and_ends_on_a_pushed_finish(
        feed_settings: Settings, worker_sessions: Any,
        start_api: Callable[..., Api]) -> None:
    api = start_api(feed_settings, dispatcher=RecordingDispatcher())
    job_id = add_jobs(api, 1)[0]
    with worker_sessions() as session:
        first = jobs.append_event(session, job_id, "warning", {"message": "one"}).id
    lines: list[str] = []

    def listen() -> None:
        with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", timeout=30,
                          headers={"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream",
                                   "Last-Event-ID": str(first)}) as response:
            lines.extend(line for line in response.iter_lines() if line.startswith("event: "))

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)  # most often connected by now; if not, Last-Event-ID replays the cancel
    with worker_sessions() as session:
        jobs.request_cancel(session, job_id)
    listener.join(timeout=30)  # the push arrives in ms; 30 s only bounds a lost one (60 s poll)
    assert not listener.is_alive()
    assert lines == ["event: job_cancelled", "event: end"]


def test_a_listener_logs_an_outage_once_and_its_end(caplog: pytest.LogCaptureFixture) -> None:
    """Redis (a scratch server of this test) stopped under a listening feed, then started again:
    one warning with the traceback, retries at debug level, one info line when it is back.

    The server is stopped and started off the event loop, and each phase waits for what it
    expects rather than for a fixed time: on a loaded CI machine a second of outage once saw
    only two attempts."""
    import logging

    from api.event_feed import EventFeed, RedisSource
    from tests.reliability.helpers import RedisServer

    server = RedisServer().start()
    retry_s = 0.05

    def feed_records(level: int, text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.name == "api.event_feed" and r.levelno == level and text in r.message]

    async def until(what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        feed = EventFeed(RedisSource(server.url, retry_s))
        await feed.start()
        try:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.stop)
            await until("three retries", lambda: len(feed_records(logging.DEBUG, "lost Redis")) >= 3)
            await asyncio.to_thread(server.start)
            await until("recovery line", lambda: bool(feed_records(logging.INFO, "back after")))
            await asyncio.sleep(0.2)  # nothing more is logged once it is back
        finally:
            await feed.stop()

    caplog.set_level(logging.DEBUG, logger="api.event_feed")
    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    warnings = feed_records(logging.WARNING, "")
    retries = feed_records(logging.DEBUG, "lost Redis")
    back = feed_records(logging.INFO, "back after")
    assert len(warnings) == 1 and warnings[0].exc_info is not None, warnings
    assert len(retries) >= 3
    assert len(back) == 1 and f"back after {len(retries) + 1} failed attempts" in back[0].message


def test_the_postgres_listener_gives_up_on_a_silent_host(caplog: pytest.LogCaptureFixture) -> None:
    """A port that accepts connections but never speaks (a host dropping packets): each attempt
    ends after the connect timeout, so the outage is logged and retried instead of hanging."""
    import logging
    import socket

    from api.event_feed import EventFeed, PostgresSource

    def lost() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "lost Postgres" in r.message]

    async def scenario(port: int) -> None:
        feed = EventFeed(PostgresSource(f"host=127.0.0.1 port={port} user=nobody dbname=none",
                                        0.05, connect_timeout_s=2))
        await feed.start()
        try:
            # Until the first attempt's end is logged; a fixed 5 s was 2.5 connect timeouts on
            # an idle machine, not on a loaded one. An attempt that hangs never logs: 60 s fail.
            deadline = time.monotonic() + 60
            while not lost():
                assert time.monotonic() < deadline, "no attempt ended within 60 s"
                await asyncio.sleep(0.05)
        finally:
            await feed.stop()

    caplog.set_level(logging.DEBUG, logger="api.event_feed")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        asyncio.run(scenario(silent.getsockname()[1]))
    assert lost()[0].levelno == logging.WARNING
