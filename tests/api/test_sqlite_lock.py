"""The embedded database's write lock held by another process past the busy timeout
(``DATABASE_LOCK_TIMEOUT_SECONDS``): a request answers 503 ``database_busy`` naming the setting,
no longer ``database_unavailable`` "cannot be reached" after a fixed 30 s, and serves again once
the lock is gone. Every transaction of the service begins IMMEDIATE (``persistence/db.py``), so
reads wait for the lock too; an open event stream whose read meets it ends cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.helpers import Api, RecordingDispatcher, digits_config, upload_checkpoint
from tests.service_fixtures import settings_from_env

pytestmark = [pytest.mark.service]

HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@pytest.fixture
def lock_holder(sqlite_url: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """``hold()``: another process that holds the database's write lock until stopped."""
    started: list[subprocess.Popen[str]] = []

    def hold() -> subprocess.Popen[str]:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, sqlite_url[len("sqlite:///"):]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        return holder

    yield hold
    for holder in started:
        holder.kill()
        holder.wait(10)


def test_a_lock_held_past_the_timeout_is_503_database_busy_naming_the_setting(
        sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api],
        lock_holder: Callable[[], subprocess.Popen[str]]) -> None:
    settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "DATABASE_LOCK_TIMEOUT_SECONDS": "0.5"})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    assert api.client.get("/v1/jobs").status_code == 200

    holder = lock_holder()
    started = time.monotonic()
    answer = api.client.get("/v1/jobs")
    waited = time.monotonic() - started

    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "database_busy"
    assert answer.json()["error"]["field"] == "DATABASE_LOCK_TIMEOUT_SECONDS"
    assert answer.headers["Retry-After"] == "5"
    assert 0.4 < waited < 10, waited  # the setting's wait, not SQLite's fixed 30 s

    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)
    assert api.client.get("/v1/jobs").status_code == 200


@pytest.mark.slow
def test_an_open_event_stream_whose_read_meets_the_lock_ends_cleanly(
        sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api],
        lock_holder: Callable[[], subprocess.Popen[str]], small_cnn_file: Path) -> None:
    """Its headers are sent, so no 503 can be: it closed mid-chunk (the client read "incomplete
    chunked read", the log a traceback); now it ends without an ``end`` event, and the client
    reconnects. The re-read comes at the recheck after a keep-alive (15 s)."""
    settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "DATABASE_LOCK_TIMEOUT_SECONDS": "0.5", "EVENT_STREAM_RECHECK_SECONDS": "0.1"})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    checkpoint = upload_checkpoint(api, small_cnn_file)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": digits_config()})
    assert created.status_code == 201, created.text
    lines = []
    with api.client.stream("GET", f"/v1/jobs/{created.json()['id']}/events",
                           headers={"Accept": "text/event-stream"}, timeout=60) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            lines.append(line)
            if line.startswith("id: ") and len(lines) < 10:
                lock_holder()  # held from the first event on: the next read meets it
    assert not any(line.startswith("event: end") for line in lines), lines
    assert [line for line in lines if line][-1] == (
        ": the database cannot be read now; reconnect later"), lines
