"""The worker registry (persistence/workers.py) and migration 0013 that makes its table, on real
SQLite and real Postgres schemas built by the Alembic migrations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from persistence import workers
from persistence.db import create_db_engine
from persistence.janitor import run_janitor
from persistence.migrate import downgrade_database, upgrade_database
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
