"""The job lifecycle (persistence/jobs.py) against real SQLite and real Postgres schemas, both
built by the Alembic migrations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.db import create_db_engine
from persistence.migrate import downgrade_database, upgrade_database
from persistence.models import (
    Base,
    InterpolationPoint,
    Job,
    JobLabel,
    JobStatus,
    Project,
    StageStatus,
)
from persistence.pages import InvalidCursor
from persistence.stages import ClaimOutcome, StageOutputs
from tests.persistence.helpers import (
    LEASE,
    MRC_ROWS,
    SPEC,
    T0,
    add_project,
    claim,
    event_kinds,
    finish,
    race,
    stage_row,
)

pytestmark = pytest.mark.service


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------
def test_migrations_build_exactly_the_models_schema_and_downgrade_cleanly(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade_database(db_url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_database(db_url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migration_0010_adds_the_robust_bound_of_interpolation_points(
        db_url: str, sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    with sessions() as session:
        session.add(InterpolationPoint(job_id=job_id, position=0, alpha=0.5, clean_accuracy=90.0,
                                       robust_accuracy=None, robust_accuracy_at_most=61.5))
        session.commit()
    engine = create_db_engine(db_url)
    try:
        def columns() -> set[str]:
            return {c["name"] for c in inspect(engine).get_columns("interpolation_points")}

        def rows() -> list[tuple[object, ...]]:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(
                    "SELECT * FROM interpolation_points ORDER BY position"))]

        downgrade_database(db_url, "0009")
        assert "robust_accuracy_at_most" not in columns()
        assert rows() == [(job_id, 0, 0.5, 90.0, None)]  # the point stays, its bound goes
        upgrade_database(db_url)
        assert "robust_accuracy_at_most" in columns()
        assert rows() == [(job_id, 0, 0.5, 90.0, None, None)]  # never stored: NULL
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Creating jobs
# --------------------------------------------------------------------------------------------
def test_create_job_records_stages_labels_and_an_event(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job(labels={"team": "vision", "run": "7"})
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == JobStatus.QUEUED and job.stage is None
        assert job.label_dict == {"team": "vision", "run": "7"}
        assert [(s.stage, s.status, s.attempts) for s in job.stages] == [
            ("mrc", "pending", 0), ("finetune", "pending", 0), ("interpolate", "pending", 0)]
        assert job.spec == SPEC
        assert job.created_at == T0 and job.created_at.tzinfo is not None
    assert event_kinds(sessions, job_id) == ["job_created"]


def test_idempotency_key_returns_the_same_job_or_conflicts(
        sessions: sessionmaker[Session], checkpoint_id: str) -> None:
    fingerprint = jobs.request_fingerprint({"spec": SPEC, "checkpoint_id": checkpoint_id})
    assert fingerprint == jobs.request_fingerprint({"checkpoint_id": checkpoint_id, "spec": SPEC})
    with sessions() as session:
        first, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                         idempotency_key="key-1", request_hash=fingerprint)
        assert created
    with sessions() as session:
        again, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                         idempotency_key="key-1", request_hash=fingerprint)
        assert not created and again.id == first.id
    with sessions() as session, pytest.raises(jobs.IdempotencyConflict, match="key-1"):
        jobs.create_job(session, spec={**SPEC, "seed": 1}, checkpoint_id=checkpoint_id,
                        idempotency_key="key-1", request_hash="f" * 64)


def test_concurrent_requests_with_one_idempotency_key_create_one_job(
        sessions: sessionmaker[Session], checkpoint_id: str) -> None:
    def create(start: Callable[[], None]) -> tuple[str, bool]:
        with sessions() as session:
            start()
            job, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                           idempotency_key="same", request_hash="h")
            return job.id, created

    seen = race(4, create, jobs.IdempotencyConflict)
    assert seen.errors == [] and seen.refused == []
    results = seen.values
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_concurrent_creators_never_pass_the_active_job_limit(
        sessions: sessionmaker[Session], checkpoint_id: str) -> None:
    with sessions() as session:
        project = Project(name="busy")
        session.add(project)
        session.commit()
        project_id = project.id

    def create(start: Callable[[], None]) -> str:
        with sessions() as session:
            # Each request has read the count before any of them inserts (the API's early
            # check); only the count under the project's lock may decide.
            early = jobs.count_active_jobs(session, project_id)
            session.commit()
            start()
            assert early == 0
            job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                     project_id=project_id, max_active_jobs=3)
            return job.id

    seen = race(8, create, jobs.ActiveJobLimitReached)
    assert seen.errors == []
    assert len(seen.values) == 3 and len(seen.refused) == 5
    refused = [exc for exc in seen.refused if isinstance(exc, jobs.ActiveJobLimitReached)]
    assert len(refused) == 5 and all(exc.limit == 3 and exc.active == 3 for exc in refused)
    with sessions() as session:
        assert jobs.count_active_jobs(session, project_id) == 3


def test_a_request_whose_key_was_recorded_while_it_waited_is_answered_not_refused(
        sessions: sessionmaker[Session], checkpoint_id: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The same request twice at once, at a project's limit of one job: the copy looked its key
    # up before the first was committed, then waited for the project's lock. Before: it
    # counted the first one's job and was refused (ActiveJobLimitReached: a 429 for a replay).
    with sessions() as session:
        project = Project(name="retrying")
        session.add(project)
        session.commit()
        project_id = project.id
    terms = dict(spec=SPEC, checkpoint_id=checkpoint_id, idempotency_key="again",
                 request_hash="h", project_id=project_id, max_active_jobs=1)
    with sessions() as session:
        first, created = jobs.create_job(session, **terms)  # type: ignore[arg-type]
        assert created
    looked: list[str] = []
    real_lookup = jobs._job_by_idempotency_key

    def before_the_first_committed(session: Session, key: str) -> jobs.Job | None:
        looked.append(key)
        return None if len(looked) == 1 else real_lookup(session, key)

    monkeypatch.setattr(jobs, "_job_by_idempotency_key", before_the_first_committed)
    with sessions() as session:
        again, created = jobs.create_job(session, **terms)  # type: ignore[arg-type]
    assert (again.id, created) == (first.id, False)
    with sessions() as session, pytest.raises(jobs.IdempotencyConflict):
        looked.clear()
        jobs.create_job(session, **{**terms, "request_hash": "other"})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------
def test_events_page_by_id(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    with sessions() as session:
        for epoch in range(5):
            jobs.append_event(session, job_id, "epoch", {"epoch": epoch})
        first = jobs.list_events(session, job_id, limit=3)
        rest = jobs.list_events(session, job_id, after_id=first[-1].id)
    assert [e.kind for e in first] == ["job_created", "epoch", "epoch"]
    assert [e.payload["epoch"] for e in rest] == [2, 3, 4]
    assert first[0].created_at.tzinfo is not None


def test_event_ids_are_never_given_twice(sessions: sessionmaker[Session],
                                         new_job: Callable[..., str]) -> None:
    # Before, on SQLite: the next event after deleting the job holding the newest ones got
    # their ids again (the table's largest id + 1), as no Postgres sequence ever does.
    kept, deleted = new_job(), new_job()
    with sessions() as session:
        given = [jobs.append_event(session, job_id, "epoch", {}).id
                 for job_id in (kept, deleted, deleted)]
        session.execute(delete(Job).where(Job.id == deleted))  # its events go with it
        session.commit()
        assert jobs.append_event(session, kept, "epoch", {}).id > max(given)


# --------------------------------------------------------------------------------------------
# Cancellation
# --------------------------------------------------------------------------------------------
def test_cancelling_a_queued_job_ends_it_at_once(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    with sessions() as session:
        job = jobs.request_cancel(session, job_id, now=T0)
        assert (job.status, job.cancel_requested, job.finished_at) == ("cancelled", True, T0)
    assert claim(sessions, job_id).outcome == ClaimOutcome.INACTIVE
    assert stage_row(sessions, job_id, "mrc").attempts == 0
    with sessions() as session, pytest.raises(jobs.JobAlreadyFinished, match="cancelled"):
        jobs.request_cancel(session, job_id)


def test_cancelling_a_running_job_asks_its_worker(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        assert not stages.should_stop(session, job_id)
        job = jobs.request_cancel(session, job_id, now=T0 + timedelta(seconds=1))
        assert (job.status, job.cancel_requested) == ("running", True)
        assert stages.should_stop(session, job_id)
        job = stages.mark_cancelled(session, job_id)
        assert job.status == "cancelled"
    assert stage_row(sessions, job_id, "mrc").status == StageStatus.CANCELLED
    assert event_kinds(sessions, job_id)[-2:] == ["cancel_requested", "job_cancelled"]


def test_module_names_have_no_length_bound(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    """A deeply nested model's module path (here 400 characters) is recorded whole; the columns
    were VARCHAR(255), which PostgreSQL refused mid-stage (migration 0016)."""
    deep = ".".join(["encoder", *(f"block{i}" for i in range(60)), "proj"])
    assert len(deep) > 255
    rows = [{**MRC_ROWS[0], "name": deep}, MRC_ROWS[1]]
    job_id = new_job()
    claim(sessions, job_id)
    finish(sessions, job_id, "mrc", outputs=StageOutputs(mrc_rows=rows, selected_module=deep))
    with sessions() as session:
        assert [row.module for row in jobs.get_mrc_rows(session, job_id)] == [deep, "fc"]
        assert jobs.get_job(session, job_id).selected_module == deep


def test_cancelling_between_stages_or_after_a_crash_ends_the_job(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    finish(sessions, job_id, "mrc", outputs=StageOutputs(mrc_rows=MRC_ROWS, selected_module="fc"))
    with sessions() as session:
        assert jobs.request_cancel(session, job_id, now=T0).status == "cancelled"
    assert stage_row(sessions, job_id, "mrc").status == StageStatus.DONE  # MRC stays recorded

    crashed = new_job()
    claim(sessions, crashed)
    with sessions() as session:
        job = jobs.request_cancel(session, crashed, now=T0 + timedelta(seconds=LEASE + 1))
        assert job.status == "cancelled"


def test_a_finished_job_cannot_be_cancelled(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        stages.fail_job(session, job_id, "invalid_config", "module 'x' does not exist")
        with pytest.raises(jobs.JobAlreadyFinished, match="failed"):
            jobs.request_cancel(session, job_id)
        job = jobs.get_job(session, job_id)
        assert (job.error_code, job.error_message) == ("invalid_config",
                                                       "module 'x' does not exist")


# --------------------------------------------------------------------------------------------
# Queue and listing
# --------------------------------------------------------------------------------------------
def test_queue_position_counts_the_queued_jobs_ahead(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    ids = [new_job(now=T0 + timedelta(seconds=i)) for i in range(3)]
    with sessions() as session:
        assert [jobs.queue_position(session, jobs.get_job(session, i)) for i in ids] == [1, 2, 3]
    claim(sessions, ids[0])
    with sessions() as session:
        jobs.request_cancel(session, ids[1])
        positions = [jobs.queue_position(session, jobs.get_job(session, i)) for i in ids]
    assert positions == [None, None, 1]


def test_list_jobs_filters_by_status_and_labels_and_pages(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    ids = [new_job(labels={"team": "a" if i % 2 else "b", "n": str(i)},
                   now=T0 + timedelta(seconds=i)) for i in range(5)]
    claim(sessions, ids[4])
    with sessions() as session:
        page = jobs.list_jobs(session, limit=2)
        assert [j.id for j in page.jobs] == [ids[4], ids[3]] and page.next_cursor
        page2 = jobs.list_jobs(session, limit=2, cursor=page.next_cursor)
        assert [j.id for j in page2.jobs] == [ids[2], ids[1]]
        page3 = jobs.list_jobs(session, limit=2, cursor=page2.next_cursor)
        assert [j.id for j in page3.jobs] == [ids[0]] and page3.next_cursor is None
        assert [j.id for j in jobs.list_jobs(session, labels={"team": "a"}).jobs] == [
            ids[3], ids[1]]
        assert [j.id for j in jobs.list_jobs(session, labels={"team": "a", "n": "1"}).jobs] == [
            ids[1]]
        assert [j.id for j in jobs.list_jobs(session, status="running").jobs] == [ids[4]]
        queued_b = jobs.list_jobs(session, status=["queued"], labels={"team": "b"}).jobs
        assert [j.id for j in queued_b] == [ids[2], ids[0]]
        with pytest.raises(InvalidCursor):
            jobs.list_jobs(session, cursor="not-a-cursor")


def test_a_projects_label_filter_pages_as_the_unfiltered_list_does(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    """A label-filtered page of a project walks the labels' copies of the job's project and
    instant (migration 0024): the same jobs in the same order as filtering the project's whole
    list, across pages, with several labels, jobs sharing an instant, another project's jobs
    carrying the same label in between, and a deleted job."""
    for project in ("pa", "pb"):
        add_project(sessions, project)
    made: list[tuple[str, str, dict[str, str]]] = []  # (project, id, labels), oldest first
    for i in range(24):
        project = ("pa", "pb")[i % 2]
        labels = {"team": "x" if i % 3 else "y", "n": str(i % 5)}
        # Three jobs at each instant: the cursor's id breaks ties.
        made.append((project, new_job(labels=labels, now=T0 + timedelta(seconds=i // 3),
                                      project_id=project), labels))
    deleted = made[14][1]  # pa's, team=x
    with sessions() as session:
        session.execute(delete(Job).where(Job.id == deleted))
        session.commit()
        everything = jobs.list_jobs(session, project_id="pa", limit=100).jobs
        assert deleted not in [job.id for job in everything]

        def walk(labels: dict[str, str], limit: int) -> list[str]:
            seen, cursor = [], None
            while True:
                page = jobs.list_jobs(session, project_id="pa", labels=labels, limit=limit,
                                      cursor=cursor, with_spec=False)
                seen += [job.id for job in page.jobs]
                assert len(page.jobs) <= limit
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor

        for labels in ({"team": "x"}, {"team": "y"}, {"n": "1"}, {"team": "x", "n": "3"},
                       {"n": "3", "team": "x"}, {"team": "z"}):
            wanted = [job.id for job in everything
                      if all(job.label_dict.get(k) == v for k, v in labels.items())]
            assert labels == {"team": "z"} or wanted, labels
            for limit in (1, 2, 5, 100):
                assert walk(labels, limit) == wanted, (labels, limit)
        queued_x = jobs.list_jobs(session, project_id="pa", status="queued",
                                  labels={"team": "x"}, limit=100).jobs
        assert [job.id for job in queued_x] == [
            job.id for job in everything if job.label_dict["team"] == "x"]
        # A page that numbers no queue (no queued status asked) is built without its join.
        assert [job.id for job in jobs.list_jobs(
            session, project_id="pa", status=["running", "queued"], labels={"team": "x"},
            limit=3).jobs] == [job.id for job in queued_x][:3]
        assert jobs.list_jobs(session, project_id="pa", status="running",
                              labels={"team": "x"}).jobs == []
        assert [job.id for job in jobs.list_jobs(session, project_id="pb",
                                                 labels={"team": "x"}).jobs] == [
            job_id for project, job_id, labels in reversed(made)
            if project == "pb" and labels["team"] == "x" and job_id != deleted]
        # Each label row holds its job's project and instant.
        rows = session.execute(select(JobLabel.job_id, JobLabel.project_id, JobLabel.created_at,
                                      Job.project_id, Job.created_at)
                               .join(Job, Job.id == JobLabel.job_id)).all()
        assert len(rows) == 2 * 23
        assert all(row[1] == row[3] and row[2] == row[4] for row in rows)


def test_migration_0024_copies_the_jobs_project_and_instant_onto_their_labels(
        db_url: str, sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    add_project(sessions, "pa")
    ids = [new_job(labels={"team": "x", "n": str(i)}, now=T0 + timedelta(seconds=i),
                   project_id="pa" if i % 2 else None) for i in range(4)]
    engine = create_db_engine(db_url)
    try:
        def columns() -> set[str]:
            return {c["name"] for c in inspect(engine).get_columns("job_labels")}

        downgrade_database(db_url, "0023")
        assert columns() == {"job_id", "key", "value"}
        upgrade_database(db_url)
        assert "created_at" in columns() and "project_id" in columns()
        with sessions() as session:
            copies = {(row.job_id, row.key): (row.project_id, row.created_at)
                      for row in session.execute(select(JobLabel)).scalars()}
            assert copies == {(job_id, key): ("pa" if i % 2 else None,
                                              T0 + timedelta(seconds=i))
                              for i, job_id in enumerate(ids) for key in ("n", "team")}
            page = jobs.list_jobs(session, project_id="pa", labels={"team": "x"}, limit=1)
            assert [job.id for job in page.jobs] == [ids[3]]
            assert [job.id for job in jobs.list_jobs(
                session, project_id="pa", labels={"team": "x"}, cursor=page.next_cursor).jobs
            ] == [ids[1]]
    finally:
        engine.dispose()
