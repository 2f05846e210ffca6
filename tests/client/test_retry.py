"""Retries against a real HTTP server on loopback that answers 429 or 503 first: the client waits
what Retry-After says, sends the same request again (a job creation with the same
Idempotency-Key), gives up after its budget with the typed error, and retries connection failures
of idempotent calls only when it is safe."""

from __future__ import annotations

import hashlib
import socket
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from rift_client import (
    ChecksumMismatchError,
    ConflictError,
    RateLimitError,
    RetryPolicy,
    RiftClient,
    RiftConnectionError,
    ServerError,
    ServiceUnavailableError,
)
from rift_client.retry import retry_after_seconds
from tests.client.helpers import ScriptedReply, ScriptedServer

JOB = {
    "id": "job_1", "status": "queued", "stage": None, "progress": 0.0, "progress_message": None,
    "queue_position": 1, "cancel_requested": False, "checkpoint_id": "ck_1", "dataset_id": None,
    "labels": {}, "device": None, "attempts": 0, "selected_module": None, "chosen_alpha": None,
    "metrics": None, "error": None, "stages": [], "created_at": "2026-01-01T00:00:00Z",
    "started_at": None, "finished_at": None, "updated_at": "2026-01-01T00:00:00Z", "config": {},
    "links": {"self": "/v1/jobs/job_1"},
}
RATE_LIMITED = ScriptedReply(429, {"error": {"code": "rate_limited", "message": "slow down",
                                             "field": None}}, {"Retry-After": "1"})


def _serve(scripted: list[ScriptedServer], *replies: ScriptedReply) -> ScriptedServer:
    server = ScriptedServer(replies)
    scripted.append(server)
    return server


def test_429_waits_for_retry_after_then_succeeds(scripted: list[ScriptedServer]) -> None:
    server = _serve(scripted, RATE_LIMITED, ScriptedReply(200, JOB))
    with RiftClient(server.url, api_key="rift_test") as client:
        job = client.get_job("job_1")
    assert job.id == "job_1" and len(server.seen) == 2
    waited = server.seen[1].at - server.seen[0].at
    # At least the second asked for; the upper bound is loose (a loaded machine adds seconds)
    # and still far below a Retry-After misread as minutes or an HTTP date.
    assert 0.95 <= waited < 20.0, waited
    assert all(r.headers["authorization"] == "Bearer rift_test" for r in server.seen)


def test_503_without_retry_after_backs_off(scripted: list[ScriptedServer]) -> None:
    down = ScriptedReply(503, {"error": {"code": "database_unavailable", "message": "down",
                                         "field": None}})
    server = _serve(scripted, down, down, ScriptedReply(200, JOB))
    policy = RetryPolicy(max_retries=3, backoff_s=0.2, max_backoff_s=1.0)
    with RiftClient(server.url, retry=policy) as client:
        assert client.get_job("job_1").status == "queued"
    gaps = [b.at - a.at for a, b in zip(server.seen, server.seen[1:], strict=False)]
    # Jittered exponential backoff: the first delay in [0.1, 0.2] s, the second in [0.2, 0.4] s.
    assert len(gaps) == 2 and 0.09 <= gaps[0] <= 0.6 and 0.19 <= gaps[1] <= 0.9, gaps


def test_job_creation_is_retried_with_the_same_idempotency_key(
        scripted: list[ScriptedServer]) -> None:
    server = _serve(scripted, ScriptedReply(503, None, {"Retry-After": "0"}),
                    ScriptedReply(201, JOB))
    with RiftClient(server.url) as client:
        job = client.create_job({"config": {"seed": 1}}, checkpoint_id="ck_1")
    assert job.id == "job_1"
    keys = [r.headers["idempotency-key"] for r in server.seen]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("rift-client-")
    assert [r.method for r in server.seen] == ["POST", "POST"]


def test_the_error_is_raised_once_the_retries_are_spent(scripted: list[ScriptedServer]) -> None:
    server = _serve(scripted, ScriptedReply(429, RATE_LIMITED.body, {"Retry-After": "0"}))
    with RiftClient(server.url, retry=RetryPolicy(max_retries=2)) as client, \
            pytest.raises(RateLimitError) as error:
        client.get_job("job_1")
    assert len(server.seen) == 3
    assert error.value.code == "rate_limited" and error.value.message == "slow down"
    assert error.value.headers["retry-after"] == "0"


