"""The admin calls of ``RiftClient`` and ``AsyncRiftClient`` (``/v1/admin``: projects, their
limits, usage and deletion, their API keys, the live workers) against the real API (SQLite,
jobs left queued), with an admin key: typed models, ``if_match=`` from a ``get_*``'s ``.etag``
(a stale one: :class:`PreconditionFailedError` naming the current tag), the API's errors as
typed exceptions, and arguments refused before anything is sent."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from rift_client import (
    PROJECT_LIMITS,
    ApiKey,
    AsyncRiftClient,
    AuthenticationError,
    ConflictError,
    CreatedApiKey,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    Project,
    RiftClient,
    RiftConnectionError,
    RiftUsageError,
    UnprocessableEntityError,
    Usage,
)
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import CuttingProxy

pytestmark = pytest.mark.service


def _client(api: RunningApi, key: str | None) -> RiftClient:
    return RiftClient(api.url, api_key=key, retry=FAST_RETRY, timeout=30)


def test_projects_their_limits_usage_and_deletion(rift: RiftClient) -> None:
    made = rift.create_project("vision", limits={"max_active_jobs": 3})
    assert isinstance(made, Project) and made.name == "vision"
    assert made.max_active_jobs == 3 and made.max_stored_bytes is None
    assert "vision" in [p.name for p in rift.list_projects()]
    with pytest.raises(ConflictError) as taken:
        rift.create_project("vision")
    assert taken.value.code == "project_exists" and taken.value.field == "name"

    held = rift.get_project("vision")
    assert held == made and held.etag is not None and held.etag.startswith('"')
    changed = rift.set_project_limits("vision", {"max_stored_bytes": 10**9},
                                      if_match=held.etag)
    # Only the limits named change; the others stay.
    assert changed.max_stored_bytes == 10**9 and changed.max_active_jobs == 3
    with pytest.raises(PreconditionFailedError) as stale:
        rift.set_project_limits("vision", {"max_active_jobs": 5}, if_match=held.etag)
    current = rift.get_project("vision")
    assert stale.value.field == "If-Match" and stale.value.current_etag == current.etag
    assert current.max_active_jobs == 3  # refused: nothing changed
    # None sets a limit back to the service's setting.
    reset = rift.set_project_limits("vision", {"max_active_jobs": None}, if_match=current.etag)
    assert reset.max_active_jobs is None and reset.max_stored_bytes == 10**9
    with pytest.raises(UnprocessableEntityError) as refused:
        rift.set_project_limits("vision", {"max_job_cost": 0})
    assert "max_job_cost" in str(refused.value.field)

    usage = rift.project_usage("vision")
    assert isinstance(usage, Usage) and usage.project == "vision"
    assert usage.stored_bytes.limit == 10**9 and usage.active_jobs.used == 0

    with pytest.raises(PreconditionFailedError):
        rift.delete_project("vision", if_match=held.etag)
    rift.delete_project("vision", if_match=rift.get_project("vision").etag)
    with pytest.raises(NotFoundError) as gone:
        rift.get_project("vision")
    assert gone.value.code == "project_not_found"
    rift.create_project("scratch")
    rift.delete_project("scratch", force=True)  # nothing active: the same deletion
    assert "scratch" not in [p.name for p in rift.list_projects()]
    assert rift.list_workers() == []  # none started for this API


def test_keys_created_used_listed_and_revoked(rift: RiftClient, queued_api: RunningApi) -> None:
    rift.create_project("team")
    created = rift.create_key("team", scopes=["read"], name="ci")
    assert isinstance(created, CreatedApiKey) and created.key.startswith("rift_")
    assert created.project == "team" and created.scopes == ["read"] and created.name == "ci"
    default = rift.create_key("team")  # no body: read and write, no name
    assert sorted(default.scopes) == ["read", "write"] and default.name is None

    listed = rift.list_keys("team")
    assert {k.id for k in listed} == {created.id, default.id}
    assert all(type(k) is ApiKey and not hasattr(k, "key") for k in listed)
    held = rift.get_key("team", created.id)
    assert held.last_used_at is None and not held.revoked and held.etag is not None

    with _client(queued_api, created.key) as user:  # its first use records last_used_at
        assert user.usage().project == "team"
        with pytest.raises(PermissionDeniedError):  # a read key is no admin
            user.list_projects()
    used = rift.get_key("team", created.id)
    assert isinstance(used.last_used_at, datetime)
    # Its use is no change a revoke conflicts with: the tag read before it still matches.
    assert used.etag == held.etag
    revoked = rift.revoke_key("team", created.id, if_match=held.etag)
    assert revoked.revoked and revoked.id == created.id
    with _client(queued_api, created.key) as user, pytest.raises(AuthenticationError):
        user.usage()
    # The revocation is a change: the tag read before it is stale now.
    with pytest.raises(PreconditionFailedError) as stale:
        rift.revoke_key("team", created.id, if_match=held.etag)
    assert stale.value.current_etag == rift.get_key("team", created.id).etag != held.etag
    assert rift.revoke_key("team", created.id).revoked_at == revoked.revoked_at  # once

    with pytest.raises(NotFoundError) as missing:
        rift.get_key("team", "no-such-key")
    assert missing.value.code == "key_not_found" and missing.value.field == "key_id"
    with pytest.raises(NotFoundError) as other:  # a key of another project
        rift.revoke_key("client-tests", default.id)
    assert other.value.code == "key_not_found"
    with pytest.raises(UnprocessableEntityError) as scope:
        rift.create_key("team", scopes=["root"])
    assert "scopes" in str(scope.value.field)


def test_a_key_whose_answer_was_lost_is_not_made_twice(rift: RiftClient, queued_api: RunningApi,
                                                       api_key: str | None) -> None:
    # The route takes no Idempotency-Key: a second POST would make a second key, its secret
    # never seen by anyone. The lost answer is the caller's to resolve (list_keys shows it).
    rift.create_project("lost")
    proxy = CuttingProxy(queued_api.url, marker=b"POST /v1/admin/projects/lost/keys ",
                         cut_after=0, times=1)
    try:
        with RiftClient(proxy.url, api_key=api_key, retry=FAST_RETRY) as client, \
                pytest.raises(RiftConnectionError):
            client.create_key("lost", name="once")
    finally:
        proxy.stop()
    assert proxy.cuts_done == 1
    assert [k.name for k in rift.list_keys("lost")] == ["once"]


def test_admin_arguments_are_checked_before_sending(rift: RiftClient) -> None:
    with pytest.raises(RiftUsageError, match="scopes must be a list of scopes"):
        rift.create_key("team", scopes="read")
    with pytest.raises(RiftUsageError, match="max_jobs is not a project limit"):
        rift.create_project("p", limits={"max_jobs": 1})
    with pytest.raises(RiftUsageError, match="limits must be a mapping"):
        rift.set_project_limits("p", [("max_active_jobs", 1)])  # type: ignore[arg-type]
    with pytest.raises(RiftUsageError, match="if_match"):
        rift.delete_project("client-tests", if_match=" ")
    with pytest.raises(RiftUsageError, match="name must be a non-empty string"):
        rift.get_project("")
    assert "max_active_jobs" in PROJECT_LIMITS
    assert [p.name for p in rift.list_projects()] == ["client-tests"]  # nothing was made


def test_the_async_client_manages_projects_and_keys(queued_api: RunningApi,
                                                    api_key: str | None) -> None:
    async def scenario() -> None:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY,
                                   timeout=30) as rift:
            made = await rift.create_project("async", limits={"max_job_cost": 7})
            held = await rift.get_project("async")
            assert held == made and held.max_job_cost == 7 and held.etag
            assert (await rift.set_project_limits("async", {"max_job_cost": 8},
                                                  if_match=held.etag)).max_job_cost == 8
            key = await rift.create_key("async", name="a")
            assert [k.id for k in await rift.list_keys("async")] == [key.id]
            read = await rift.get_key("async", key.id)
            assert (await rift.revoke_key("async", key.id, if_match=read.etag)).revoked
            assert (await rift.project_usage("async")).project == "async"
            assert await rift.list_workers() == []
            with pytest.raises(PreconditionFailedError):
                await rift.delete_project("async", if_match=held.etag)
            await rift.delete_project("async", if_match=(await rift.get_project("async")).etag)
            assert "async" not in [p.name for p in await rift.list_projects()]

    asyncio.run(scenario())
