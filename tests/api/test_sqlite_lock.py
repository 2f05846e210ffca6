"""The embedded database's write lock held by another process past the busy timeout
(``DATABASE_LOCK_TIMEOUT_SECONDS``): a request answers 503 ``database_busy`` naming the setting,
no longer ``database_unavailable`` "cannot be reached" after a fixed 30 s, and serves again once
the lock is gone. Every transaction of the service begins IMMEDIATE (``persistence/db.py``), so
reads wait for the lock too."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.helpers import Api, RecordingDispatcher
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
