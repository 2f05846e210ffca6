"""Ctrl-C during ``riftctl jobs download``: exit 130, nothing under the artifact's own name,
what arrived kept in ``<name>.part``, and the next ``jobs download`` resumes it with a Range
request (before, the ``.part`` was deleted and the whole file came again)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.helpers import CLIENT_SOURCE, riftctl_command
from tests.quiet_http import LoopbackServer, QuietHandler

JOB = "job_1"
NAME = "tuned.safetensors"
BODY = bytes(range(256)) * 4096  # 1 MiB
HALF = len(BODY) // 2


class StallingStore:
    """Lists one artifact; its first GET sends half the file and then stalls (a slow link the
    user gives up on), later GETs honour ``Range``. Remembers each GET's Range header."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.release = threading.Event()
        store = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith(f"/v1/jobs/{JOB}/artifacts?") or \
                        self.path == f"/v1/jobs/{JOB}/artifacts":
                    listing = {"items": [{
                        "name": NAME, "size": len(BODY), "sha256": hashlib.sha256(BODY).hexdigest(),
                        "content_type": "application/octet-stream",
                        "created_at": "2026-11-26T00:00:00Z", "url": f"/v1/jobs/{JOB}/artifacts/{NAME}",
                        "some_field_of_a_newer_server": 1}]}
                    self.send_body(200, json.dumps(listing).encode(),
                               {"Content-Type": "application/json"})
                    return
                wanted = self.headers.get("Range")
                store.ranges.append(wanted)
                if wanted is None and len(store.ranges) == 1:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY[:HALF])
                    self.wfile.flush()
                    store.release.wait(60)  # stalls until the test ends
                    return
                start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
                status = 206 if wanted else 200
                extra = {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"} \
                    if wanted else {}
                self.send_body(status, BODY[start:], extra)

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def stop(self) -> None:
        self.release.set()
        self._server.stop()


@pytest.fixture
def store() -> Iterator[StallingStore]:
    server = StallingStore()
    yield server
    server.stop()


def _riftctl(store: StallingStore, home: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    env.update({"HOME": str(home), "RIFT_API_URL": store.url, "RIFT_API_KEY": "rift_test",
                "PYTHONFAULTHANDLER": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(CLIENT_SOURCE),
                                                            os.environ.get("PYTHONPATH")]))})
    return subprocess.Popen([*riftctl_command(), "jobs", "download", JOB, NAME, "--out",
                             f"{out}/"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as in a terminal: an ignored SIGINT is
    inherited across exec, and Python then installs no KeyboardInterrupt handler. A CI run
    caught riftctl still in recv() 30 s after SIGINT (faulthandler's stack): the test process
    it was started from ignored SIGINT at that moment."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_part_and_the_next_download_resumes(store: StallingStore,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "weights"
    partial = out / f"{NAME}.part"
    process = _riftctl(store, tmp_path, out)
    try:
        deadline = time.monotonic() + 60
        # The file is written through a buffer: part of what arrived may not show yet.
        while not (partial.exists() and partial.stat().st_size >= HALF // 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the first half never arrived"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once in a full CI run (not reproduced in 80 tries): SIGABRT makes the
            # faulthandler print every thread's stack, so the failure says where it hung.
            process.send_signal(signal.SIGABRT)
            _, stderr = process.communicate(timeout=30)
            pytest.fail("riftctl did not exit within 30 s of SIGINT; its stacks:\n"
                        + stderr.decode(errors="replace")[-6000:])
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()
    assert not (out / NAME).exists()
    kept = partial.read_bytes()
    assert len(kept) >= HALF // 2 and BODY.startswith(kept)

    again = _riftctl(store, tmp_path, out)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr.decode()
    assert (out / NAME).read_bytes() == BODY and not partial.exists()
    assert store.ranges == [None, f"bytes={len(kept)}-"]
