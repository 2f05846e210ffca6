"""The migrations as an operator runs them: several processes migrating one PostgreSQL
database at once (compose's api scaled to N replicas each run ``alembic upgrade head``), and an
old database holding rows (PostgreSQL and embedded SQLite) taken up every revision and back down
again without losing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from persistence.migrate import alembic_config, downgrade_database, upgrade_database
from persistence.schema import expected_revision
from persistence.settings import Settings
from tests.service_fixtures import empty_database

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _migrate_command(url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=url)
    return subprocess.Popen([sys.executable, "-m", "persistence.migrate"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_several_processes_migrating_one_database_at_once_all_succeed() -> None:
    # Without the advisory lock in migrations/env.py all but one stopped on Postgres's
    # duplicate-key error (pg_type_typname_nsp_index) with a traceback, the container exiting.
    with empty_database("rift_migrate") as url:
        runs = [_migrate_command(url) for _ in range(3)]
        results = [(run.wait(timeout=180), run.communicate()[1]) for run in runs]
        assert [code for code, _ in results] == [0, 0, 0], [err[-600:] for _, err in results]
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
                assert [row[0] for row in versions] == [expected_revision()]
        finally:
            engine.dispose()


def _revisions(url: str) -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(url))
    return [script.revision for script in reversed(list(script.walk_revisions()))]


def _fill_first_schema(engine: sa.Engine) -> None:
    """Rows of revision 0001: a job in every state with its stages, results, events, labels
    and artifacts (a module name longer than 255 characters after 0016 would be cut)."""
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO checkpoints VALUES ('c1', 'm.safetensors', 10, :h, "
                          "'safetensors', 'checkpoints/c1', 2, 20, :n)"), {"h": "a" * 64, "n": now})
        c.execute(sa.text("INSERT INTO datasets VALUES ('d1', 'd.npz', 'npz', 10, :h, "
                          "'datasets/d1', :n)"), {"h": "b" * 64, "n": now})
        for index, status in enumerate(JOB_STATUSES):
            job = {"j": f"job{index}", "n": now}
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage, stage_progress, spec, checkpoint_id, "
                "dataset_id, cancel_requested, attempts, created_at, updated_at) VALUES "
                "(:j, :s, 'mrc', 0.5, :spec, 'c1', 'd1', false, 1, :n, :n)"),
                {**job, "s": status, "spec": json.dumps({"seed": index})})
            for position, stage in enumerate(("mrc", "finetune", "interpolate")):
                c.execute(sa.text("INSERT INTO job_stages (job_id, stage, position, status, "
                                  "attempts) VALUES (:j, :st, :p, 'pending', 0)"),
                          {**job, "st": stage, "p": position})
            c.execute(sa.text("INSERT INTO mrc_rows VALUES (:j, 0, 'layer1.0.conv1', 10, 0.1, "
                              "0.2, 0.3, 0.4, 1.0)"), job)
            c.execute(sa.text("INSERT INTO epoch_metrics VALUES (:j, 0, 0.1, 0.2, 0.3, 0.4, 1)"),
                      job)
            c.execute(sa.text("INSERT INTO interpolation_points VALUES (:j, 0, 0.5, 0.9, 0.4)"),
                      job)
            c.execute(sa.text("INSERT INTO job_events (job_id, kind, payload, created_at) "
                              "VALUES (:j, 'created', '{}', :n)"), job)
            c.execute(sa.text("INSERT INTO job_labels VALUES (:j, 'team', 'vision')"), job)
            c.execute(sa.text("INSERT INTO artifacts VALUES (:j, 'tuned.safetensors', "
                              "'jobs/x/tuned.safetensors', 1, :h, 'application/octet-stream', "
                              ":n)"), {**job, "h": "c" * 64})


def _row_counts(engine: sa.Engine, tables: list[str]) -> dict[str, int]:
    with engine.connect() as connection:
        return {table: int(connection.execute(sa.text(f'SELECT count(*) FROM "{table}"'))
                           .scalar_one()) for table in tables}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema: an embedded SQLite file, a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rift.db'}"
        return
    with empty_database("rift_migrate") as url:
        yield url


def test_rows_of_the_first_schema_survive_every_upgrade_and_downgrade(empty_url: str) -> None:
    # SQLite: stopped at 0002 with "FOREIGN KEY constraint failed" on DROP TABLE checkpoints
    # (batch mode rebuilds a table; with foreign keys on, the DROP of the old one deletes or
    # refuses the rows that reference it), so an embedded database from 0001 holding a job
    # could not be upgraded, nor one from 0002 downgraded.
    engine = sa.create_engine(empty_url)
    try:
        revisions = _revisions(empty_url)
        upgrade_database(empty_url, revisions[0])
        _fill_first_schema(engine)
        tables = [t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"]
        before = _row_counts(engine, tables)
        for revision in revisions[1:]:  # one at a time: a failure names the revision
            upgrade_database(empty_url, revision)
        assert _row_counts(engine, tables) == before
        with engine.connect() as connection:
            statuses = connection.execute(sa.text("SELECT status FROM jobs ORDER BY id"))
            assert tuple(row[0] for row in statuses) == JOB_STATUSES
        for revision in reversed(revisions[:-1]):
            downgrade_database(empty_url, revision)
        assert _row_counts(engine, tables) == before
        upgrade_database(empty_url)  # and up again, over rows that went down and back
        assert _row_counts(engine, tables) == before
    finally:
        engine.dispose()


def test_a_database_refusing_the_url_stops_the_migration_with_one_line() -> None:
    # Was a 120-line traceback ending in SQLAlchemy's OperationalError.
    with empty_database("rift_migrate") as url:
        missing = sa.make_url(url).set(database="rift_no_such_database")
        run = _migrate_command(missing.render_as_string(hide_password=False))
        _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert err.strip().splitlines() == [
        'rift: DATABASE_URL: the database refused this connection: FATAL: database '
        '"rift_no_such_database" does not exist']


@pytest.mark.parametrize("command", [["-m", "persistence.migrate"],
                                     ["-m", "alembic", "upgrade", "head"]])
def test_a_database_of_a_newer_release_stops_the_migration_with_one_line(
        empty_url: str, command: list[str]) -> None:
    # Rolling the code back: `python -m persistence.migrate` ended in a 70-line traceback and
    # compose's `alembic upgrade head` in "FAILED: Can't locate revision identified by '0999'".
    upgrade_database(empty_url)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    finally:
        engine.dispose()
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=empty_url)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "rift: the database schema is at migration 0999, which this code does not know: the "
        "database was migrated by a newer release; deploy that release, or with its code run "
        f"`alembic downgrade {expected_revision()}` first"]


def _insert_project_p1_with_checkpoint_c1(c: sa.Connection, now: datetime, *, size: int,
                                          tensors: int) -> None:
    """Project ``p1`` and its safetensors checkpoint ``c1``, raw rows at an old revision."""
    c.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES ('p1', 'p1', :n)"),
              {"n": now})
    c.execute(sa.text(
        "INSERT INTO checkpoints (id, filename, size, sha256, format, storage_key, num_tensors, "
        "num_parameters, created_at, project_id) VALUES ('c1', 'm.safetensors', :size, :h, "
        "'safetensors', 'k/c1', :tensors, 20, :n, 'p1')"),
        {"size": size, "tensors": tensors, "h": "a" * 64, "n": now})


def test_the_upgrade_to_0026_fills_the_ledger_as_the_reference_counts(empty_url: str) -> None:
    """A database of 0025 holding a project's checkpoint, dataset, jobs active and ended with
    artifacts, and materializations: after the upgrade its stored-bytes ledger (what the quota
    check reads) equals the reference count from the rows, by kind."""
    from persistence.db import create_db_engine, create_session_factory
    from persistence.records import ledger_stored_bytes_by_kind, stored_bytes_by_kind
    from tests.persistence.helpers import SPEC

    upgrade_database(empty_url, "0025")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=1000, tensors=4)
            c.execute(sa.text(
                "INSERT INTO datasets (id, filename, kind, size, sha256, storage_key, created_at, "
                "project_id) VALUES ('d1', 'd.npz', 'npz', 70, :h, 'k/d1', :n, 'p1')"),
                {"h": "b" * 64, "n": now})
            # Queued; running with 300 bytes stored; succeeded with θ_FT of 400 bytes.
            for job, status, stored in (("q", "queued", 0), ("r", "running", 300),
                                        ("s", "succeeded", 400)):
                c.execute(sa.text(
                    "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, "
                    "cancel_requested, attempts, created_at, updated_at, project_id) VALUES "
                    "(:j, :s, 0, :spec, 'c1', false, 0, :n, :n, 'p1')"),
                    {"j": job, "s": status, "spec": json.dumps(SPEC), "n": now})
                if stored:
                    c.execute(sa.text(
                        "INSERT INTO artifacts VALUES (:j, 'finetuned.safetensors', 'k', :size, "
                        ":h, 'application/octet-stream', :n)"),
                        {"j": job, "size": stored, "h": "c" * 64, "n": now})
            # Two materializations queued: one to make (reserves θ_FT), one whose weights exist.
            for row, name in (("m1", "tuned@0.5.safetensors"), ("m2", "tuned@0.7.safetensors")):
                c.execute(sa.text(
                    "INSERT INTO materializations (id, job_id, alpha, evaluate, status, "
                    "artifact_name, attempts, created_at) VALUES (:m, 's', 0.5, false, 'queued', "
                    ":name, 0, :n)"), {"m": row, "name": name, "n": now})
            c.execute(sa.text(
                "INSERT INTO artifacts VALUES ('s', 'tuned@0.7.safetensors', 'k', 500, :h, "
                "'application/octet-stream', :n)"), {"h": "c" * 64, "n": now})
    finally:
        engine.dispose()
    upgrade_database(empty_url)
    engine = create_db_engine(empty_url)
    try:
        with create_session_factory(engine)() as session:
            reference = stored_bytes_by_kind(session, "p1")
            assert reference.reserved_by_active_jobs > 0
            assert reference.reserved_by_materializations == 400
            assert ledger_stored_bytes_by_kind(session, "p1") == reference
    finally:
        engine.dispose()


def test_0027_adds_the_compute_columns_empty_and_takes_them_away(empty_url: str) -> None:
    """A job created before the FLOP count has no compute estimate (NULL, never made up), a
    project no limit of its own (the setting's); the downgrade keeps the rows."""
    upgrade_database(empty_url, "0026")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, "
                "cancel_requested, attempts, created_at, updated_at, project_id, "
                "cost_estimate) VALUES ('j1', 'succeeded', 1, '{}', 'c1', false, 3, :n, :n, "
                "'p1', 1000)"), {"n": now})
        upgrade_database(empty_url, "0027")
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT cost_estimate, cost_gflop FROM jobs")).one() == \
                (1000, None)
            assert c.execute(sa.text("SELECT max_job_gflop FROM projects")).scalar_one() is None
            c.execute(sa.text("UPDATE jobs SET cost_gflop = 12.5"))
            c.execute(sa.text("UPDATE projects SET max_job_gflop = :big"), {"big": 2**63 - 1})
            assert c.execute(sa.text("SELECT max_job_gflop FROM projects")).scalar_one() == \
                2**63 - 1
        downgrade_database(empty_url, "0026")
        columns = {table: {column["name"] for column in sa.inspect(engine).get_columns(table)}
                   for table in ("jobs", "projects")}
        assert "cost_gflop" not in columns["jobs"] and "cost_estimate" in columns["jobs"]
        assert "max_job_gflop" not in columns["projects"]
        assert _row_counts(engine, ["jobs", "projects"]) == {"jobs": 1, "projects": 1}
    finally:
        engine.dispose()


