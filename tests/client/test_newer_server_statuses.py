"""A newer server may add job or materialization statuses this client does not know. A record
in such a status with ``finished_at`` set has ended (every ended record carries it), so ``wait``
returns it instead of polling until its timeout; one without ``finished_at`` is still moving.
Against a real HTTP server on loopback that answers as that newer server would."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rift_client import AsyncRiftClient, Job, Materialization, RiftClient, WaitTimeoutError
from tests.client.helpers import ScriptedReply, ScriptedServer
from tests.client.test_retry import JOB

ENDED_AT = "2026-01-01T00:05:00Z"


def _job(status: str, finished_at: str | None) -> dict[str, Any]:
    return {**JOB, "status": status, "finished_at": finished_at}


def test_a_job_in_an_unknown_status_has_ended_only_when_finished_at_is_set() -> None:
    assert Job.model_validate(_job("archived", ENDED_AT)).finished
    assert not Job.model_validate(_job("archived", None)).finished
    # The statuses this release knows keep their meaning whatever finished_at says.
    assert not Job.model_validate(_job("running", ENDED_AT)).finished
    assert Job.model_validate(_job("cancelled", None)).finished


def test_a_materialization_in_an_unknown_status_has_ended_when_finished_at_is_set() -> None:
    record = {"id": "mat_1", "job_id": "job_1", "alpha": 0.5, "evaluate": False, "status": "expired",
              "artifact": "tuned@0.5.safetensors", "created_at": "2026-01-01T00:00:00Z",
              "finished_at": ENDED_AT, "url": "/v1/jobs/job_1/materializations/0.5"}
    assert Materialization.model_validate(record).finished
    assert not Materialization.model_validate({**record, "finished_at": None}).finished


def test_wait_returns_a_job_a_newer_server_ended_in_a_status_unknown_here(
        scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([ScriptedReply(200, _job("running", None)),
                             ScriptedReply(200, _job("archived", ENDED_AT))])
    scripted.append(server)
    with RiftClient(server.url, api_key="rift_test") as client:
        started = time.monotonic()
        job = client.wait("job_1", timeout=20, poll_interval=0.05, follow_events=False)
    assert job.status == "archived" and job.finished_at is not None
    assert time.monotonic() - started < 10  # returned at once, not at the timeout


def test_the_async_wait_returns_it_too(scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([ScriptedReply(200, _job("archived", ENDED_AT))])
    scripted.append(server)

    async def main() -> Job:
        async with AsyncRiftClient(server.url, api_key="rift_test") as client:
            return await client.wait("job_1", timeout=20, poll_interval=0.05,
                                     follow_events=False)

    assert asyncio.run(main()).status == "archived"


def test_an_unknown_status_without_finished_at_is_waited_on(
        scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([ScriptedReply(200, _job("paused", None))])
    scripted.append(server)
    with RiftClient(server.url, api_key="rift_test") as client, \
            pytest.raises(WaitTimeoutError, match="still paused"):
        client.wait("job_1", timeout=0.5, poll_interval=0.05, follow_events=False)
