"""A full disk under the embedded database, for real: the API runs with its SQLite file on a small
tmpfs filled to the brim (mounted in a user namespace of its own, ``unshare -rm``, as
``test_store_full.py`` does for the store; skipped where the kernel refuses one). A write answers
503 ``database_full`` naming ``DATABASE_URL`` (was ``database_unavailable``, "the database
cannot be reached"), and the upload leaves no object behind; reads still answer."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from persistence.db import session_factory_from_settings
from tests.api.helpers import make_key
from tests.ports import PortTaken, on_a_free_port, says_port_taken
from tests.reliability.test_store_full import _files_under, _namespaces_allowed
from tests.service_fixtures import PROJECT_ROOT, settings_from_env

pytestmark = [pytest.mark.service]


def _fill(path: Path) -> None:
    block = bytes(4096)
    try:
        with open(path, "wb", buffering=0) as out:
            while True:
                out.write(block)
    except OSError:  # ENOSPC: the disk is full
        pass


def test_a_write_to_a_full_database_disk_is_503_database_full(
        sqlite_url: str, tmp_path: Path, small_cnn_file: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    if not _namespaces_allowed(mount):
        pytest.skip("no user and mount namespaces here (unshare -rm refused)")
    # The key goes in before the copy: the full disk is seen only inside the API's namespace.
    sessions = session_factory_from_settings(settings_from_env({"DATABASE_URL": sqlite_url}))
    _, key = make_key(sessions, "tests")
    sessions.kw["bind"].dispose()  # the last connection closed: the WAL is in the file
    source = Path(sqlite_url[len("sqlite:///"):])
    disk = shlex.quote(str(mount))
    env = {"DATABASE_URL": f"sqlite:///{mount / 'rift.db'}", "BROKER_URL": "memory://",
           "STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "store"),
           "WORK_DIR": str(tmp_path / "work"), "LOG_FORMAT": "text"}
    log = tmp_path / "api.log"
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], str]:
        script = (f"mount -t tmpfs -o size=2m tmpfs {disk} && "
                  f"cp {shlex.quote(str(source))} {disk}/rift.db && "
                  f"exec {shlex.quote(sys.executable)} -m uvicorn --factory api.main:create_app "
                  f"--host 127.0.0.1 --port {port}")
        with open(log, "wb") as out:
            api = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], cwd=PROJECT_ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        started.append(api)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if api.poll() is not None:
                if says_port_taken(log.read_text(errors="replace")):
                    raise PortTaken(f"the API: port {port} is taken")
                raise AssertionError(log.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return api, url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    try:
        api, url = on_a_free_port(start)
        headers = {"Authorization": f"Bearer {key}"}
        # The disk fills while the service runs (its WAL and shared-memory files exist): filled
        # through the API's own view of the mount, which only its namespace has.
        assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=30).status_code == 200
        _fill(Path(f"/proc/{api.pid}/root") / mount.relative_to("/") / "fill")
        answer = httpx.post(f"{url}/v1/checkpoints", headers=headers,
                            files={"file": ("m.safetensors", small_cnn_file.read_bytes())},
                            timeout=120)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "database_full", error
        assert error["field"] == "DATABASE_URL" and "is full" in error["message"]
        assert answer.headers["Retry-After"] == "5"
        assert _files_under(tmp_path / "store") == []  # the stored object went with the row
        assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=30).status_code == 200
    finally:
        for api in started:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=30)
