"""The read path's queries on Postgres read the rows they answer with, not a whole table or a whole
project: each query the service runs is captured as it runs and explained (``EXPLAIN ANALYZE``)
on a database of two projects with interleaved jobs of every status, and no scan of the big
tables may throw rows away by a filter (a row thrown away is a row read for nothing; their number
grows with the table, not with the page).

Sequential and bitmap scans are turned off for the EXPLAIN: on a table this small the planner
would pick them whatever indexes exist, and the question is whether an index *can* bound the
query, as it must for the plans measured at organisation size (bench/api_load.py). Counting
rows is deterministic; no timing is asserted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, insert
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Conflict
from api.services.deletion import _refuse_if_used
from persistence import jobs as job_queries
from persistence import storage_ledger, webhooks
from persistence.api_keys import create_project
from persistence.db import create_db_engine, create_session_factory
from persistence.job_warnings import job_warnings
from persistence.models import (
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobLabel,
    StoredBytesEntry,
    WebhookDelivery,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from persistence.records import stored_bytes, stored_bytes_by_kind
from persistence.webhooks import enqueue_job_notifications
from tests.service_fixtures import migrated_database

JOBS_PER_PROJECT = 150
LABELLED_JOBS = 2000
#: queued, running, succeeded, failed, cancelled in a fixed cycle (a fifth of each).
CYCLE = ("queued", "succeeded", "running", "failed", "succeeded", "cancelled", "queued",
         "succeeded", "failed", "running")


class Seeded:
    def __init__(self, sessions: sessionmaker[Session], projects: list[str],
                 checkpoints: list[str], datasets: list[str], finished: list[str],
                 labelled: str) -> None:
        self.sessions = sessions
        self.labelled = labelled
        self.projects = projects
        self.checkpoints = checkpoints
        self.datasets = datasets
        self.finished = finished


@pytest.fixture(scope="module")
def seeded(_postgres_template: str) -> Iterator[Seeded]:
    """Two projects, their jobs interleaved in time, webhook deliveries for finished jobs;
    vacuumed and analysed (a live database is, by autovacuum)."""
    with migrated_database(_postgres_template, "rift_plans") as url:
        engine = create_db_engine(url)
        sessions = create_session_factory(engine)
        start = utcnow() - timedelta(days=1)
        projects, checkpoints, datasets, finished = [], [], [], []
        with sessions() as session:
            for name in ("plans-a", "plans-b"):
                project = create_project(session, name)
                projects.append(project.id)
                checkpoint, dataset, endpoint = new_id(), new_id(), new_id()
                checkpoints.append(checkpoint)
                datasets.append(dataset)
                session.execute(insert(Checkpoint), [dict(
                    id=checkpoint, filename="m.safetensors", size=1, sha256="0" * 64,
                    format="safetensors", storage_key=f"c/{checkpoint}", num_tensors=1,
                    num_parameters=1, created_at=start, project_id=project.id)])
                session.execute(insert(Dataset), [dict(
                    id=dataset, filename="d.npz", kind="npz", size=1, sha256="0" * 64,
                    storage_key=f"d/{dataset}", created_at=start, project_id=project.id)])
                session.execute(insert(WebhookEndpoint), [dict(
                    id=endpoint, project_id=project.id, url="https://example.invalid/h",
                    secret="whsec_x", event_types=["job.succeeded"], created_at=start)])
            jobs, deliveries, labels = [], [], []
            for i in range(2 * JOBS_PER_PROJECT):
                p = i % 2
                status = CYCLE[(i // 2) % len(CYCLE)]
                job_id = new_id()
                created = start + timedelta(seconds=i)
                jobs.append(dict(id=job_id, status=status, spec={}, checkpoint_id=checkpoints[p],
                                 dataset_id=datasets[p], cancel_requested=False, attempts=0,
                                 stage_progress=0.0, created_at=created, updated_at=created,
                                 project_id=projects[p]))
                # A tenth of each project's jobs carries team=x (the rest team=y), as in
                # bench/api_load.py; every job has a label of its own (run=i).
                labels += [dict(job_id=job_id, key="team", value="x" if i % 10 < 2 else "y",
                                project_id=projects[p], created_at=created),
                           dict(job_id=job_id, key="run", value=str(i), project_id=projects[p],
                                created_at=created)]
                if status == "succeeded":
                    finished.append(job_id)
                    deliveries.append(dict(
                        id=new_id(), endpoint_id=_endpoint_of(session, projects[p]),
                        job_id=job_id, event_type="job.succeeded", body="{}",
                        status="succeeded", attempts=1, created_at=created, updated_at=created))
            labelled = _seed_labelled_project(session, start)
            session.execute(insert(Job), jobs)
            session.execute(insert(JobLabel), labels)
            session.execute(insert(WebhookDelivery), deliveries)
            session.commit()
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE")
        yield Seeded(sessions, projects, checkpoints, datasets, finished, labelled)
        engine.dispose()


def _seed_labelled_project(session: Session, start: datetime) -> str:
    """A third project of LABELLED_JOBS finished jobs, interleaved in time with the other two's,
    a tenth carrying team=x: the label filter's plan is measured on it. Big enough that, as at
    organisation size, reading the project's jobs costs more than the page (on 150 jobs the
    planner may hash them all whatever the indexes); finished, so the queue is unchanged."""
    project = create_project(session, "plans-labels")
    checkpoint = new_id()
    session.execute(insert(Checkpoint), [dict(
        id=checkpoint, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
        storage_key=f"c/{checkpoint}", num_tensors=1, num_parameters=1, created_at=start,
        project_id=project.id)])
    jobs, labels = [], []
    for i in range(LABELLED_JOBS):
        job_id = new_id()
        created = start + timedelta(milliseconds=150 * i)
        jobs.append(dict(id=job_id, status="succeeded", spec={}, checkpoint_id=checkpoint,
                         cancel_requested=False, attempts=0, stage_progress=1.0,
                         created_at=created, updated_at=created, project_id=project.id))
        labels += [dict(job_id=job_id, key="team", value="x" if i % 10 == 0 else "y",
                        project_id=project.id, created_at=created),
                   dict(job_id=job_id, key="run", value=str(i), project_id=project.id,
                        created_at=created)]
    session.execute(insert(Job), jobs)
    session.execute(insert(JobLabel), labels)
    return project.id


def _endpoint_of(session: Session, project_id: str) -> str:
    return session.query(WebhookEndpoint.id).filter_by(project_id=project_id).scalar()


def captured(engine: Engine, run: Callable[[], Any], table: str) -> tuple[str, Any]:
    """The first statement reading ``table`` that ``run`` executes, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if f"FROM {table}" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert seen, f"no SELECT from {table} was run"
    return seen[0]


