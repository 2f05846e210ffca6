"""A client's life: closing (twice), a call after closing, and the asyncio client used from
another event loop than its first call's. Each is a :class:`RiftUsageError` (a ``ValueError``,
as Python's "I/O operation on closed file" is) raised before anything is sent.

Before, a closed client raised httpx's ``RuntimeError: Cannot send a request, as the client
has been closed``, and an ``AsyncRiftClient`` used from a second ``asyncio.run`` failed with
``RuntimeError: Event loop is closed`` (or could hang) once a connection of the first loop was
pooled: only on the second call, and only sometimes."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from rift_client import AsyncRiftClient, RetryPolicy, RiftClient, RiftUsageError
from tests.client.helpers import ScriptedReply, ScriptedServer

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
