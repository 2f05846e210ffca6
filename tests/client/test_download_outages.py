"""A download whose resume is answered 503 (or 429/502/504) past its retries, a store busy or
restarting: what arrived stays in ``<name>.part`` and the next call resumes it with a Range
request. Before, the error deleted the ``.part``, so the bytes already fetched (gigabytes of a
large file) were fetched again. A real HTTP server on loopback cuts the first answer half way,
then answers ranges with 503 until the test lets it serve them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rift_client import RetryPolicy, RiftClient, ServiceUnavailableError
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
                    error = {"error": {"code": "store_unavailable", "message": "busy",
                                       "field": None}}
                    self.send_body(503, json.dumps(error).encode(),
                               {"Content-Type": "application/json"})
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
