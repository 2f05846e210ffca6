"""The worker registry (persistence/workers.py), migration 0013 that makes its table and the
migration that adds the datasets each worker holds, on real SQLite and real Postgres schemas built
by the Alembic migrations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from persistence import workers
from persistence.db import create_db_engine
from persistence.janitor import run_janitor
from persistence.migrate import alembic_config, downgrade_database, upgrade_database
from persistence.models import Worker
from persistence.settings import Settings
from tests.persistence.helpers import T0

pytestmark = pytest.mark.service

HEARTBEAT = 10.0


def info(worker_id: str = "host:1:aa", queues: tuple[str, ...] = ("rift",),
         devices: dict[str, int] | None = None, override: str | None = None
         ) -> workers.WorkerInfo:
    return workers.WorkerInfo(id=worker_id, hostname="host", queues=list(queues),
                              devices=devices if devices is not None else {"cpu": 1},
                              device_override=override, started_at=T0)


def row(sessions: sessionmaker[Session], worker_id: str) -> Worker | None:
    with sessions() as session:
        return session.get(Worker, worker_id)


def live_ids(sessions: sessionmaker[Session], seconds_later: float,
             queue: str | None = None) -> list[str]:
    with sessions() as session:
        return [w.id for w in workers.live_workers(session, heartbeat_seconds=HEARTBEAT,
                                                   queue=queue,
                                                   now=T0 + timedelta(seconds=seconds_later))]


def test_migration_0013_makes_the_workers_table_and_downgrade_drops_it(
        db_url: str, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        workers.register_worker(session, info(), now=T0)
    engine = create_db_engine(db_url)
    try:
        downgrade_database(db_url, "0012")
        assert "workers" not in inspect(engine).get_table_names()
        upgrade_database(db_url)
        assert "workers" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert row(sessions, "host:1:aa") is None  # the rows went with the table
    with sessions() as session:
        workers.register_worker(session, info(), now=T0)
    assert row(sessions, "host:1:aa") is not None


def test_register_heartbeat_and_deregister(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert not workers.touch_worker(session, "host:1:aa", now=T0)  # not registered yet
        workers.register_worker(session, info(devices={"cpu": 1, "cuda": 2}, override="cpu"),
                                now=T0)
    first = row(sessions, "host:1:aa")
    assert first is not None
    assert (first.hostname, first.queues, first.devices, first.device_override) == (
        "host", ["rift"], {"cpu": 1, "cuda": 2}, "cpu")
    assert first.started_at == T0 and first.last_seen_at == T0
    with sessions() as session:
        assert workers.touch_worker(session, "host:1:aa", now=T0 + timedelta(seconds=25))
    renewed = row(sessions, "host:1:aa")
    assert renewed is not None
    assert renewed.last_seen_at == T0 + timedelta(seconds=25) and renewed.started_at == T0
    # Registering again (a retry, or after the janitor removed it) rewrites the one row.
    with sessions() as session:
        workers.register_worker(session, info(devices={"cpu": 1}),
                                now=T0 + timedelta(seconds=40))
    again = row(sessions, "host:1:aa")
    assert again is not None and again.devices == {"cpu": 1} and again.started_at == T0
    with sessions() as session:
        assert workers.deregister_worker(session, "host:1:aa")
        assert not workers.deregister_worker(session, "host:1:aa")
    assert row(sessions, "host:1:aa") is None


def test_live_workers_are_those_seen_within_three_heartbeats(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        workers.register_worker(session, info("b:2:bb", queues=("rift", "rift-webhooks")), now=T0)
        workers.register_worker(session, info("a:1:aa", queues=("rift-webhooks",)),
                                now=T0 + timedelta(seconds=10))
    assert live_ids(sessions, 0) == ["a:1:aa", "b:2:bb"]  # by id
    assert live_ids(sessions, 30) == ["a:1:aa", "b:2:bb"]  # 3 heartbeats: still live
    assert live_ids(sessions, 31) == ["a:1:aa"]
    assert live_ids(sessions, 0, queue="rift") == ["b:2:bb"]
    assert live_ids(sessions, 0, queue="other") == []


def test_stale_workers_are_removed_by_the_janitor(sessions: sessionmaker[Session],
                                                  db_url: str, tmp_path: Path) -> None:
    with sessions() as session:
        workers.register_worker(session, info("gone:1:aa"), now=T0)
        workers.register_worker(session, info("here:2:bb"), now=T0 + timedelta(seconds=20))
    settings = Settings(database_url=db_url, store_root=tmp_path / "objects",
                        work_dir=tmp_path / "work", worker_heartbeat_seconds=HEARTBEAT)
    later = T0 + timedelta(seconds=45)
    with sessions() as session:
        dry = run_janitor(session, settings.build_object_store(), settings, now=later,
                          dry_run=True)
        assert dry.stale_workers == ["gone:1:aa"]
        assert row(sessions, "gone:1:aa") is not None
        report = run_janitor(session, settings.build_object_store(), settings, now=later)
    assert report.stale_workers == ["gone:1:aa"] and report.removed == 1
    assert row(sessions, "gone:1:aa") is None and row(sessions, "here:2:bb") is not None
    with sessions() as session:
        assert workers.remove_stale_workers(session, heartbeat_seconds=HEARTBEAT,
                                            now=later) == []


def datasets_migration(db_url: str) -> tuple[str, str]:
    """(revision, down_revision) of the migration adding ``workers.datasets``, read from Alembic:
    its number depends on the migrations merged beside it."""
    scripts = ScriptDirectory.from_config(alembic_config(db_url))
    found = [script for script in scripts.walk_revisions()
             if script.path.endswith("_worker_datasets.py")]
    assert len(found) == 1
    down = found[0].down_revision
    assert isinstance(down, str)
    return found[0].revision, down


def test_the_datasets_held_are_registered_and_rewritten_by_a_heartbeat(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        workers.register_worker(session, workers.WorkerInfo(
            id="host:1:aa", hostname="host", queues=["rift"], devices={"cpu": 1},
            device_override=None, started_at=T0, datasets=["mnist", "cifar10"]), now=T0)
    first = row(sessions, "host:1:aa")
    assert first is not None and first.datasets == ["cifar10", "mnist"]  # by name
    with sessions() as session:
        # A plain heartbeat leaves them; one that brings a change rewrites them.
        assert workers.touch_worker(session, "host:1:aa", now=T0 + timedelta(seconds=10))
    renewed = row(sessions, "host:1:aa")
    assert renewed is not None and renewed.datasets == ["cifar10", "mnist"]
    with sessions() as session:
        assert workers.touch_worker(session, "host:1:aa", now=T0 + timedelta(seconds=20),
                                    datasets=["svhn", "cifar10", "mnist"])
        assert not workers.touch_worker(session, "gone:2:bb", datasets=["svhn"])
    changed = row(sessions, "host:1:aa")
    assert changed is not None and changed.datasets == ["cifar10", "mnist", "svhn"]
    assert changed.last_seen_at == T0 + timedelta(seconds=20)
    with sessions() as session:
        assert workers.touch_worker(session, "host:1:aa", datasets=[])  # all removed
    emptied = row(sessions, "host:1:aa")
    assert emptied is not None and emptied.datasets == []
    # A worker that does not say (an earlier release's registration) leaves NULL.
    with sessions() as session:
        workers.register_worker(session, info("old:3:cc"), now=T0)
    old = row(sessions, "old:3:cc")
    assert old is not None and old.datasets is None


def test_the_datasets_migration_adds_a_null_column_and_downgrade_keeps_the_rows(
        db_url: str, sessions: sessionmaker[Session]) -> None:
    revision, previous = datasets_migration(db_url)
    engine = create_db_engine(db_url)
    try:
        downgrade_database(db_url, previous)
        assert "datasets" not in {c["name"] for c in inspect(engine).get_columns("workers")}
        with sessions() as session:
            # A worker of the release before writes its row without the column.
            session.execute(Worker.__table__.insert().values(
                id="old:1:aa", hostname="old", queues=["rift"], devices={"cpu": 1},
                device_override=None, started_at=T0, last_seen_at=T0))
            session.commit()
        upgrade_database(db_url, revision)
        old = row(sessions, "old:1:aa")
        assert old is not None and old.datasets is None and old.devices == {"cpu": 1}
        with sessions() as session:
            assert workers.touch_worker(session, "old:1:aa", datasets=["mnist"])
        downgrade_database(db_url, previous)
        assert "datasets" not in {c["name"] for c in inspect(engine).get_columns("workers")}
        with engine.connect() as connection:
            assert connection.execute(Worker.__table__.select().with_only_columns(
                Worker.__table__.c.id)).scalars().all() == ["old:1:aa"]
    finally:
        upgrade_database(db_url)
        engine.dispose()
