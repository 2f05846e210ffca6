"""Optimistic concurrency on writes (:mod:`api.write_conditions`): ``If-Match`` on every PATCH
and DELETE is compared with the ETag the resource's GET answers, and two writes carrying the
same tag cannot both pass, on SQLite and on Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select, text

from persistence.models import Project
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    make_key,
    upload_checkpoint,
)
from tests.api.test_datasets import npz_bytes

pytestmark = pytest.mark.service

STALE = '"0123456789abcdef0123456789abcdef"'


def _refused(response: httpx.Response, current: str, header: str = "If-Match") -> None:
    """A 412 that names the header and the resource's current ETag."""
    assert response.status_code == 412, response.text
    error = error_of(response)
    assert error["field"] == header and error["code"] == "precondition_failed"
    assert error["etag"] == current and current in error["message"]
    assert response.headers["etag"] == current


def _delete_checked(client: httpx.Client, path: str, expected: int = 204) -> None:
    """DELETE ``path``: refused with a stale tag (the resource stays), done with its own."""
    current = client.get(path).headers["etag"]
    _refused(client.delete(path, headers={"If-Match": STALE}), current)
    assert client.get(path).status_code == 200
    done = client.delete(path, headers={"If-Match": current})
    assert done.status_code == expected, (path, done.text)
    assert client.get(path).status_code == 404


@pytest.fixture
def allowing_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    settings = api_settings.model_copy(update={"webhook_allow_list": "127.0.0.1"})
    return start_api(settings, dispatcher=RecordingDispatcher())


def test_if_match_on_the_project_routes(api: Api) -> None:
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    make_key(api.sessions, "team")
    path = "/v1/admin/projects/team"
    with api.client_for(admin_key) as admin:
        read = admin.get(path)
        assert read.status_code == 200 and read.json()["name"] == "team"
        held = read.headers["etag"]
        # Before: the header was ignored and the stale write went through.
        _refused(admin.patch(path, json={"max_active_jobs": 3}, headers={"If-Match": STALE}),
                 held)
        assert admin.get(path).json()["max_active_jobs"] is None
        changed = admin.patch(path, json={"max_active_jobs": 3}, headers={"If-Match": held})
        assert changed.status_code == 200 and changed.json()["max_active_jobs"] == 3
        # The tag read before that change is stale now; the new one is the GET's.
        current = admin.get(path).headers["etag"]
        assert current != held
        _refused(admin.patch(path, json={"max_active_jobs": 4}, headers={"If-Match": held}),
                 current)
        # `*` passes on an existing project; several tags pass when one is current; no header
        # is an unconditional write, as before.
        assert admin.patch(path, json={"max_active_jobs": 5},
                           headers={"If-Match": "*"}).status_code == 200
        assert admin.patch(path, json={"max_active_jobs": 6}, headers={
            "If-Match": f'{STALE}, {admin.get(path).headers["etag"]}'}).status_code == 200
        assert admin.patch(path, json={"max_active_jobs": 7}).status_code == 200
        # A weak tag never matches (strong comparison).
        weak = admin.get(path).headers["etag"]
        _refused(admin.patch(path, json={"max_active_jobs": 8},
                             headers={"If-Match": f"W/{weak}"}), weak)
        # A missing project is the 404 it was, not a 412.
        assert admin.patch("/v1/admin/projects/nobody", json={},
                           headers={"If-Match": "*"}).status_code == 404

        # Keys: a GET of their own now (Location of the created key), and a conditional revoke.
        created = admin.post(f"{path}/keys", json={"name": "ci"})
        key_path = created.headers["location"]
        assert key_path == f"{path}/keys/{created.json()['id']}"
        assert admin.get(key_path).json()["revoked_at"] is None
        current = admin.get(key_path).headers["etag"]
        _refused(admin.delete(key_path, headers={"If-Match": STALE}), current)
        assert admin.get(key_path).json()["revoked_at"] is None
        revoked = admin.delete(key_path, headers={"If-Match": current})
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

        current = admin.get(path).headers["etag"]
        _refused(admin.delete(path, headers={"If-Match": STALE}), current)
        assert admin.delete(path, headers={"If-Match": current}).status_code == 204
        assert admin.get(path).status_code == 404


