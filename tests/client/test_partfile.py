"""Two downloads to one path at once (the ranks of a distributed job on one machine each
fetching the tuned weights, two shells): the second finds the first's ``.part`` held and
raises ``DownloadInProgressError`` (an ``OSError`` naming the path) without touching it; the
first completes with the right bytes.

Before, both appended to the same ``.part``; each hashed only its own bytes, so the first to
finish renamed a file holding both (here 1.5 times the artifact) to the target and returned
success, and the other failed with ``FileNotFoundError``. A real HTTP server on loopback holds
the first download half way until the test lets it go on."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rift_client import DownloadInProgressError, RetryPolicy, RiftClient
from tests.quiet_http import LoopbackServer, QuietHandler

JOB = "job_1"
NAME = "tuned.safetensors"
BODY = bytes(range(256)) * 1024  # 256 KiB
HALF = len(BODY) // 2


class HeldStore:
    """Lists one artifact; the first GET of its bytes sends half, then waits for ``go_on``
    before the rest; every later GET is answered whole at once."""

    def __init__(self) -> None:
        self.half_sent = threading.Event()
        self.go_on = threading.Event()
        self.gets = 0
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
                store.gets += 1
                if store.gets > 1:
                    self.send_body(200, BODY, {})
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY[:HALF])
                self.wfile.flush()
                store.half_sent.set()
                store.go_on.wait(timeout=60)
                self.wfile.write(BODY[HALF:])

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def stop(self) -> None:
        self.go_on.set()
        self._server.stop()


@pytest.fixture
def store() -> Iterator[HeldStore]:
    server = HeldStore()
    yield server
    server.stop()


def test_a_second_download_to_the_same_path_leaves_the_first_alone(store: HeldStore,
                                                                   tmp_path: Path) -> None:
    target = tmp_path / NAME
    first: list[object] = []

    def download() -> None:
        with RiftClient(store.url, retry=RetryPolicy(max_retries=0), timeout=30) as rift:
            try:
                first.append(rift.download(JOB, NAME, tmp_path))
            except Exception as exc:  # handed to the test below
                first.append(exc)

    thread = threading.Thread(target=download)
    thread.start()
    try:
        assert store.half_sent.wait(timeout=30)
        with RiftClient(store.url, retry=RetryPolicy(max_retries=0), timeout=30) as rift, \
                pytest.raises(DownloadInProgressError) as raised:
            rift.download(JOB, NAME, target)
        assert isinstance(raised.value, OSError) and raised.value.filename == str(target)
        assert "another download to this path is in progress" in str(raised.value)
    finally:
        store.go_on.set()
        thread.join(timeout=30)
    assert first == [target]
    assert target.read_bytes() == BODY
    assert sorted(path.name for path in tmp_path.iterdir()) == [NAME]  # no .part left
