"""A full disk under the local object store, for real: the API runs with ``STORE_ROOT`` on a small
tmpfs filled to the brim (mounted in a user namespace of its own, ``unshare -rm``; skipped where
the kernel refuses one). An upload is answered 503 naming ``STORE_ROOT``, and nothing is left
behind: no row, no partial object, no spooled file."""

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
from sqlalchemy import func, select

from persistence.db import session_factory_from_settings
from persistence.models import Checkpoint
from tests.api.helpers import make_key
from tests.ports import PortTaken, on_a_free_port, says_port_taken
from tests.service_fixtures import PROJECT_ROOT, settings_from_env

pytestmark = [pytest.mark.service]


def _namespaces_allowed(folder: Path) -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_an_upload_to_a_full_local_store_is_503_and_leaves_nothing(
        postgres_url: str, tmp_path: Path, small_cnn_file: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    if not _namespaces_allowed(mount):
        pytest.skip("no user and mount namespaces here (unshare -rm refused)")
    env = {"DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
           "STORE_ROOT": str(mount / "store"), "WORK_DIR": str(tmp_path / "work"),
           "LOG_FORMAT": "text"}
    disk = shlex.quote(str(mount))
    log = tmp_path / "api.log"
    settings = settings_from_env(env)
    sessions = session_factory_from_settings(settings)
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], str]:
        script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && mkdir -p {disk}/store && "
                  f"{{ dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null; true; }} && "
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
        api, url = on_a_free_port(start)  # a fresh port if another process took the first
        _, key = make_key(sessions, "tests")
        answer = httpx.post(f"{url}/v1/checkpoints", headers={"Authorization": f"Bearer {key}"},
                            files={"file": ("m.safetensors", small_cnn_file.read_bytes())},
                            timeout=120)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "store_unavailable"
        assert "No space left on device" in error["message"] and "STORE_ROOT" in error["message"]
        with sessions() as session:
            assert session.execute(select(func.count()).select_from(Checkpoint)).scalar_one() == 0
        # The store as the API's mount namespace sees it: nothing but the filler.
        store = Path(f"/proc/{api.pid}/root") / mount.relative_to("/") / "store"
        assert (store.parent / "fill").is_file() and store.is_dir()  # the full tmpfs, seen
        assert _files_under(store) == []
        assert _files_under(tmp_path / "work") == []
    finally:
        sessions.kw["bind"].dispose()
        for api in started:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=30)
