"""The same requests give the same answers on both back-ends: embedded SQLite and production
PostgreSQL, here one whose default collation is linguistic (ICU ``en-US``, the order a server
initialised with ``en_US.UTF-8`` has: initdb's default on most systems and the official image's).

Each test starts the API on both databases, sends both the same requests and compares what they
answer: key order of JSON objects, order of lists sorted by text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from persistence.migrate import upgrade_database
from persistence.models import Artifact, Job, Worker, utcnow
from persistence.settings import Settings
from tests.api.conftest import _empty_postgres
from tests.api.helpers import Api, RecordingDispatcher, digits_config, make_key, upload_checkpoint
from tests.service_fixtures import empty_database, settings_from_env

pytestmark = pytest.mark.service

#: CREATE DATABASE options of a database that sorts text as en_US does ("a_b" before "a-c"
#: before "ab", "a" before "B"), not by code point as SQLite and the C collation do.
LINGUISTIC = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
#: Names whose code point order differs from their en_US order.
NAMES = ("b", "a-c", "ab", "a_b", "a.z", "a")


@pytest.fixture(scope="module")
def linguistic_postgres_url() -> Iterator[str]:
    with empty_database("rift_parity", LINGUISTIC) as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def apis(sqlite_url: str, linguistic_postgres_url: str, tmp_path: Path,
         start_api: Callable[..., Api]) -> dict[str, Api]:
    """The API on each back-end (empty databases, jobs stay queued)."""
    _empty_postgres(linguistic_postgres_url)
    started = {}
    for backend, url in (("sqlite", sqlite_url), ("postgres", linguistic_postgres_url)):
        settings: Settings = settings_from_env({
            "DATABASE_URL": url, "BROKER_URL": "memory://", "STORE_KIND": "local",
            "STORE_ROOT": str(tmp_path / backend / "objects"),
            "WORK_DIR": str(tmp_path / backend / "work")})
        started[backend] = start_api(settings, dispatcher=RecordingDispatcher())
    return started


def key_order(value: Any) -> Any:
    """The keys of every object in ``value``, in the order they came, at every depth."""
    if isinstance(value, dict):
        return [(key, key_order(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [key_order(item) for item in value]
    return None


def same_answers(apis: dict[str, Api], ask: Callable[[Api], Any]) -> Any:
    """What ``ask`` returns from each back-end, checked to be the same; returns it."""
    answers = {backend: ask(api) for backend, api in apis.items()}
    assert answers["sqlite"] == answers["postgres"]
    return answers["sqlite"]


def _new_job(api: Api, small_cnn_file: Path) -> dict[str, Any]:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint["id"], "config": digits_config(),
        "labels": {name.upper() if name == "a" else name: "v" for name in NAMES}})
    assert created.status_code == 201, created.text
    return dict(created.json())


def test_json_objects_come_back_with_their_keys_in_one_order(apis: dict[str, Api],
                                                              small_cnn_file: Path) -> None:
    # Before: a job's config came back in the order it was written from SQLite ("protocol",
    # "architecture", "dataset", ...) and from Postgres in JSONB's (shorter keys first: "mrc",
    # "seed", "attack", ...); event payloads and metrics likewise.
    def job_keys(api: Api) -> Any:
        job = _new_job(api, small_cnn_file)
        read = api.client.get(f"/v1/jobs/{job['id']}").json()
        events = api.client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
        return key_order(read["config"]), [key_order(event["payload"]) for event in events]

    config, _ = same_answers(apis, job_keys)
    assert [key for key, _ in config] == sorted(key for key, _ in config)


def test_lists_sorted_by_text_come_in_one_order(apis: dict[str, Api],
                                                small_cnn_file: Path) -> None:
    # Before: Postgres sorted by its collation (en_US: "a", "a_b", "a-c", "a.z", "ab", "B"),
    # SQLite by code point ("B", "a", "a-c", "a.z", "a_b", "ab"): projects, a job's labels, its
    # artifacts and the workers were listed in different orders by the two.
    def lists(api: Api) -> dict[str, list[str]]:
        _, admin_key = make_key(api.sessions, "ops", ("admin",))
        for name in NAMES:
            make_key(api.sessions, name)
        job = _new_job(api, small_cnn_file)
        now = utcnow()
        with api.sessions() as session:
            for name in NAMES:
                session.add(Artifact(job_id=job["id"], name=f"tuned{name}.bin",
                                     storage_key=f"jobs/{job['id']}/{name}", size=1,
                                     sha256="0" * 64, content_type="application/octet-stream",
                                     created_at=now))
                session.add(Worker(id=f"host{name}:1:0", hostname="host", queues=["rift"],
                                   devices={"cpu": 1}, started_at=now - timedelta(seconds=1),
                                   last_seen_at=now))
            session.commit()
        with api.client_for(admin_key) as admin:
            projects = admin.get("/v1/admin/projects").json()["items"]
            workers = admin.get("/v1/admin/workers").json()["items"]
        artifacts = api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]
        listed = api.client.get("/v1/jobs").json()["items"][0]
        return {"projects": [p["name"] for p in projects],
                "labels": list(api.client.get(f"/v1/jobs/{job['id']}").json()["labels"]),
                "listed labels": list(listed["labels"]),
                "artifacts": [a["name"] for a in artifacts],
                "workers": [w["id"] for w in workers]}

    answers = same_answers(apis, lists)
    assert all(names == sorted(names) for names in answers.values()), answers


def test_jobs_created_at_the_same_instant_are_listed_by_id(apis: dict[str, Api],
                                                          small_cnn_file: Path) -> None:
    # Before: the jobs keeping a checkpoint from deletion (409 referenced, details.job_ids) were
    # ordered by created_at alone, so ties came in whatever order each database read them.
    def referencing(api: Api) -> bool:
        checkpoint = upload_checkpoint(api, small_cnn_file)
        ids = [api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                 "config": digits_config()}).json()["id"]
               for _ in range(6)]
        with api.sessions() as session:
            session.execute(update(Job).where(Job.id.in_(ids)).values(
                status="succeeded", created_at=utcnow()))
            session.commit()
        refused = api.client.delete(f"/v1/checkpoints/{checkpoint['id']}")
        assert refused.status_code == 409, refused.text
        listed = refused.json()["error"]["job_ids"]
        assert sorted(listed) == sorted(ids)
        return bool(listed == sorted(ids))

    assert same_answers(apis, referencing)
