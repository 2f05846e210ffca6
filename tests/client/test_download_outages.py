"""A download whose resume is answered 503 (or 429/502/504) past its retries, a store busy or
restarting, or 500 (an object store's InternalError behind a presigned redirect): what arrived
stays in ``<name>.part`` and the next call resumes it with a Range request. Before, the error
deleted the ``.part``, so the bytes already fetched (gigabytes of a large file) were fetched
again. A real HTTP server on loopback cuts the first answer half way, then answers ranges with
503 (or its ``refusal``) until the test lets it serve them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rift_client import NotFoundError, RetryPolicy, RiftAPIError, RiftClient, ServiceUnavailableError
from tests.quiet_http import LoopbackServer, QuietHandler

JOB = "job_1"
NAME = "tuned.safetensors"
BODY = bytes(range(256)) * 1024  # 256 KiB
HALF = len(BODY) // 2


class BusyStore:
    """Lists one artifact; its first GET sends half the file and hangs up; a GET with a Range
    is answered 503 while ``busy`` is set, else 206 with the rest. Remembers each Range."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.busy = True
        #: The answer to a Range while busy: status, body, content type.
        self.refusal = (503, json.dumps({"error": {"code": "store_unavailable",
                                                   "message": "busy", "field": None}}).encode(),
                        "application/json")
        store = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == f"/v1/jobs/{JOB}/artifacts":
                    listing = {"items": [{
                        "name": NAME, "size": len(BODY),
                        "sha256": hashlib.sha256(BODY).hexdigest(),
                        "content_type": "application/octet-stream",
                        "created_at": "2026-11-26T00:00:00Z",
                        "url": f"/v1/jobs/{JOB}/artifacts/{NAME}"}]}
                    self.send_body(200, json.dumps(listing).encode(),
                               {"Content-Type": "application/json"})
                    return
                wanted = self.headers.get("Range")
                store.ranges.append(wanted)
                if wanted is None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY[:HALF])
                    self.close_connection = True
                    return
                if store.busy:
                    status, body, content_type = store.refusal
                    self.send_body(status, body, {"Content-Type": content_type})
                    return
                start = int(wanted.split("=")[1].rstrip("-"))
                self.send_body(206, BODY[start:],
                           {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"})

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def store() -> Iterator[BusyStore]:
    server = BusyStore()
    yield server
    server.stop()


def test_a_resume_refused_by_a_busy_store_keeps_the_part_for_the_next_call(
        store: BusyStore, tmp_path: Path) -> None:
    target = tmp_path / NAME
    partial = tmp_path / f"{NAME}.part"
    policy = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
    with RiftClient(store.url, retry=policy) as client:
        with pytest.raises(ServiceUnavailableError):
            client.download(JOB, NAME, target)
        assert not target.exists()
        assert partial.read_bytes() == BODY[:HALF]  # before: deleted
        assert store.ranges == [None] + [f"bytes={HALF}-"] * 3

        store.busy = False
        assert client.download(JOB, NAME, target) == target
    assert target.read_bytes() == BODY and not partial.exists()
    assert store.ranges[4:] == [f"bytes={HALF}-"]  # resumed, not fetched again whole


#: What S3 (or MinIO) answers a GET it failed on; the client follows presigned redirects to it.
S3_INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                     b"<Message>We encountered an internal error. Please try again.</Message>"
                     b"</Error>")


def test_a_resume_answered_500_by_the_object_store_keeps_the_part(store: BusyStore,
                                                                 tmp_path: Path) -> None:
    # A 500 is not retried (it may not pass), but it says nothing against the bytes received:
    # before, it deleted the .part like a checksum mismatch, and the next call fetched it all.
    store.refusal = (500, S3_INTERNAL_ERROR, "application/xml")
    target = tmp_path / NAME
    partial = tmp_path / f"{NAME}.part"
    with RiftClient(store.url, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(RiftAPIError) as failed:
            client.download(JOB, NAME, target)
        assert failed.value.status_code == 500 and failed.value.code == "http_500"
        assert partial.read_bytes() == BODY[:HALF]  # before: deleted
        store.busy = False
        assert client.download(JOB, NAME, target) == target
    assert target.read_bytes() == BODY and not partial.exists()
    assert store.ranges == [None, f"bytes={HALF}-", f"bytes={HALF}-"]


def test_a_resume_answered_404_leaves_nothing(store: BusyStore, tmp_path: Path) -> None:
    # The artifact is gone (its job deleted meanwhile): nothing to resume later.
    store.refusal = (404, json.dumps({"error": {"code": "artifact_not_found", "message": "gone",
                                                "field": "name"}}).encode(), "application/json")
    with RiftClient(store.url, retry=RetryPolicy(max_retries=0)) as client, \
            pytest.raises(NotFoundError):
        client.download(JOB, NAME, tmp_path / NAME)
    assert list(tmp_path.iterdir()) == []
