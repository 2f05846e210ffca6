"""``rift-admin`` end to end (its own process against the test's database) and the admin routes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import Api
from tests.preloaded_launcher import Launcher, run_python_module
from tests.reliability.helpers import inside_one_rate_window
from tests.service_fixtures import PROJECT_ROOT

pytestmark = [pytest.mark.service]

KEY = re.compile(r"^rift_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}$")


AdminCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def rift_admin(api: Api, optional_api_launcher: Launcher | None) -> AdminCli:
    """``rift_admin(*args)``: ``python -m persistence.admin_cli ARGS`` against the API's database
    and object store, as its own process: forked from the torch-free launcher (the module
    imported once per test process) unless ``RIFT_TEST_FORK_API=0``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "STORE_KIND", "STORE_ROOT")}
    # The API's database and object store, as an operator's environment would name them.
    env.update(DATABASE_URL=api.settings.database_url, STORE_KIND=api.settings.store_kind,
               STORE_ROOT=str(api.settings.store_root))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_python_module(optional_api_launcher, "persistence.admin_cli", list(args),
                                 env=env, cwd=PROJECT_ROOT, timeout=60)

    return run


def test_rift_admin_end_to_end(api: Api, rift_admin: AdminCli) -> None:
    assert rift_admin("projects", "create", "vision").returncode == 0
    assert rift_admin("projects", "create", "vision").returncode == 2  # exists
    assert rift_admin("projects", "create", "Bad Name!").returncode == 2
    made = rift_admin("keys", "create", "--project", "vision", "--scope", "read",
                      "--name", "dashboard")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and KEY.fullmatch(key)  # the key alone on stdout
    # Creating a key for a new project creates the project.
    other = rift_admin("keys", "create", "--project", "audio").stdout.strip()
    assert KEY.fullmatch(other)

    client = api.client_for(key)
    assert client.get("/v1/jobs").status_code == 200
    assert client.post("/v1/jobs/" + "0" * 32 + "/cancel").status_code == 403  # read only

    listed = rift_admin("keys", "list", "--project", "vision")
    assert listed.returncode == 0
    secret = key.split("_", 2)[2]
    assert secret not in listed.stdout and "dashboard" in listed.stdout
    assert "audio" not in listed.stdout
    assert secret not in rift_admin("keys", "list").stdout
    key_id = listed.stdout.splitlines()[1].split("\t")[0]
    last_used = listed.stdout.splitlines()[1].split("\t")[6]
    assert last_used  # it was used above

    assert rift_admin("keys", "revoke", key_id).returncode == 0
    assert client.get("/v1/jobs").status_code == 401
    assert rift_admin("keys", "revoke", "nope").returncode == 2
    client.close()


def test_revoke_given_the_key_itself_names_its_id_and_never_prints_the_secret(
        api: Api, rift_admin: AdminCli) -> None:
    key = rift_admin("keys", "create", "--project", "revoker").stdout.strip()
    assert KEY.fullmatch(key)
    listed = rift_admin("keys", "list", "--project", "revoker").stdout
    key_id = listed.splitlines()[1].split("\t")[0]
    refused = rift_admin("keys", "revoke", key)
    # Before: "no key with id 'rift_<prefix>_<secret>'", the secret printed back.
    assert refused.returncode == 2
    assert key.split("_", 2)[2] not in refused.stderr + refused.stdout
    assert f"is an API key, not a key id: its id is {key_id}" in refused.stderr
    client = api.client_for(key)
    assert client.get("/v1/jobs").status_code == 200  # a refused command changes nothing
    unknown = rift_admin("keys", "revoke", "rift_" + "0" * 12 + "_" + "A" * 43)
    assert unknown.returncode == 2 and "A" * 43 not in unknown.stderr
    assert "no key with its prefix" in unknown.stderr
    assert rift_admin("keys", "revoke", key_id).returncode == 0
    assert client.get("/v1/jobs").status_code == 401
    client.close()


