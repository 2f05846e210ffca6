"""``wait``, ``wait_materialization`` and ``stream_events`` through an outage longer than one
request's retries (the API restarting behind a proxy, a deploy): they go on looking until the
service answers again, up to ``RetryPolicy.max_outage_s``, instead of ending while the job runs
on. The outage is a
real TCP proxy in front of the real API that drops a counted number of connections before
answering; nothing in the tests depends on how long anything takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift_client import Job, RetryPolicy, RiftClient, RiftConnectionError, ServerError
from tests.api.helpers import digits_config
from tests.client.conftest import RunningApi
from tests.client.helpers import CuttingProxy, ScriptedReply, ScriptedServer
from tests.client.test_retry import JOB as _JOB

pytestmark = pytest.mark.service

#: Each request is tried 3 times (2 retries), so 7 dropped connections fail two looks in a row.
DROPPED = 7


def _policy(max_outage_s: float) -> RetryPolicy:
    return RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01,
                       max_outage_s=max_outage_s)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path_factory.mktemp("outage-checkpoints") / "model.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def _queued_job(rift: RiftClient, path: Path) -> Job:
    checkpoint = rift.upload_checkpoint(path)
    return rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)


@pytest.mark.parametrize("follow_events", [False, True], ids=["polling", "events"])
def test_wait_lives_through_an_outage_and_sees_the_job_end(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None, checkpoint_file: Path,
        follow_events: bool) -> None:
    job = _queued_job(rift, checkpoint_file)
    proxy = CuttingProxy(queued_api.url, marker=job.id.encode(), cut_after=0, times=0)
    seen: list[str] = []

    def outage_then_cancel(update: Job) -> None:
        seen.append(update.status)
        if len(seen) == 1:  # read once: the service goes down, and the job ends meanwhile
            proxy.cuts_left = DROPPED
            rift.cancel(job.id)

    try:
        with RiftClient(proxy.url, api_key=api_key, retry=_policy(60)) as client:
            done = client.wait(job.id, timeout=120, poll_interval=0.01,
                               on_update=outage_then_cancel, follow_events=follow_events)
    finally:
        proxy.stop()
    # Before, the first look that failed its retries ended the wait with RiftConnectionError.
    assert done.status == "cancelled" and proxy.cuts_done == DROPPED
    assert seen == ["queued", "cancelled"]


def test_wait_raises_once_the_outage_outlasts_the_policy(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None,
        checkpoint_file: Path) -> None:
    job = _queued_job(rift, checkpoint_file)
    proxy = CuttingProxy(queued_api.url, marker=job.id.encode(), cut_after=0, times=0)

    def outage(_: Job) -> None:
        proxy.cuts_left = DROPPED

    try:
        with RiftClient(proxy.url, api_key=api_key, retry=_policy(0)) as client, \
                pytest.raises(RiftConnectionError):
            client.wait(job.id, timeout=120, poll_interval=0.01, on_update=outage,
                        follow_events=False)
    finally:
        proxy.stop()
    assert proxy.cuts_done == 3  # one look, its retries spent: no outage allowed


def test_a_first_look_that_fails_is_raised_at_once(scripted: list[ScriptedServer]) -> None:
    # Nothing read yet (a wrong URL, a proxy with no service behind it): no outage to live
    # through, the error says so after the request's own retries.
    server = ScriptedServer([ScriptedReply(502, raw=b"bad gateway", content_type="text/plain")])
    scripted.append(server)
    with RiftClient(server.url, retry=_policy(60)) as client, pytest.raises(ServerError):
        client.wait("job_1", timeout=120, poll_interval=0.01)
    assert len(server.seen) == 3


def _materialization(status: str) -> dict[str, object]:
    return {"id": "mat_1", "job_id": "job_1", "alpha": 0.25, "evaluate": False, "status": status,
            "artifact": "tuned@0.25.safetensors", "artifact_url": None, "clean_accuracy": None,
            "robust_accuracy": None, "error": None, "created_at": "2026-01-01T00:00:00Z",
            "finished_at": None, "url": "/v1/jobs/job_1/materializations/mat_1"}


def test_wait_materialization_lives_through_an_outage(scripted: list[ScriptedServer]) -> None:
    gateway = ScriptedReply(502, raw=b"<html>502 Bad Gateway</html>", content_type="text/html")
    server = ScriptedServer([ScriptedReply(200, _materialization("running")),
                             *[gateway] * 4, ScriptedReply(200, _materialization("succeeded"))])
    scripted.append(server)
    seen: list[str] = []
    with RiftClient(server.url, retry=_policy(60)) as client:
        record = client.wait_materialization("job_1", "mat_1", timeout=120, poll_interval=0.01,
                                             on_update=lambda m: seen.append(m.status))
    assert record.status == "succeeded" and seen == ["running", "succeeded"]
    assert len(server.seen) == 6  # one look, one failed (3 tries), one more 502, the end


def test_stream_events_reopens_through_an_outage_with_nothing_lost_or_repeated(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None,
        checkpoint_file: Path) -> None:
    job = _queued_job(rift, checkpoint_file)
    proxy = CuttingProxy(queued_api.url, marker=job.id.encode(), cut_after=0, times=0)
    ids: list[int] = []
    kinds: list[str] = []
    try:
        with RiftClient(proxy.url, api_key=api_key, retry=_policy(60)) as client:
            for event in client.stream_events(job.id, timeout=120):
                ids.append(event.id)
                kinds.append(event.kind)
                if len(ids) == 1:  # the service goes down under the open stream
                    proxy.cuts_left = 4  # one reopening fails its 3 tries, the next gets in
                    proxy.drop_open_connections()
                    rift.cancel(job.id)
    finally:
        proxy.stop()
    # Before, the reopening that failed its retries ended the iteration: RiftConnectionError.
    assert proxy.cuts_done == 4
    assert kinds[0] == "job_created" and kinds[-1] == "job_cancelled"
    assert ids == sorted(set(ids))


def test_a_wait_keeps_the_retry_after_the_request_did_not_wait_out(
        scripted: list[ScriptedServer]) -> None:
    # A Retry-After past max_retry_after_s is not waited for by the request (it raises at
    # once); the wait then looks again only once that time has passed. Before, it looked again
    # after poll_interval, ignoring the rate limit.
    running = {**_JOB, "status": "running"}
    limited = ScriptedReply(429, {"error": {"code": "rate_limited", "message": "slow down",
                                            "field": None}}, {"Retry-After": "2"})
    server = ScriptedServer([ScriptedReply(200, running), limited,
                             ScriptedReply(200, {**_JOB, "status": "succeeded"})])
    scripted.append(server)
    policy = RetryPolicy(max_retries=2, max_retry_after_s=1, max_outage_s=60)
    with RiftClient(server.url, retry=policy) as client:
        done = client.wait("job_1", timeout=120, poll_interval=0.01, follow_events=False)
    assert done.status == "succeeded" and len(server.seen) == 3
    assert server.seen[2].at - server.seen[1].at >= 1.9