def test_a_retry_after_beyond_the_limit_is_not_waited_for(scripted: list[ScriptedServer]) -> None:
    server = _serve(scripted, ScriptedReply(503, None, {"Retry-After": "3600"}))
    start = time.monotonic()
    with RiftClient(server.url, retry=RetryPolicy(max_retry_after_s=60)) as client, \
            pytest.raises(ServiceUnavailableError) as error:
        client.get_job("job_1")
    # Not waited for: the hour asked, or the 60 s cap, would outlast this loose bound.
    assert time.monotonic() - start < 30 and len(server.seen) == 1
    # A body that is not the API's envelope still gives a code and the status.
    assert error.value.code == "http_503" and error.value.status_code == 503


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    policy = RetryPolicy(max_retries=2, backoff_s=0.1, max_backoff_s=0.1)
    start = time.monotonic()
    with RiftClient(f"http://127.0.0.1:{port}", retry=policy) as client, \
            pytest.raises(RiftConnectionError):
        client.cancel("job_1")  # not idempotent, but a refused connection sent nothing
    assert time.monotonic() - start >= 0.1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_a_connection_lost_after_sending_is_retried_only_when_idempotent() -> None:
    # Every call of the client is idempotent now (cancel too, since it was found not retried):
    # the one left is the core's request sent as not idempotent.
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[bytes] = []
    stop = threading.Event()

    def hang_up() -> None:
        # Read each request, then close without answering.
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                accepted.append(connection.recv(65536))

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    policy = RetryPolicy(max_retries=2, backoff_s=0.05, max_backoff_s=0.05)
    try:
        with RiftClient(url, retry=policy) as client:
            with pytest.raises(RiftConnectionError):
                client._run(client._core.request("POST", "/v1/jobs/job_1/cancel",
                                                 idempotent=False))
            assert len(accepted) == 1  # the service may have acted: not sent again
            with pytest.raises(RiftConnectionError):
                client.get_job("job_1")
            assert len(accepted) == 4  # a read is safe to repeat: 1 + 2 retries
            with pytest.raises(RiftConnectionError):
                client.cancel("job_1")
            assert len(accepted) == 7  # asking twice cancels once: 1 + 2 retries (was 1)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_an_upload_whose_stored_hash_differs_is_refused(scripted: list[ScriptedServer],
                                                        tmp_path: Path) -> None:
    # A server (or a proxy on the way) that stored other bytes than those sent.
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    record = {"id": "ck_1", "filename": path.name, "size": 7000, "sha256": "0" * 64,
              "format": "safetensors", "num_tensors": 1, "num_parameters": 1,
              "created_at": "2026-01-01T00:00:00Z"}
    server = _serve(scripted, ScriptedReply(201, record))
    with RiftClient(server.url) as client, pytest.raises(ChecksumMismatchError) as mismatch:
        client.upload_checkpoint(path)
    assert mismatch.value.expected == hashlib.sha256(path.read_bytes()).hexdigest()
    assert mismatch.value.actual == "0" * 64
    seen = server.seen[0]
    assert seen.path == "/v1/checkpoints?filename=model.safetensors"
    assert seen.headers["content-type"] == "application/octet-stream"
    assert seen.headers["content-length"] == "7000"


