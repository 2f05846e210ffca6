"""A full disk under the embedded database, for real: the API runs with its SQLite file on a small
tmpfs filled to the brim (mounted in a user namespace of its own, ``unshare -rm``, as
``test_store_full.py`` does for the store; skipped where the kernel refuses one). A write answers
503 ``database_full`` naming ``DATABASE_URL`` (was ``database_unavailable``, "the database
cannot be reached"), and the upload leaves no object behind; reads still answer."""

from __future__ import annotations

import shlex
from pathlib import Path

import httpx
import pytest

from persistence.db import session_factory_from_settings
from tests.api.helpers import make_key
from tests.mount_namespace_api import api_on_own_disk, files_under, namespaces_allowed, seen_by
from tests.service_fixtures import settings_from_env

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
    if not namespaces_allowed(mount):
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
    setup = (f"mount -t tmpfs -o size=2m tmpfs {disk} && "
             f"cp {shlex.quote(str(source))} {disk}/rift.db")
    with api_on_own_disk(setup, env, tmp_path / "api.log") as (api, url):
        headers = {"Authorization": f"Bearer {key}"}
        # The disk fills while the service runs (its WAL and shared-memory files exist): filled
        # through the API's own view of the mount, which only its namespace has.
        assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=30).status_code == 200
        _fill(seen_by(api, mount / "fill"))
        answer = httpx.post(f"{url}/v1/checkpoints", headers=headers,
                            files={"file": ("m.safetensors", small_cnn_file.read_bytes())},
                            timeout=120)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "database_full", error
        assert error["field"] == "DATABASE_URL" and "is full" in error["message"]
        assert answer.headers["Retry-After"] == "5"
        assert files_under(tmp_path / "store") == []  # the stored object went with the row
        assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=30).status_code == 200