def test_0028_adds_the_distinct_labels_columns_empty_and_takes_them_away(empty_url: str) -> None:
    """A dataset recorded before has no distinct labels (NULL: job creation's message then
    falls back to the labels' range); a list of labels round-trips; the downgrade keeps rows."""
    upgrade_database(empty_url, "0027")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
            c.execute(sa.text(
                "INSERT INTO datasets (id, filename, kind, size, sha256, storage_key, created_at, "
                "project_id, num_classes, label_min, label_max) VALUES ('d1', 'd.npz', 'npz', "
                "70, :h, 'k/d1', :n, 'p1', 201, 0, 200)"), {"h": "b" * 64, "n": now})
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, dataset_id, "
                "cancel_requested, attempts, created_at, updated_at, project_id) VALUES "
                "('j1', 'succeeded', 1, '{}', 'c1', 'd1', false, 3, :n, :n, 'p1')"), {"n": now})
        upgrade_database(empty_url, "0028")
        with engine.begin() as c:
            assert c.execute(sa.text(
                "SELECT num_classes, num_distinct_labels, distinct_labels FROM datasets")
            ).one() == (201, None, None)
            c.execute(sa.text("UPDATE datasets SET num_distinct_labels = 3, "
                              "distinct_labels = :labels"), {"labels": "[0, 100, 2147483648]"})
            stored = c.execute(sa.text("SELECT distinct_labels FROM datasets")).scalar_one()
            assert (json.loads(stored) if isinstance(stored, str) else stored) == \
                [0, 100, 2**31]
        downgrade_database(empty_url, "0027")
        columns = {column["name"] for column in sa.inspect(engine).get_columns("datasets")}
        assert not columns & {"num_distinct_labels", "distinct_labels"}
        assert "label_max" in columns
        assert _row_counts(engine, ["datasets", "jobs"]) == {"datasets": 1, "jobs": 1}
    finally:
        engine.dispose()


