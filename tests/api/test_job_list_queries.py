"""The read path's cost: a page of jobs and a job by id take a constant number of SQL statements,
and list items carry no config unless asked for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event

from persistence import jobs
from persistence.models import utcnow
from persistence.records import create_checkpoint
from tests.api.helpers import Api, digits_config

SPEC = {"config": digits_config()}


@contextmanager
def counted_statements(api: Api) -> Iterator[list[str]]:
    """The SQL statements the API's engine runs inside the block (transaction control left out:
    SQLite's BEGIN IMMEDIATE is a statement to the driver, Postgres' BEGIN is not)."""
    engine = api.sessions.kw["bind"]
    seen: list[str] = []
    # The key's last-use time is written at most once a minute: make that write happen before the
    # block, so the block counts the steady state (one statement authenticates the key).
    assert api.client.get("/v1/jobs", params={"limit": 1}).status_code == 200

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def add_jobs(api: Api, count: int, labels: dict[str, str] | None = None) -> list[str]:
    """``count`` queued jobs, oldest first, written straight to the database (fast)."""
    start = utcnow()
    with api.sessions() as session:
        checkpoint = create_checkpoint(
            session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1,
            project_id=api.project_id)
        ids = []
        for i in range(count):
            job, _ = jobs.create_job(session, spec=SPEC["config"], checkpoint_id=checkpoint.id,
                                     labels={"n": str(i), **(labels or {})},
                                     now=start + timedelta(milliseconds=i),
                                     project_id=api.project_id)
            ids.append(job.id)
    return ids


def test_list_of_50_takes_at_most_3_statements_and_no_config(api: Api) -> None:
    ids = add_jobs(api, 50)
    with api.sessions() as session:
        jobs.request_cancel(session, ids[10])
    with counted_statements(api) as statements:
        response = api.client.get("/v1/jobs", params={"limit": 50})
    assert response.status_code == 200, response.text
    assert len(statements) <= 3, statements
    items = response.json()["items"]
    assert [item["id"] for item in items] == ids[::-1]
    assert all("config" not in item or item["config"] is None for item in items)
    assert all(item["stages"] is None for item in items)
    # Positions are the same as the per-job count gave: the cancelled job is out of the queue.
    positions = {item["id"]: item["queue_position"] for item in items}
    assert positions[ids[0]] == 1 and positions[ids[10]] is None and positions[ids[11]] == 11
    assert positions[ids[49]] == 49
    assert items[0]["labels"] == {"n": "49"}


def test_list_statements_do_not_grow_with_the_page(api: Api) -> None:
    add_jobs(api, 30, labels={"team": "a"})
    counts = []
    for limit in (1, 30):
        with counted_statements(api) as statements:
            response = api.client.get("/v1/jobs", params={"limit": limit, "label": "team:a",
                                                          "status": "queued"})
        assert response.status_code == 200 and len(response.json()["items"]) == limit
        counts.append(len(statements))
    assert counts[0] == counts[1] <= 3


def test_expand_adds_config_and_stages(api: Api) -> None:
    add_jobs(api, 3)
    with counted_statements(api) as statements:
        response = api.client.get("/v1/jobs", params={"expand": "config,stages"})
    assert response.status_code == 200
    assert len(statements) <= 4  # the key, the page, its labels, its stages
    item = response.json()["items"][0]
    assert item["config"]["attack"]["eps"] == SPEC["config"]["attack"]["eps"]
    assert [s["stage"] for s in item["stages"]] == ["mrc", "finetune", "interpolate"]
    # The warnings of the page's jobs: one statement more, whatever the page's size.
    for limit in (1, 3):
        with counted_statements(api) as statements:
            response = api.client.get("/v1/jobs", params={"expand": "warnings", "limit": limit})
        assert len(statements) <= 4, statements  # the key, the page, its labels, its warnings
        assert [item["warnings"] for item in response.json()["items"]] == [[]] * limit
    bad = api.client.get("/v1/jobs", params={"expand": "checkpoint"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "expand"


def test_job_by_id_takes_at_most_5_statements(api: Api) -> None:
    """The API key, then the job with its queue position, its labels, its stages, its
    warnings."""
    ids = add_jobs(api, 5)
    with counted_statements(api) as statements:
        response = api.client.get(f"/v1/jobs/{ids[3]}")
    assert response.status_code == 200
    body = response.json()
    assert body["queue_position"] == 4 and body["config"]["attack"]["eps"] > 0
    assert len(body["stages"]) == 3 and body["warnings"] == []
    assert len(statements) <= 5, statements