def plan_nodes(engine: Engine, statement: str, parameters: Any, *,
               index_paths_only: bool = True) -> list[dict[str, Any]]:
    """Every node of the statement's executed plan (EXPLAIN ANALYZE; index paths only unless
    ``index_paths_only`` is False: the planner's own choice)."""
    with engine.connect() as connection:
        if index_paths_only:
            connection.exec_driver_sql("SET enable_seqscan = off")
            connection.exec_driver_sql("SET enable_bitmapscan = off")
        found = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar_one()
        connection.rollback()
    plan = found if isinstance(found, list) else json.loads(found)
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


def wasted(nodes: list[dict[str, Any]], table: str) -> list[str]:
    """The scans of ``table`` that read rows only to throw them away, described."""
    return [f"{n['Node Type']} {n.get('Index Name', '')} ({n.get('Alias')}): "
            f"{n['Rows Removed by Filter']} rows removed by {n.get('Filter')}"
            for n in nodes if n.get("Relation Name") == table
            and n.get("Rows Removed by Filter", 0) > 0]


def rows_read(nodes: list[dict[str, Any]], alias: str) -> int:
    return sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0)
               for n in nodes if n.get("Alias") == alias and "Relation Name" in n)


def _engine(seeded: Seeded) -> Engine:
    return seeded.sessions.kw["bind"]  # type: ignore[no-any-return]