def test_0029_adds_the_value_range_columns_empty_and_takes_them_away(empty_url: str) -> None:
    """A dataset recorded before has no value range (NULL: job creation leaves attack.domain to
    the run-time check); doubles and per-channel lists round-trip; the downgrade keeps rows."""
    upgrade_database(empty_url, "0028")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
            c.execute(sa.text(
                "INSERT INTO datasets (id, filename, kind, size, sha256, storage_key, created_at, "
                "project_id, content, num_features, num_distinct_labels) VALUES ('d1', 'd.npz', "
                "'npz', 70, :h, 'k/d1', :n, 'p1', 'features', 2, 3)"), {"h": "b" * 64, "n": now})
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, dataset_id, "
                "cancel_requested, attempts, created_at, updated_at, project_id) VALUES "
                "('j1', 'succeeded', 1, '{}', 'c1', 'd1', false, 3, :n, :n, 'p1')"), {"n": now})
        upgrade_database(empty_url, "0029")
        with engine.begin() as c:
            assert c.execute(sa.text(
                "SELECT num_distinct_labels, value_min, value_max, channel_value_min, "
                "channel_value_max FROM datasets")).one() == (3, None, None, None, None)
            # float32 values as doubles (0.1 in float32), and an 8-bit pixel / 255
            low, high = -3.0000001192092896, 0.10000000149011612
            c.execute(sa.text("UPDATE datasets SET value_min = :low, value_max = :high, "
                              "channel_value_min = :lows, channel_value_max = :highs"),
                      {"low": low, "high": high, "lows": json.dumps([low, 1 / 255]),
                       "highs": json.dumps([0.0, high])})
            row = c.execute(sa.text("SELECT value_min, value_max, channel_value_min, "
                                    "channel_value_max FROM datasets")).one()
            lists = [json.loads(v) if isinstance(v, str) else v for v in row[2:]]
            assert (row[0], row[1], *lists) == (low, high, [low, 1 / 255], [0.0, high])
        downgrade_database(empty_url, "0028")
        columns = {column["name"] for column in sa.inspect(engine).get_columns("datasets")}
        assert not columns & {"value_min", "value_max", "channel_value_min", "channel_value_max"}
        assert "num_distinct_labels" in columns
        assert _row_counts(engine, ["datasets", "jobs"]) == {"datasets": 1, "jobs": 1}
    finally:
        engine.dispose()