def test_admin_routes(api: Api, clients: Callable[..., httpx.Client]) -> None:
    admin = clients("ops", ("admin",))
    created = admin.post("/v1/admin/projects", json={"name": "team-a", "max_active_jobs": 1})
    assert created.status_code == 201, created.text
    assert created.json()["max_active_jobs"] == 1
    assert admin.post("/v1/admin/projects", json={"name": "team-a"}).status_code == 409
    assert admin.post("/v1/admin/projects", json={"name": "team-b",
                                                  "max_active_jobs": "1"}).status_code == 422
    new = admin.post("/v1/admin/projects/team-a/keys", json={"scopes": ["read"], "name": "ci"})
    assert new.status_code == 201
    key = new.json()["key"]
    assert KEY.fullmatch(key)
    listed = admin.get("/v1/admin/projects/team-a/keys").json()["items"]
    assert [k["id"] for k in listed] == [new.json()["id"]]
    assert "key" not in listed[0] and key.split("_", 2)[2] not in str(listed)
    team = api.client_for(key)
    assert team.get("/v1/jobs").status_code == 200
    revoked = admin.delete(f"/v1/admin/projects/team-a/keys/{new.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert team.get("/v1/jobs").status_code == 401
    assert admin.get("/v1/admin/projects/nope/keys").status_code == 404
    assert admin.post("/v1/admin/projects/team-a/keys", content=b"scopes=admin", headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    team.close()


def test_rift_admin_adopt_gives_unowned_rows_to_a_project(api: Api, rift_admin: AdminCli) -> None:
    from persistence import jobs
    from persistence.models import Checkpoint, Job
    from persistence.records import create_checkpoint

    # Rows made before projects existed have no project: no key sees them.
    with api.sessions() as session:
        checkpoint = create_checkpoint(
            session, filename="old.safetensors", size=10, sha256="1" * 64,
            format="safetensors", storage_key="checkpoints/old.safetensors", num_tensors=2,
            num_parameters=20)
        job, _ = jobs.create_job(session, spec={"seed": 0}, checkpoint_id=checkpoint.id)
        checkpoint_id, job_id = checkpoint.id, job.id
    key = rift_admin("keys", "create", "--project", "legacy").stdout.strip()
    client = api.client_for(key)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404

    assert rift_admin("projects", "adopt", "nobody").returncode == 2
    adopted = rift_admin("projects", "adopt", "legacy")
    assert adopted.returncode == 0, adopted.stderr
    assert "1 checkpoints" in adopted.stdout and "1 jobs" in adopted.stdout
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get(f"/v1/checkpoints/{checkpoint_id}").status_code == 200
    with api.sessions() as session:
        assert session.get(Job, job_id).project_id == session.get(
            Checkpoint, checkpoint_id).project_id is not None
    # A second run finds nothing left to adopt.
    assert "0 checkpoints, 0 datasets, 0 jobs" in rift_admin("projects", "adopt",
                                                             "legacy").stdout
    client.close()


def test_rift_admin_recount_storage_shows_and_repairs_a_ledger_off_its_rows(
        api: Api, rift_admin: AdminCli) -> None:
    from persistence.models import StoredBytesEntry
    from persistence.records import create_checkpoint, stored_bytes, stored_bytes_by_kind

    with api.sessions() as session:
        create_checkpoint(session, filename="m.safetensors", size=700, sha256="1" * 64,
                          format="safetensors", storage_key="checkpoints/m.safetensors",
                          num_tensors=2, num_parameters=20, project_id=api.project_id)
        # A change the ledger missed (as a writer without its append would leave it).
        session.add(StoredBytesEntry(project_id=api.project_id, kind="checkpoints", delta=-500))
        session.commit()
        assert stored_bytes(session, api.project_id) == 200
    assert rift_admin("projects", "recount-storage").returncode == 2  # neither NAME nor --all
    assert rift_admin("projects", "recount-storage", "tests", "--all").returncode == 2
    assert rift_admin("projects", "recount-storage", "nobody").returncode == 2
    shown = rift_admin("projects", "recount-storage", "tests", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "tests\tcheckpoints\t500\n"
    with api.sessions() as session:
        assert stored_bytes(session, api.project_id) == 200  # a dry run repairs nothing
    repaired = rift_admin("projects", "recount-storage", "--all", "--output", "json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["differences"] == {"tests": {"checkpoints": 500}}
    assert "(repaired)" in repaired.stderr
    with api.sessions() as session:
        assert stored_bytes(session, api.project_id) == stored_bytes_by_kind(
            session, api.project_id).total == 700
    again = rift_admin("projects", "recount-storage", "tests")
    assert again.returncode == 0 and again.stdout == ""
    assert "0 differed" in again.stderr


def test_rift_admin_limits_refusals_and_exit_codes(api: Api, rift_admin: AdminCli) -> None:
    assert rift_admin("projects", "create", "vision").returncode == 0
    limits = rift_admin("projects", "limits", "vision", "--max-active-jobs", "3",
                        "--max-stored-bytes", "1000")
    assert limits.returncode == 0, limits.stderr
    assert "max_active_jobs\t3\n" in limits.stdout and "max_job_cost\t\n" in limits.stdout
    # Enforced at once, and 'default' puts one back to the setting's.
    shown = rift_admin("projects", "limits", "vision", "--max-stored-bytes", "default")
    assert "max_active_jobs\t3\n" in shown.stdout and "max_stored_bytes\t\n" in shown.stdout
    for args in (("--max-active-jobs", "0"), ("--max-job-cost", "lots")):
        refused = rift_admin("projects", "limits", "vision", *args)
        assert refused.returncode == 2 and args[0].lstrip("-").replace("-", "_") in \
            refused.stderr.replace("-", "_"), refused.stderr
    assert rift_admin("projects", "limits", "nobody").returncode == 2
    # Before: a refused key (its name too long) still created the project it named.
    refused = rift_admin("keys", "create", "--project", "fresh", "--name", "n" * 129)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "fresh" not in rift_admin("projects", "list").stdout
    # Before: a traceback; now one line and exit status 1. (A fresh interpreter, as an operator
    # runs it: the other runs are forked from the launcher.)
    env = {**os.environ, "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    down = subprocess.run([sys.executable, "-m", "persistence.admin_cli", "projects", "list"],
                          env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.startswith("rift-admin: cannot reach the database")


def test_admin_route_changes_a_projects_limits(
        api: Api, clients: Callable[..., httpx.Client]) -> None:
    admin = clients("ops", ("admin",))
    assert admin.post("/v1/admin/projects", json={"name": "team-a",
                                                  "max_active_jobs": 5}).status_code == 201
    changed = admin.patch("/v1/admin/projects/team-a", json={"max_requests_per_minute": 2})
    assert changed.status_code == 200, changed.text
    assert changed.json()["max_requests_per_minute"] == 2
    assert changed.json()["max_active_jobs"] == 5  # left out: unchanged
    reset = admin.patch("/v1/admin/projects/team-a", json={"max_active_jobs": None})
    assert reset.json()["max_active_jobs"] is None and reset.json()["max_requests_per_minute"] == 2
    bad = admin.patch("/v1/admin/projects/team-a", json={"max_job_cost": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "max_job_cost"
    # The compute limit as the others: set, shown, refused out of range naming it.
    gflop = admin.patch("/v1/admin/projects/team-a", json={"max_job_gflop": 10**9})
    assert gflop.status_code == 200 and gflop.json()["max_job_gflop"] == 10**9, gflop.text
    bad = admin.patch("/v1/admin/projects/team-a", json={"max_job_gflop": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "max_job_gflop"
    seen = admin.get("/v1/admin/projects/team-a/usage").json()
    assert seen["max_job_gflop"] == 10**9
    assert admin.patch("/v1/admin/projects/team-a", json={"name": "b"}).status_code == 422
    missing = admin.patch("/v1/admin/projects/nope", json={})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "name"
    team = api.client_for(admin.post("/v1/admin/projects/team-a/keys").json()["key"])
    inside_one_rate_window()
    assert [team.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]
    team.close()
    assert api.client.patch("/v1/admin/projects/team-a",
                            json={}).json()["error"]["required_scope"] == "admin"


def test_rift_admin_projects_usage_and_delete(api: Api, small_cnn_file: Path,
                                               rift_admin: AdminCli) -> None:
    from tests.reliability.conftest import create_job, upload

    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    job = create_job(api.client, checkpoint["id"])
    assert job.status_code == 201, job.text
    assert rift_admin("projects", "limits", "tests", "--max-job-cost", "5000",
                      "--max-job-gflop", "7000").returncode == 0

    shown = rift_admin("projects", "usage", "tests")
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split("\t") for line in shown.stdout.splitlines())
    seen = api.client.get("/v1/usage").json()  # the same numbers as the API's
    assert lines["project"] == "tests"
    assert int(lines["stored_bytes"]) == seen["stored_bytes"]["used"] == 3 * checkpoint["size"]
    assert int(lines["stored_bytes.reserved_by_active_jobs"]) == 2 * checkpoint["size"]
    assert int(lines["max_stored_bytes"]) == seen["stored_bytes"]["limit"]
    assert int(lines["active_jobs"]) == seen["active_jobs"]["used"] == 1
    assert (int(lines["pending_materializations"]), int(lines["max_pending_materializations"])) == (
        seen["pending_materializations"]["used"], seen["pending_materializations"]["limit"])
    assert int(lines["max_job_cost"]) == seen["max_job_cost"] == 5000
    assert int(lines["max_job_gflop"]) == seen["max_job_gflop"] == 7000
    assert rift_admin("projects", "usage", "nobody").returncode == 2

    refused = rift_admin("projects", "delete", "tests")
    assert refused.returncode == 2
    assert "project 'tests' has 1 queued or running job(s)" in refused.stderr, refused.stderr
    assert api.client.get("/v1/usage").status_code == 200  # nothing changed
    deleted = rift_admin("projects", "delete", "tests", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert "1 jobs, 1 checkpoints" in deleted.stderr
    assert api.client.get("/v1/usage").status_code == 401
    assert api.stored_files() == []
    assert rift_admin("projects", "delete", "tests").returncode == 2  # no such project


def test_rift_admin_as_a_script_runs_it(api: Api, small_cnn_file: Path,
                                        rift_admin: AdminCli) -> None:
    """--output json on every command, re-runs that succeed, a key rotated, a quota lowered
    under running work."""
    from tests.reliability.conftest import create_job, upload

    def as_json(*args: str) -> Any:
        done = rift_admin(*args, "--output", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # Ensuring a project exists, twice: success both times (was exit 2 the second time).
    assert as_json("projects", "create", "ops", "--exist-ok")["created"] is True
    again = as_json("projects", "create", "ops", "--exist-ok")
    assert again["created"] is False and again["name"] == "ops"
    assert [p["name"] for p in as_json("projects", "list")] == ["ops", "tests"]

    # Rotation: a new key, then the old one revoked by the id the JSON gave; revoking again is
    # no error. No secret in any listing.
    old = as_json("keys", "create", "--project", "ops", "--name", "ci")
    new = as_json("keys", "create", "--project", "ops", "--name", "ci")
    assert KEY.fullmatch(old["key"]) and old["project_created"] is False
    assert as_json("keys", "revoke", old["id"])["revoked_at"] is not None
    assert rift_admin("keys", "revoke", old["id"]).returncode == 0
    assert api.client_for(old["key"]).get("/v1/jobs").status_code == 401
    assert api.client_for(new["key"]).get("/v1/jobs").status_code == 200
    listed = rift_admin("keys", "list", "--project", "ops", "--output", "json").stdout
    assert old["key"] not in listed and new["key"] not in listed
    assert [k["revoked_at"] is None for k in json.loads(listed)] == [False, True]
    # A mistyped project is made, but the note says so (a script's log shows it).
    typo = rift_admin("keys", "create", "--project", "opz")
    assert typo.returncode == 0 and "a new project: 'opz' did not exist" in typo.stderr

    # A quota lowered while jobs are active: they go on, the next one is refused naming it.
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    first, second = (create_job(api.client, checkpoint["id"]) for _ in range(2))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    lowered = rift_admin("projects", "limits", "tests", "--max-active-jobs", "1", "--output",
                         "json")
    assert lowered.returncode == 0, lowered.stderr
    assert json.loads(lowered.stdout)["limits"]["max_active_jobs"] == 1
    # Accepted, with a note on stderr naming the use above the new limit.
    assert "active_jobs 2 above its limit 1" in lowered.stderr, lowered.stderr
    assert "above its limit" not in rift_admin("projects", "limits", "tests",
                                               "--max-active-jobs", "2").stderr
    assert as_json("projects", "limits", "tests", "--max-active-jobs", "1")
    refused = create_job(api.client, checkpoint["id"])
    assert refused.status_code == 429 and refused.json()["error"]["field"] == "max_active_jobs"
    usage = as_json("projects", "usage", "tests")
    assert usage["active_jobs"] == 2 and usage["max_active_jobs"] == 1
    for job in (first, second):
        assert api.client.get(f"/v1/jobs/{job.json()['id']}").json()["status"] in (
            "queued", "running")
    assert as_json("projects", "adopt", "ops")["adopted"] == {"checkpoints": 0, "datasets": 0,
                                                            "jobs": 0}


def test_rift_admin_read_by_a_pipe_closed_early_exits_quietly(api: Api) -> None:
    # `rift-admin keys list | head -1`: was a BrokenPipeError traceback on stderr, exit 1.
    env = {**os.environ, "DATABASE_URL": api.settings.database_url}
    # `true` leaves before rift-admin writes (its interpreter takes far longer to start).
    pipeline = (f"{sys.executable} -m persistence.admin_cli keys list --output json | true; "
                "exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", pipeline], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_rift_admin_projects_delete_refuses_a_store_that_is_not_the_services(
        api: Api, small_cnn_file: Path, optional_api_launcher: Launcher | None,
        tmp_path: Path) -> None:
    # "Use it" asks for DATABASE_URL at least: run so, rift-admin named the default
    # ./var/objects as the store, deleted the rows, counted the objects as deleted and left
    # every file in the service's store, where nothing accounts for it any more.
    from tests.reliability.conftest import upload

    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    stored = api.stored_files()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "STORE_KIND", "STORE_ROOT")}
    env.update(DATABASE_URL=api.settings.database_url)  # no store settings: the default folder
    refused = run_python_module(optional_api_launcher, "persistence.admin_cli",
                                ["projects", "delete", "tests"], env=env, cwd=tmp_path, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "STORE_ROOT=" in refused.stderr and "nothing deleted" in refused.stderr
    assert f"checkpoints/{checkpoint['id']}" in refused.stderr
    assert api.client.get(f"/v1/checkpoints/{checkpoint['id']}").status_code == 200
    assert api.stored_files() == stored


def test_a_keys_prefix_reads_the_same_in_rift_admin_and_the_admin_api(
        api: Api, rift_admin: AdminCli, clients: Callable[..., httpx.Client]) -> None:
    """``rift-admin keys list --output json`` wrote ``rift_<prefix>_`` where the admin API (and
    ``riftctl admin keys list``) writes ``<prefix>``: a script joining the two saw two keys.
    Both give the stored prefix; the text table still shows it as the key starts."""
    admin = clients("ops", ("admin",))
    assert admin.post("/v1/admin/projects", json={"name": "joined"}).status_code == 201
    key = admin.post("/v1/admin/projects/joined/keys", json={"scopes": ["read"]}).json()["key"]
    from_api = admin.get("/v1/admin/projects/joined/keys").json()["items"]
    listed = rift_admin("keys", "list", "--project", "joined", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    from_cli = json.loads(listed.stdout)
    assert [k["prefix"] for k in from_cli] == [k["prefix"] for k in from_api] == [
        key.split("_")[1]]
    table = rift_admin("keys", "list", "--project", "joined").stdout
    assert f"rift_{key.split('_')[1]}_…" in table