def test_a_page_after_a_cursor_reads_its_rows_only(seeded: Seeded) -> None:
    """Before, the cursor condition was ``created_at < t OR (created_at = t AND id < i)``, which
    bounds no index: a page read every job of the project older than the cursor, and each queue
    position every queued job newer than its own."""
    project = seeded.projects[0]
    with seeded.sessions() as session:
        first = job_queries.list_jobs(session, project_id=project, limit=40, with_spec=False,
                                      with_stages=False)
        assert first.next_cursor is not None
        statement, parameters = captured(_engine(seeded), lambda: job_queries.list_jobs(
            session, project_id=project, limit=10, cursor=first.next_cursor, with_spec=False,
            with_stages=False), "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == []
    assert rows_read(nodes, "jobs") <= 11  # the page and the row telling that one follows


def test_a_page_of_queued_jobs_reads_the_queue_once(seeded: Seeded) -> None:
    """Before, each queued job on the page counted the queued jobs ahead of it (a correlated
    count per row): a page of 20 of the 60 queued read about 20 x 50 index entries. Now the
    queue is numbered once per page (a window over the queued jobs)."""
    with seeded.sessions() as session:
        queued = session.query(Job).filter_by(status="queued").count()
        statement, parameters = captured(_engine(seeded), lambda: job_queries.list_jobs(
            session, status="queued", limit=20, with_spec=False, with_stages=False), "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == []
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in nodes
               if n.get("Relation Name") == "jobs")
    assert queued == 60 and read <= queued + 21, read  # the queue once, and the page


def test_a_status_filtered_page_reads_its_rows_only(seeded: Seeded) -> None:
    """Before migration 0021 the filter read the project's jobs newest first and dropped those
    of other statuses."""
    project = seeded.projects[1]
    with seeded.sessions() as session:
        first = job_queries.list_jobs(session, project_id=project, status="succeeded",
                                      limit=5, with_spec=False, with_stages=False)
        statement, parameters = captured(_engine(seeded), lambda: job_queries.list_jobs(
            session, project_id=project, status="succeeded", limit=5, cursor=first.next_cursor,
            with_spec=False, with_stages=False), "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == []
    assert rows_read(nodes, "jobs") <= 6


def test_a_label_filtered_page_reads_its_rows_only(seeded: Seeded) -> None:
    """A page of a project's jobs carrying a label, after a cursor, reads the page's label
    entries and jobs only. Before migration 0024 ``job_labels`` had neither project nor time:
    the filter walked the project's jobs newest first probing each for the label (nine in ten
    read for nothing here), or read every job carrying the label in every project (8,867 pages
    for a label on a tenth of the jobs in bench/api_load.py)."""
    project = seeded.labelled
    with seeded.sessions() as session:
        first = job_queries.list_jobs(session, project_id=project, labels={"team": "x"},
                                      limit=20, with_spec=False, with_stages=False)
        assert first.next_cursor is not None
        statement, parameters = captured(_engine(seeded), lambda: job_queries.list_jobs(
            session, project_id=project, labels={"team": "x"}, limit=20,
            cursor=first.next_cursor, with_spec=False, with_stages=False), "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == [] and wasted(nodes, "job_labels") == []
    labels = [n for n in nodes if n.get("Relation Name") == "job_labels"]
    assert [leading_column(_engine(seeded), n.get("Index Name")) for n in labels] == [
        "project_id"], labels
    # The page and the row telling that one follows, of each table (the queue's numbering
    # reads the queued jobs under another alias, queued_jobs).
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in labels) <= 21
    assert rows_read(nodes, "jobs") <= 21


def test_a_page_filtered_by_two_labels_reads_the_project_only(seeded: Seeded) -> None:
    """With a second label each entry of the first is checked for it within the project: no
    job or label entry of another project is read. The planner's own plan (sequential scans
    allowed): without the project in the second label's condition it read every project's
    entries of that label, by a sequential scan of job_labels here."""
    project = seeded.labelled
    with seeded.sessions() as session:
        statement, parameters = captured(_engine(seeded), lambda: job_queries.list_jobs(
            session, project_id=project, labels={"team": "x", "run": "1500"}, limit=20,
            with_spec=False, with_stages=False), "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters, index_paths_only=False)
    assert wasted(nodes, "jobs") == []
    labels = [n for n in nodes if n.get("Relation Name") == "job_labels"]
    assert labels and all(
        leading_column(_engine(seeded), n.get("Index Name")) == "project_id"
        or n.get("Index Name") == "pk_job_labels" for n in labels), [
        (n["Node Type"], n.get("Index Name"), n.get("Filter")) for n in labels]
    # At most the project's team=x entries (a tenth of LABELLED_JOBS) and one probe of each.
    assert sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0)
               for n in labels) <= 2 * LABELLED_JOBS // 10
    assert rows_read(nodes, "jobs") == 1


def test_the_active_job_count_reads_active_jobs_only(seeded: Seeded) -> None:
    """The quota checks (each job creation) and GET /v1/usage count a project's queued and
    running jobs; before migration 0021 that read every job of the project, or of every
    project with those statuses."""
    with seeded.sessions() as session:
        statement, parameters = captured(_engine(seeded), lambda: job_queries.count_active_jobs(
            session, seeded.projects[0]), "jobs")
        active = job_queries.count_active_jobs(session, seeded.projects[0])
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == []
    assert 0 < rows_read(nodes, "jobs") == active


def test_the_stored_bytes_quota_reads_a_row_per_kind_of_the_folded_ledger(
        seeded: Seeded) -> None:
    """The quota check (each upload and job creation, under the project's lock) and GET
    /v1/usage summed every checkpoint, dataset and artifact of the project and read the spec of
    each active job (``stored_bytes_by_kind``, now the reference): rows growing with the
    project's history, 3,354 pages for 5,000 jobs. Now they sum the project's stored-bytes
    ledger from its index (migration 0026); folded by the janitor, one row per kind, however
    many changes the history made."""
    project = seeded.projects[0]
    with seeded.sessions() as session:
        # A history: two changes per job of each project (an artifact stored, a reservation
        # lowered), as the writers append them.
        session.execute(insert(StoredBytesEntry), [
            dict(project_id=owner, kind=kind, delta=1)
            for owner in seeded.projects for _ in range(JOBS_PER_PROJECT)
            for kind in (storage_ledger.ARTIFACTS, storage_ledger.ACTIVE_JOBS)])
        session.commit()
        before = stored_bytes(session, project)
        history = plan_nodes(_engine(seeded), *captured(
            _engine(seeded), lambda: stored_bytes(session, project), "stored_bytes_ledger"))
        assert storage_ledger.fold(session) > 0
        assert stored_bytes(session, project) == before
        folded = captured(_engine(seeded), lambda: stored_bytes(session, project),
                          "stored_bytes_ledger")
        reference = captured(_engine(seeded), lambda: stored_bytes_by_kind(session, project),
                             "jobs")
    assert rows_read(history, "stored_bytes_ledger") >= 2 * JOBS_PER_PROJECT
    nodes = plan_nodes(_engine(seeded), *folded)
    assert [n["Node Type"] for n in nodes if "Relation Name" in n] == ["Index Only Scan"]
    assert wasted(nodes, "stored_bytes_ledger") == []
    assert rows_read(nodes, "stored_bytes_ledger") <= len(storage_ledger.KINDS)
    # The reference reads the project's active jobs (and its artifacts and rows beside).
    assert rows_read(plan_nodes(_engine(seeded), *reference), "jobs") >= JOBS_PER_PROJECT // 3


@pytest.mark.parametrize("column", ["checkpoint_id", "dataset_id"])
def test_the_in_use_check_of_a_delete_reads_the_users_only(seeded: Seeded, column: str) -> None:
    """DELETE /v1/checkpoints/{id} and /v1/datasets/{id} look for the jobs using the row: a
    sequential scan of every job of every project before migration 0021."""
    resource = (seeded.checkpoints if column == "checkpoint_id" else seeded.datasets)[0]

    def check() -> None:
        with seeded.sessions() as session, pytest.raises(Conflict):
            _refuse_if_used(session, getattr(Job, column), resource, column[:-3])

    statement, parameters = captured(_engine(seeded), check, "jobs")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "jobs") == []
    assert rows_read(nodes, "jobs") == JOBS_PER_PROJECT


