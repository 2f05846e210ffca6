"""Uploads of what is not a regular file: standard input and pipes.

Before, the client took a pipe's size from ``stat`` (0) and sent an empty body, which the
service refused as an empty file; ``riftctl checkpoints upload -`` was "no such file". Now the
client refuses a pipe before sending anything (``RiftUsageError`` naming the argument) and
``riftctl`` copies standard input or a pipe into a temporary file, then uploads that."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from rift_client import RiftClient, RiftUsageError
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import CLIENT_SOURCE, riftctl_command

pytestmark = pytest.mark.service


@pytest.fixture
def checkpoint_bytes(tmp_path: Path) -> bytes:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path / "made.safetensors"
    save_safetensors(path, small_cnn_state())
    return path.read_bytes()


def _riftctl(args: list[str], api: RunningApi, api_key: str | None, home: Path,
             stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    env.update({"HOME": str(home), "RIFT_API_URL": api.url, "RIFT_API_KEY": api_key or "",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(CLIENT_SOURCE),
                                                            os.environ.get("PYTHONPATH")]))})
    return subprocess.run([*riftctl_command(), *args], input=stdin, env=env, capture_output=True,
                          timeout=300, check=False)


def test_riftctl_uploads_standard_input(queued_api: RunningApi, api_key: str | None,
                                        tmp_path: Path, checkpoint_bytes: bytes) -> None:
    done = _riftctl(["--output", "json", "checkpoints", "upload", "-", "--filename",
                     "piped.safetensors"], queued_api, api_key, tmp_path, checkpoint_bytes)
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert record["size"] == len(checkpoint_bytes)
    assert record["filename"] == "piped.safetensors" and record["format"] == "safetensors"
    # No temporary copy is left behind.
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("riftctl-*/upload"))


def test_riftctl_uploads_from_a_named_pipe(queued_api: RunningApi, api_key: str | None,
                                           tmp_path: Path, checkpoint_bytes: bytes) -> None:
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(checkpoint_bytes,), daemon=True)
    writer.start()
    done = _riftctl(["--output", "json", "checkpoints", "upload", str(fifo)], queued_api,
                    api_key, tmp_path, b"")
    writer.join(timeout=10)
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["size"] == len(checkpoint_bytes) and record["filename"] == "model.fifo"


def _feed(fifo: Path, data: bytes) -> None:
    """Write ``data`` into ``fifo`` once a reader opens it (a client that read it)."""
    with contextlib.suppress(OSError):
        fifo.write_bytes(data)


def test_client_refuses_a_pipe_before_sending(queued_api: RunningApi, api_key: str | None,
                                              tmp_path: Path, checkpoint_bytes: bytes) -> None:
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    # A writer, so that a client that opens the pipe reads it (and sent an empty body) instead
    # of waiting for one forever.
    for _ in range(2):
        threading.Thread(target=_feed, args=(fifo, checkpoint_bytes), daemon=True).start()
    try:
        with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as rift:
            with pytest.raises(RiftUsageError, match=r"^path .*pipe"):
                rift.upload_checkpoint(fifo)
            with pytest.raises(RiftUsageError, match=r"^checkpoint_file .*pipe"):
                rift.create_job({"config": {}}, checkpoint_file=fifo)
            assert list(rift.list_checkpoints()) == []
    finally:
        for _ in range(2):  # release the writers still waiting for a reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
