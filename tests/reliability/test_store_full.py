"""A full disk under the local object store, for real: the API runs with ``STORE_ROOT`` on a small
tmpfs filled to the brim (mounted in a user namespace of its own, ``unshare -rm``; skipped where
the kernel refuses one). An upload is answered 503 naming ``STORE_ROOT``, and nothing is left
behind: no row, no partial object, no spooled file."""

from __future__ import annotations

import shlex
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from persistence.db import session_factory_from_settings
from persistence.models import Checkpoint
from tests.api.helpers import make_key
from tests.mount_namespace_api import api_on_own_disk, files_under, namespaces_allowed, seen_by
from tests.service_fixtures import settings_from_env

pytestmark = [pytest.mark.service]


def test_an_upload_to_a_full_local_store_is_503_and_leaves_nothing(
        postgres_url: str, tmp_path: Path, small_cnn_file: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    if not namespaces_allowed(mount):
        pytest.skip("no user and mount namespaces here (unshare -rm refused)")
    env = {"DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
           "STORE_ROOT": str(mount / "store"), "WORK_DIR": str(tmp_path / "work"),
           "LOG_FORMAT": "text"}
    disk = shlex.quote(str(mount))
    setup = (f"mount -t tmpfs -o size=64k tmpfs {disk} && mkdir -p {disk}/store && "
             f"{{ dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null; true; }}")
    sessions = session_factory_from_settings(settings_from_env(env))
    try:
        with api_on_own_disk(setup, env, tmp_path / "api.log") as (api, url):
            _, key = make_key(sessions, "tests")
            answer = httpx.post(f"{url}/v1/checkpoints",
                                headers={"Authorization": f"Bearer {key}"},
                                files={"file": ("m.safetensors", small_cnn_file.read_bytes())},
                                timeout=120)
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "store_unavailable"
            assert "No space left on device" in error["message"]
            assert "STORE_ROOT" in error["message"]
            with sessions() as session:
                count = select(func.count()).select_from(Checkpoint)
                assert session.execute(count).scalar_one() == 0
            # The store as the API's mount namespace sees it: nothing but the filler.
            store = seen_by(api, mount / "store")
            assert (store.parent / "fill").is_file() and store.is_dir()  # the full tmpfs, seen
            assert files_under(store) == []
            assert files_under(tmp_path / "work") == []
    finally:
        sessions.kw["bind"].dispose()