def test_a_job_end_finds_its_deliveries_without_reading_the_log(seeded: Seeded) -> None:
    """A job's end (in the worker's final transaction) looks up the messages already written
    for it; before migration 0021 that read every project's whole delivery log."""
    job_id = seeded.finished[0]

    def end() -> None:
        with seeded.sessions() as session:
            enqueue_job_notifications(session, job_id, "job_succeeded", utcnow())
            session.rollback()

    statement, parameters = captured(_engine(seeded), end, "webhook_deliveries")
    nodes = plan_nodes(_engine(seeded), statement, parameters)
    assert wasted(nodes, "webhook_deliveries") == []
    assert rows_read(nodes, "webhook_deliveries") == 1
    # An index whose first column is not job_id (the endpoint's unique index) meets the
    # condition only by reading all its entries, which EXPLAIN does not count as rows removed.
    scans = [n for n in nodes if n.get("Relation Name") == "webhook_deliveries"]
    assert scans and all(leading_column(_engine(seeded), n.get("Index Name")) == "job_id"
                         for n in scans), scans


def leading_column(engine: Engine, index: str | None) -> str | None:
    """The first key column of the index ``index`` (None for a scan that uses none)."""
    if index is None:
        return None
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE c.relname = %(name)s", {"name": index}).scalar_one()


