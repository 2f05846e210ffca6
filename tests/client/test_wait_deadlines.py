"""A wait's ``timeout`` bounds the wait, however slow the service: a look that the service does
not answer (a hung worker behind the API, a stalled proxy) is cut off when the time given runs
out, no retry begins after it, and the wait raises its own ``WaitTimeoutError``.

Before, each look had the client's whole ``timeout`` (60 s) and its retries (4), so
``wait(job, timeout=30)`` against a service that had stopped answering took about 5 minutes
and then raised ``RiftConnectionError``; the scripted server here hangs for good on the second
look, and the tests count the requests, not the seconds."""

from __future__ import annotations

import threading

import pytest

from rift_client import RetryPolicy, RiftClient, RiftConnectionError, WaitTimeoutError
from tests.client.helpers import ScriptedReply, ScriptedServer
from tests.client.test_retry import JOB
from tests.client.test_wait_outages import _materialization
from tests.quiet_http import LoopbackServer, QuietHandler

#: Longer than any test waits: the look is never answered.
HUNG_S = 60.0
#: Retries a look could make if the deadline did not stop them.
RETRIES = RetryPolicy(max_retries=4, backoff_s=0.05, max_backoff_s=0.05)


def _hanging_after(scripted: list[ScriptedServer], first: object) -> ScriptedServer:
    server = ScriptedServer([ScriptedReply(200, first),
                             ScriptedReply(200, first, delay_s=HUNG_S)])
    scripted.append(server)
    return server


@pytest.mark.parametrize("follow_events", [False, True], ids=["polling", "events"])
def test_a_wait_on_a_service_that_stops_answering_ends_at_its_timeout(
        scripted: list[ScriptedServer], follow_events: bool) -> None:
    # Following events, the hung look is the one for the latest event id.
    server = _hanging_after(scripted, {**JOB, "status": "running"})
    # The client's own timeout (5 s per read) is longer than the wait's (0.5 s).
    with RiftClient(server.url, retry=RETRIES, timeout=5) as client, \
            pytest.raises(WaitTimeoutError) as raised:
        client.wait("job_1", timeout=0.5, poll_interval=0.05, follow_events=follow_events)
    assert raised.value.last_status == "running" and raised.value.job_id == "job_1"
    assert len(server.seen) == 2  # the first look, one hung look: no retry after the end


def test_a_short_wait_on_a_slow_service_still_makes_its_first_look(
        scripted: list[ScriptedServer]) -> None:
    # The first look says whether the job exists: made as any call is, even when it takes
    # longer than the whole wait may (a slow service, not a hung one).
    server = ScriptedServer([ScriptedReply(200, {**JOB, "status": "running"}, delay_s=1.0)])
    scripted.append(server)
    with RiftClient(server.url, retry=RETRIES, timeout=5) as client, \
            pytest.raises(WaitTimeoutError) as raised:
        client.wait("job_1", timeout=0.1, poll_interval=0.05, follow_events=False)
    assert raised.value.last_status == "running"
    assert len(server.seen) == 1


def test_a_materialization_wait_on_a_service_that_stops_answering_ends_at_its_timeout(
        scripted: list[ScriptedServer]) -> None:
    server = _hanging_after(scripted, _materialization("running"))
    with RiftClient(server.url, retry=RETRIES, timeout=5) as client, \
            pytest.raises(WaitTimeoutError) as raised:
        client.wait_materialization("job_1", "mat_1", timeout=0.5, poll_interval=0.05)
    assert raised.value.materialization_id == "mat_1"
    assert raised.value.last_status == "running"
    assert len(server.seen) == 2


def test_an_event_stream_that_never_opens_is_not_retried_past_its_timeout(
        scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([ScriptedReply(200, {}, delay_s=HUNG_S)])
    scripted.append(server)
    with RiftClient(server.url, retry=RETRIES, timeout=5) as client, \
            pytest.raises(RiftConnectionError):
        list(client.stream_events("job_1", timeout=0.5))
    assert len(server.seen) == 1


def test_wait_until_ready_does_not_wait_on_a_hung_readyz_past_its_timeout() -> None:
    # /readyz hangs until the test lets it answer 200, long after the 0.3 s given: a look that
    # outlived the wait took that late 200 as ready.
    answer = threading.Event()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            answer.wait(timeout=60)
            self.send_body(200, b"{}", {"Content-Type": "application/json"})

    server = LoopbackServer(Handler)
    release = threading.Timer(10.0, answer.set)
    release.start()
    try:
        with RiftClient(server.url, retry=RETRIES, timeout=30) as client, \
                pytest.raises(RiftConnectionError, match=r"was not ready within 0\.3 s"):
            client.wait_until_ready(timeout=0.3, poll_interval=0.05)
    finally:
        release.cancel()
        answer.set()
        server.stop()