def test_a_key_in_use_keeps_the_etag_its_revoke_compares_with(api: Api) -> None:
    """A key's ETag leaves out last_used_at: its use (a write no client makes) does not fail
    the If-Match of a revoke by a client that read it before; a revocation does."""
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    _, used_key = make_key(api.sessions, "team")
    with api.client_for(admin_key) as admin:
        (listed,) = admin.get("/v1/admin/projects/team/keys").json()["items"]
        key_path = f"/v1/admin/projects/team/keys/{listed['id']}"
        read = admin.get(key_path)
        assert read.status_code == 200 and read.json()["last_used_at"] is None
        held = read.headers["etag"]
        with api.client_for(used_key) as user:  # its first use records last_used_at
            assert user.get("/v1/usage").status_code == 200
        used = admin.get(key_path)
        assert used.json()["last_used_at"] is not None
        # Before: the tag was the body's digest, so it changed here and the revoke got 412.
        assert used.headers["etag"] == held
        # The tag leaves last_used_at out, so it never answers 304: the body comes whole.
        again = admin.get(key_path, headers={"If-None-Match": held})
        assert again.status_code == 200 and again.json() == used.json()
        assert admin.head(key_path).headers["etag"] == held

        # A change a writer acts on (the revocation) still changes it: a revoke holding the
        # tag read before it is refused, naming the current one.
        revoked = admin.delete(key_path, headers={"If-Match": held})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        current = admin.get(key_path).headers["etag"]
        assert current != held
        _refused(admin.delete(key_path, headers={"If-Match": held}), current)
        assert admin.delete(key_path, headers={"If-Match": current}).status_code == 200


def test_if_match_on_deletes_of_uploads_webhooks_and_jobs(allowing_api: Api,
                                                          small_cnn_file: Path) -> None:
    api = allowing_api
    checkpoint = upload_checkpoint(api, small_cnn_file)
    _delete_checked(api.client, f"/v1/checkpoints/{checkpoint['id']}")

    rng = np.random.default_rng(0)
    dataset = api.client.post("/v1/datasets", files={"file": ("mine.npz", npz_bytes(
        x=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 4, 40)))})
    assert dataset.status_code == 201, dataset.text
    _delete_checked(api.client, f"/v1/datasets/{dataset.json()['id']}")

    webhook = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert webhook.status_code == 201, webhook.text
    _delete_checked(api.client, f"/v1/webhooks/{webhook.json()['id']}")

    checkpoint = upload_checkpoint(api, small_cnn_file)
    job_id = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                               "config": digits_config()}).json()["id"]
    job = f"/v1/jobs/{job_id}"
    held = api.client.get(job).headers["etag"]
    assert api.client.post(f"{job}/cancel").status_code == 200
    # The job changed (cancelled) since `held` was read: its deletion is refused.
    _refused(api.client.delete(job, headers={"If-Match": held}),
             api.client.get(job).headers["etag"])
    # If-Unmodified-Since compares with its updated_at (second precision).
    updated = datetime.fromisoformat(api.client.get(job).json()["updated_at"])
    before = format_datetime(updated - timedelta(seconds=5), usegmt=True)
    after = format_datetime((updated + timedelta(seconds=5)).astimezone(UTC), usegmt=True)
    refused = api.client.delete(job, headers={"If-Unmodified-Since": before})
    _refused(refused, api.client.get(job).headers["etag"], "If-Unmodified-Since")
    assert api.client.delete(job, headers={"If-Unmodified-Since": after}).status_code == 204


def _waiting_on_locks(api: Api) -> int:
    with api.sessions() as session:
        return int(session.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one())


def test_two_writes_with_the_same_tag_cannot_both_pass(api: Api) -> None:
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    make_key(api.sessions, "team")
    path = "/v1/admin/projects/team"
    postgres = api.settings.database_url.startswith("postgresql")
    with api.client_for(admin_key) as admin:
        held = admin.get(path).headers["etag"]
    answers: list[httpx.Response] = []

    def patch(limit: int) -> None:
        with api.client_for(admin_key) as client:
            answers.append(client.patch(path, json={"max_active_jobs": limit},
                                        headers={"If-Match": held}))

    threads = [threading.Thread(target=patch, args=(n,)) for n in (3, 4)]
    with api.sessions() as blocker:
        if postgres:
            # Hold the project's row so that both requests have read (or wait to read) it
            # before either writes: without the lock taken before the check, both checks
            # pass and both writes go through once the row is free.
            blocker.execute(select(Project).where(Project.name == "team").with_for_update())
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while postgres and _waiting_on_locks(api) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        blocker.rollback()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(a.status_code for a in answers) == [200, 412], [a.text for a in answers]