def test_a_delivery_page_after_a_cursor_reads_its_rows_only(seeded: Seeded) -> None:
    """The delivery log is paged like the other lists: a page after a cursor is bounded by the
    ``(endpoint_id, created_at, id)`` index exactly, even when many messages share the cursor's
    instant (one job end fans out to an endpoint's messages in one transaction, and a burst of
    job ends can share a timestamp). Before migration 0023 the index lacked ``id``: Postgres
    bounded it by ``created_at <=``, read every message of the cursor's instant again, dropped
    those already shown by filter and sorted the rest (40 rows for this page of 5)."""
    burst = 40
    with seeded.sessions() as session:
        endpoint = new_id()
        session.execute(insert(WebhookEndpoint), [dict(
            id=endpoint, project_id=seeded.projects[0], url="https://example.invalid/burst",
            secret="whsec_x", event_types=["job.succeeded"], created_at=utcnow())])
        instant = utcnow()
        session.execute(insert(WebhookDelivery), [dict(
            id=new_id(), endpoint_id=endpoint, job_id=new_id(), event_type="job.succeeded",
            body="{}", status="succeeded", attempts=1, created_at=instant, updated_at=instant)
            for _ in range(burst)])
        session.commit()
        try:
            first = webhooks.list_deliveries(session, endpoint, limit=5)
            assert first.next_cursor is not None
            statement, parameters = captured(_engine(seeded), lambda: webhooks.list_deliveries(
                session, endpoint, limit=5, cursor=first.next_cursor), "webhook_deliveries")
            nodes = plan_nodes(_engine(seeded), statement, parameters)
        finally:
            session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint))
            session.commit()
    scans = [n for n in nodes if n.get("Relation Name") == "webhook_deliveries"]
    assert [n.get("Index Name") for n in scans] == [
        "ix_webhook_deliveries_endpoint_id_created_at_id"]
    assert wasted(nodes, "webhook_deliveries") == []
    assert rows_read(nodes, "webhook_deliveries") <= 6  # the page and the row telling one follows


def test_a_jobs_warnings_read_that_jobs_events_only(seeded: Seeded) -> None:
    """GET /v1/jobs/{id} reads the job's warnings from the event log: through the ``(job_id,
    kind, id)`` index (migration 0025), so the rows read are the job's own warnings, never its
    other events (before: every event of the job, the kind a filter) nor the log of every job."""
    jobs_with_events = seeded.finished[:3]
    per_job = 40  # a warning in every fourth event, the rest epochs and the like
    with seeded.sessions() as session:
        session.execute(insert(JobEvent), [dict(
            job_id=job_id, kind="warning" if i % 4 == 0 else "epoch",
            payload={"stage": "mrc", "message": f"w{i % 8}"}, created_at=utcnow())
            for job_id in jobs_with_events for i in range(per_job)])
        session.commit()
        try:
            statement, parameters = captured(_engine(seeded), lambda: job_warnings(
                session, [jobs_with_events[1]]), "job_events")
            found = job_warnings(session, [jobs_with_events[1]])[jobs_with_events[1]]
            nodes = plan_nodes(_engine(seeded), statement, parameters)
        finally:
            session.execute(delete(JobEvent).where(JobEvent.job_id.in_(jobs_with_events)))
            session.commit()
    assert [w.message for w in found.items] == ["w0", "w4"] and found.items[0].count == 5
    scans = [n for n in nodes if n.get("Relation Name") == "job_events"]
    assert [n.get("Index Name") for n in scans] == ["ix_job_events_job_id_kind_id"], scans
    assert rows_read(nodes, "job_events") == per_job // 4  # its warnings only