def test_an_upload_is_retried_whole_under_the_same_idempotency_key(
        scripted: list[ScriptedServer], tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    record = {"id": "ck_1", "filename": path.name, "size": 7000,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": "safetensors",
              "num_tensors": 1, "num_parameters": 1, "created_at": "2026-01-01T00:00:00Z"}
    server = _serve(scripted, ScriptedReply(503, None, {"Retry-After": "0"}),
                    ScriptedReply(201, record))
    with RiftClient(server.url) as client:
        assert client.upload_checkpoint(path, idempotency_key="ck-upload-7").id == "ck_1"
    assert [r.headers["idempotency-key"] for r in server.seen] == ["ck-upload-7"] * 2
    assert [r.headers["content-length"] for r in server.seen] == ["7000"] * 2


def _checkpoint_file(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    record = {"id": "ck_1", "filename": path.name, "size": 7000,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": "safetensors",
              "num_tensors": 1, "num_parameters": 1, "created_at": "2026-01-01T00:00:00Z"}
    return path, record


def test_an_upload_waits_for_its_check_past_the_read_timeout(
        scripted: list[ScriptedServer], tmp_path: Path) -> None:
    # The service answers an upload only once it has checked the file. That wait used to be
    # bounded by the 60 s read timeout of every request: a slow check meant the file was sent
    # again, up to 4 times, then RiftConnectionError.
    path, record = _checkpoint_file(tmp_path)
    server = _serve(scripted, ScriptedReply(201, record, delay_s=1.0))
    no_retry = RetryPolicy(max_retries=0)
    # 30 s for the upload: the 1 s check plus whatever a loaded machine adds (5 s was tight).
    with RiftClient(server.url, timeout=0.3, upload_timeout=30.0, retry=no_retry) as client:
        assert client.upload_checkpoint(path).id == "ck_1"
        assert len(server.seen) == 1
        # Other requests keep the short read timeout.
        with pytest.raises(RiftConnectionError, match="ReadTimeout"):
            client.get_checkpoint("ck_1")
    assert RiftClient(server.url).upload_timeout == 900.0


def test_an_upload_past_its_timeout_is_sent_again_under_the_same_key(
        scripted: list[ScriptedServer], tmp_path: Path) -> None:
    path, record = _checkpoint_file(tmp_path)
    server = _serve(scripted, ScriptedReply(201, record, delay_s=1.0))
    policy = RetryPolicy(max_retries=2, backoff_s=0.05, max_backoff_s=0.05)
    with RiftClient(server.url, timeout=5.0, upload_timeout=0.3, retry=policy) as client, \
            pytest.raises(RiftConnectionError, match="ReadTimeout"):
        client.upload_checkpoint(path)
    keys = [r.headers["idempotency-key"] for r in server.seen]
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0].startswith("rift-client-")
    assert [len(r.body) for r in server.seen] == [7000] * 3  # the whole file each time


BAD_GATEWAY = ScriptedReply(502, raw=b"<html><body>502 Bad Gateway</body></html>",
                            content_type="text/html")
GATEWAY_TIMEOUT = ScriptedReply(504, raw=b"<html><body>504 Gateway Time-out</body></html>",
                                content_type="text/html")


def test_a_proxys_502_and_504_are_retried_for_reads(scripted: list[ScriptedServer]) -> None:
    # What nginx or a load balancer answers while the API behind it restarts. Before, the first
    # 502 of a deploy failed the read (ServerError, exit 3 for riftctl).
    server = _serve(scripted, BAD_GATEWAY, GATEWAY_TIMEOUT, ScriptedReply(200, JOB))
    policy = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
    with RiftClient(server.url, retry=policy) as client:
        assert client.get_job("job_1").id == "job_1"
    assert [r.method for r in server.seen] == ["GET"] * 3


def test_a_proxys_502_is_retried_for_a_keyed_job_creation_and_a_cancel(
        scripted: list[ScriptedServer]) -> None:
    # The service may have acted before the proxy gave up: a POST under an Idempotency-Key is
    # safe to send again (the service returns the job made the first time), and so is a cancel
    # (asking again only asks again); a cancel was not retried.
    server = _serve(scripted, BAD_GATEWAY, ScriptedReply(201, JOB))
    policy = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
    with RiftClient(server.url, retry=policy) as client:
        assert client.create_job({"config": {"seed": 1}}, checkpoint_id="ck_1").id == "job_1"
        keys = [r.headers["idempotency-key"] for r in server.seen]
        assert len(keys) == 2 and keys[0] == keys[1]
        server.seen.clear()
        server.replies = [GATEWAY_TIMEOUT, ScriptedReply(200, JOB)]
        assert client.cancel("job_1").id == "job_1"
        assert [r.path for r in server.seen] == ["/v1/jobs/job_1/cancel"] * 2
        # The proxy gave up after the service cancelled the queued job: the retry is answered
        # 409 job_finished (cancelled), which is this cancel's success: the job is returned.
        server.seen.clear()
        finished = ScriptedReply(409, {"error": {
            "code": "job_finished", "field": "job_id", "status": "cancelled",
            "message": "job job_1 has already finished with status 'cancelled'"}})
        server.replies = [BAD_GATEWAY, finished, ScriptedReply(200, {**JOB,
                                                                     "status": "cancelled"})]
        assert client.cancel("job_1").status == "cancelled"
        assert [(r.method, r.path) for r in server.seen] == [
            ("POST", "/v1/jobs/job_1/cancel"), ("POST", "/v1/jobs/job_1/cancel"),
            ("GET", "/v1/jobs/job_1")]
        server.seen.clear()
        server.replies = [finished]  # no lost attempt: the 409 is the caller's
        with pytest.raises(ConflictError):
            client.cancel("job_1")
        server.seen.clear()
        server.replies = [GATEWAY_TIMEOUT]
        with pytest.raises(ServerError) as refused:
            client.cancel("job_1")
    assert len(server.seen) == 3  # 1 + 2 retries, then the last 504 is raised
    assert refused.value.status_code == 504 and refused.value.code == "http_504"
