"""A client's life: closing (twice), a call after closing, and the asyncio client used from
another event loop than its first call's. Each is a :class:`RiftUsageError` (a ``ValueError``,
as Python's "I/O operation on closed file" is) raised before anything is sent. And a client
made before a fork (a multiprocessing pool, DataLoader workers, gunicorn --preload) used in the
children: each child opens its own connections and gets its own answers.

Before, a closed client raised httpx's ``RuntimeError: Cannot send a request, as the client
has been closed``, and an ``AsyncRiftClient`` used from a second ``asyncio.run`` failed with
``RuntimeError: Event loop is closed`` (or could hang) once a connection of the first loop was
pooled: only on the second call, and only sometimes."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from rift_client import AsyncRiftClient, RetryPolicy, RiftClient, RiftUsageError
from tests.client.helpers import ScriptedReply, ScriptedServer
from tests.client.test_retry import JOB
from tests.quiet_http import LoopbackServer, QuietHandler

EMPTY_PAGE = ScriptedReply(200, {"items": [], "next_cursor": None})
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
def server(scripted: list[ScriptedServer]) -> ScriptedServer:
    started = ScriptedServer([EMPTY_PAGE])
    scripted.append(started)
    return started


def test_a_closed_client_says_so_before_sending(server: ScriptedServer) -> None:
    with RiftClient(server.url, retry=NO_RETRY, timeout=5) as rift:
        assert list(rift.list_jobs()) == []
    rift.close()  # closing again does nothing
    with pytest.raises(RiftUsageError, match="RiftClient is closed"):
        rift.get_job("job_1")
    with pytest.raises(RiftUsageError, match="RiftClient is closed"):
        list(rift.list_jobs())
    with pytest.raises(RiftUsageError, match="RiftClient is closed"), rift:
        pass
    assert len(server.seen) == 1


def test_a_closed_async_client_says_so_before_sending(server: ScriptedServer) -> None:
    async def scenario() -> None:
        async with AsyncRiftClient(server.url, retry=NO_RETRY, timeout=5) as rift:
            assert [job async for job in rift.list_jobs()] == []
        await rift.close()
        with pytest.raises(RiftUsageError, match="AsyncRiftClient is closed"):
            await rift.get_job("job_1")
        with pytest.raises(RiftUsageError, match="AsyncRiftClient is closed"):
            [job async for job in rift.list_jobs()]

    asyncio.run(scenario())
    assert len(server.seen) == 1


def test_an_async_client_used_from_a_second_event_loop_says_so(server: ScriptedServer) -> None:
    rift = AsyncRiftClient(server.url, retry=NO_RETRY, timeout=5)
    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(rift.ready()) is True
        # A connection of the first loop is now pooled: the second loop must not touch it.
        with pytest.raises(RiftUsageError, match="another event loop"):
            asyncio.run(rift.get_job("job_1"))
        with pytest.raises(RiftUsageError, match="another event loop"):
            asyncio.run(rift.close())
        assert len(server.seen) == 1
        # Closed where it was used, its connection is released: no socket left to the GC.
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            first.run_until_complete(rift.close())
            gc.collect()
    finally:
        first.close()


class JobsByPath:
    """Answers ``GET /v1/jobs/<id>`` with a job of that id, remembering each id with the port
    of the connection it came on."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        jobs = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                job_id = self.path.rsplit("/", 1)[1]
                jobs.ports[job_id] = self.client_address[1]
                self.send_body(200, json.dumps({**JOB, "id": job_id}).encode(),
                               {"Content-Type": "application/json"})

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def jobs() -> Iterator[JobsByPath]:
    server = JobsByPath()
    yield server
    server.stop()


def _in_children(count: int, read: Any) -> list[object]:
    """``read(n)`` in ``count`` forked children at once; what each returned (or its error)."""
    context = multiprocessing.get_context("fork")
    answers = context.Queue()

    def child(n: int) -> None:
        try:
            answers.put(read(n))
        except Exception as exc:  # handed to the test
            answers.put(repr(exc))

    children = [context.Process(target=child, args=(n,)) for n in range(count)]
    for process in children:
        process.start()
    got = [answers.get(timeout=60) for _ in children]
    for process in children:
        process.join(timeout=30)
    return got


def test_forked_children_open_their_own_connections(jobs: JobsByPath) -> None:
    with RiftClient(jobs.url, retry=NO_RETRY, timeout=10) as rift:
        assert rift.get_job("parent").id == "parent"  # a connection is pooled
        got = _in_children(3, lambda n: [rift.get_job(f"child{n}-{k}").id for k in range(4)])
        # The parent's connection was left open by the children: used again.
        assert rift.get_job("parent-again").id == "parent-again"
    assert sorted(map(str, got)) == sorted(str([f"child{n}-{k}" for k in range(4)])
                                           for n in range(3))
    parent = jobs.ports["parent"]
    assert jobs.ports["parent-again"] == parent
    assert all(port != parent for job_id, port in jobs.ports.items()
               if job_id.startswith("child"))


def test_a_forked_child_runs_the_async_client_in_its_own_loop(jobs: JobsByPath) -> None:
    rift = AsyncRiftClient(jobs.url, retry=NO_RETRY, timeout=10)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(rift.get_job("parent")).id == "parent"
        got = _in_children(2, lambda n: asyncio.run(rift.get_job(f"child{n}")).id)
        loop.run_until_complete(rift.close())
    finally:
        loop.close()
    assert sorted(map(str, got)) == ["child0", "child1"]
    assert jobs.ports["child0"] != jobs.ports["parent"] != jobs.ports["child1"]