def test_0031_adds_the_error_field_column_empty_and_takes_it_away(empty_url: str) -> None:
    """A job that failed before keeps its code and message with no field (NULL: the job's JSON
    says ``field: null``); a field round-trips; the downgrade keeps the rows and the error."""
    upgrade_database(empty_url, "0030")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, "
                "cancel_requested, attempts, created_at, updated_at, project_id, error_code, "
                "error_message) VALUES ('j1', 'failed', 0, '{}', 'c1', false, 1, :n, :n, 'p1', "
                "'invalid_config', 'outside attack.domain')"), {"n": now})
        upgrade_database(empty_url, "0031")
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT error_code, error_field FROM jobs")).one() == (
                "invalid_config", None)
            c.execute(sa.text("UPDATE jobs SET error_field = 'attack.domain'"))
            assert c.execute(sa.text("SELECT error_field FROM jobs")).scalar_one() == \
                "attack.domain"
        downgrade_database(empty_url, "0030")
        columns = {column["name"] for column in sa.inspect(engine).get_columns("jobs")}
        assert "error_field" not in columns and "error_message" in columns
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT error_code FROM jobs")).scalar_one() == \
                "invalid_config"
        assert _row_counts(engine, ["jobs"]) == {"jobs": 1}
    finally:
        engine.dispose()


