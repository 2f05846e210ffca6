"""``riftctl admin`` (the client's admin calls) end to end against the real API with an admin
key: projects created, listed, shown (with their ETag), limited (``--limit NAME=VALUE``,
``default`` for the service's setting; ``--if-match``) and deleted; keys created (the secret
shown once), listed, shown and revoked; the live workers with their datasets; usage errors naming
the option."""

from __future__ import annotations

import pytest

from persistence import workers
from persistence.db import session_factory_from_settings
from persistence.models import utcnow
from tests.client.conftest import RunningApi
from tests.client.helpers import run_riftctl
from tests.client.test_cli import Cli, cli  # noqa: F401 (a fixture)

pytestmark = pytest.mark.service


def test_projects_and_their_keys(cli: Cli, queued_api: RunningApi) -> None:  # noqa: F811
    made = cli("-o", "json", "admin", "projects", "create", "vision", "--limit",
               "max_active_jobs=3")
    assert made.exit_code == 0, made.stderr
    assert made.json()["max_active_jobs"] == 3 and made.json()["max_job_cost"] is None
    assert "etag" not in made.json()  # a write's answer carries none: `get` shows it
    taken = cli("-o", "json", "admin", "projects", "create", "vision")
    assert taken.exit_code == 3 and taken.error()["code"] == "project_exists"
    table = cli("admin", "projects", "list")
    assert table.exit_code == 0 and "vision" in table.stdout and "default" in table.stdout
    assert "active_jobs" in table.stdout

    held = cli("-o", "json", "admin", "projects", "get", "vision").json()["etag"]
    limited = cli("-o", "json", "admin", "projects", "limits", "vision", "--limit",
                  "max_stored_bytes=1000000", "--limit", "max_active_jobs=default",
                  "--if-match", held)
    assert limited.exit_code == 0, limited.stderr
    assert limited.json()["max_stored_bytes"] == 1000000
    assert limited.json()["max_active_jobs"] is None
    stale = cli("-o", "json", "admin", "projects", "limits", "vision", "--limit",
                "max_job_cost=5", "--if-match", held)
    assert stale.exit_code == 3 and stale.error()["field"] == "--if-match"
    current = cli("-o", "json", "admin", "projects", "get", "vision").json()["etag"]
    assert stale.error()["etag"] == current != held
    usage = cli("-o", "json", "admin", "projects", "usage", "vision")
    assert usage.exit_code == 0 and usage.json()["stored_bytes"]["limit"] == 1000000
    text = cli("admin", "projects", "usage", "vision").stdout
    assert "project vision" in text and "stored bytes: 0 of 1000000" in text

    created = cli("-o", "json", "admin", "keys", "create", "vision", "--scope", "read",
                  "--name", "ci")
    assert created.exit_code == 0, created.stderr
    key = created.json()
    assert key["scopes"] == ["read"] and key["key"].startswith("rift_")
    shown = cli("admin", "keys", "create", "vision")
    assert shown.exit_code == 0 and "secret rift_" in shown.stdout
    listed = cli("-o", "json", "admin", "keys", "list", "vision").json()
    assert len(listed) == 2 and all("key" not in k for k in listed)
    assert key["id"] in cli("admin", "keys", "list", "vision").stdout
    key_tag = cli("-o", "json", "admin", "keys", "get", "vision", key["id"]).json()["etag"]
    # The key in use (its last_used_at written) keeps the tag its revoke compares with.
    used = run_riftctl(["usage"], url=queued_api.url, api_key=key["key"], home=cli.home,
                       launcher=cli.launcher)
    assert used.exit_code == 0, used.stderr
    revoked = cli("admin", "keys", "revoke", "vision", key["id"], "--if-match", key_tag)
    assert revoked.exit_code == 0 and f"revoked key {key['id']}" in revoked.stdout
    again = cli("-o", "json", "admin", "keys", "revoke", "vision", key["id"], "--if-match",
                key_tag)
    assert again.exit_code == 3 and again.error()["status"] == 412

    workers = cli("admin", "workers")
    assert workers.exit_code == 0 and workers.stdout.strip() == "no live workers"
    busy = cli("admin", "projects", "delete", "vision", "--if-match", held)
    assert busy.exit_code == 3 and "412" in busy.stderr
    gone = cli("-o", "json", "admin", "projects", "delete", "vision", "--force")
    assert gone.exit_code == 0 and gone.json() == {"deleted": "vision"}
    assert cli("admin", "projects", "get", "vision").exit_code == 6  # not found


@pytest.mark.parametrize(("args", "field"), [
    (("admin", "projects", "create", "p", "--limit", "max_jobs=1"), "--limit"),
    (("admin", "projects", "create", "p", "--limit", "max_active_jobs=0"), "--limit"),
    (("admin", "projects", "create", "p", "--limit", "max_active_jobs=²"), "--limit"),
    (("admin", "projects", "limits", "p", "--limit", "max_active_jobs=1", "--limit",
      "max_active_jobs=2"), "--limit"),
    (("admin", "keys", "create", "p", "--scope", "root"), "--scope"),
    (("admin", "keys", "revoke", "p", "k", "--if-match", ""), "--if-match"),
])
def test_usage_errors_name_the_option(cli: Cli, args: tuple[str, ...],  # noqa: F811
                                      field: str) -> None:
    refused = cli("-o", "json", *args)
    assert refused.exit_code == 2, refused.stderr
    assert refused.error()["field"] == field


def test_the_live_workers_with_their_datasets(cli: Cli, queued_api: RunningApi) -> None:  # noqa: F811
    sessions = session_factory_from_settings(queued_api.settings)
    try:
        with sessions() as session:
            for worker_id, datasets in (("a-host:1:aa", ["cifar10", "mnist"]),
                                        ("b-host:2:bb", []), ("c-host:3:cc", None)):
                workers.register_worker(session, workers.WorkerInfo(
                    id=worker_id, hostname=worker_id.split(":")[0], queues=["rift"],
                    devices={"cpu": 1}, device_override=None, started_at=utcnow(),
                    datasets=datasets))
    finally:
        sessions.kw["bind"].dispose()
    listed = cli("-o", "json", "admin", "workers")
    assert listed.exit_code == 0, listed.stderr
    assert [(w["id"], w["datasets"]) for w in listed.json()] == [
        ("a-host:1:aa", ["cifar10", "mnist"]), ("b-host:2:bb", []), ("c-host:3:cc", None)]
    table = cli("admin", "workers")
    assert table.exit_code == 0, table.stderr
    cells = [[cell.strip() for cell in line.strip().strip("│").split("│")]
             for line in table.stdout.splitlines() if line.startswith("│")]
    header = table.stdout.splitlines()[1]
    assert [cell.strip() for cell in header.strip().strip("┃").split("┃")] == [
        "id", "queues", "devices", "datasets", "last seen"]
    assert [(row[0], row[3]) for row in cells] == [
        ("a-host:1:aa", "cifar10, mnist"), ("b-host:2:bb", "none"), ("c-host:3:cc", "?")]