def test_0033_adds_the_zero_gradient_column_empty_and_takes_it_away(empty_url: str) -> None:
    """An MRC row recorded before keeps its values with the flag unknown (NULL: the API says
    ``zero_gradient: null``); a flag round-trips; the downgrade keeps the row."""
    upgrade_database(empty_url, "0032")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, "
                "cancel_requested, attempts, created_at, updated_at, project_id) VALUES "
                "('j1', 'succeeded', 0, '{}', 'c1', false, 1, :n, :n, 'p1')"), {"n": now})
            c.execute(sa.text(
                "INSERT INTO mrc_rows (job_id, position, module, parameters, mrc, "
                "worst_robust_loss) VALUES ('j1', 0, 'branch', 10, 0.0, 1.5)"))
        upgrade_database(empty_url, "0033")
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT mrc, zero_gradient FROM mrc_rows")).one() == (
                0.0, None)
            c.execute(sa.text("UPDATE mrc_rows SET zero_gradient = true"))
            assert c.execute(sa.text("SELECT zero_gradient FROM mrc_rows")).scalar_one() in (
                True, 1)  # SQLite reads a raw boolean back as 1
        downgrade_database(empty_url, "0032")
        columns = {column["name"] for column in sa.inspect(engine).get_columns("mrc_rows")}
        assert "zero_gradient" not in columns and "exact" in columns
        assert _row_counts(engine, ["mrc_rows"]) == {"mrc_rows": 1}
    finally:
        engine.dispose()


def test_0034_adds_audit_events_that_outlive_their_project_and_takes_them_away(
        empty_url: str) -> None:
    """An event's ``project_id`` is no foreign key: deleting the project keeps its trail (a
    cascade would delete the record of who deleted it). The downgrade drops the table; the
    upgrade makes it again, empty."""
    upgrade_database(empty_url, "0033")
    now = datetime.now(UTC)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as c:
            _insert_project_p1_with_checkpoint_c1(c, now, size=10, tensors=2)
        upgrade_database(empty_url, "0034")
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO audit_events (id, occurred_at, project_id, actor, action, "
                "resource_kind, resource_id, details) VALUES ('e1', :n, 'p1', 'rift-admin', "
                "'project.deleted', 'project', 'p1', :d)"), {"n": now, "d": '{"name": "p1"}'})
            c.execute(sa.text("DELETE FROM checkpoints"))
            c.execute(sa.text("DELETE FROM projects"))
        assert _row_counts(engine, ["audit_events", "projects"]) == {"audit_events": 1,
                                                                      "projects": 0}
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("audit_events")}
        assert indexes == {"ix_audit_events_project_id_occurred_at_id",
                           "ix_audit_events_occurred_at_id"}
        downgrade_database(empty_url, "0033")
        assert "audit_events" not in sa.inspect(engine).get_table_names()
        upgrade_database(empty_url, "0034")
        assert _row_counts(engine, ["audit_events"]) == {"audit_events": 0}
    finally:
        engine.dispose()
