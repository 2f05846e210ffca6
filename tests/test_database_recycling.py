"""The tests' Postgres pool (``DatabasePool`` in ``tests/service_fixtures.py``) hands a database
given back to a later test only as a fresh clone would be: no rows, sequences restarted, the
template's schema; one whose schema a test changed, or that a process is still connected to, is
dropped instead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from persistence.migrate import downgrade_database
from tests.database_recycling import truncate_database
from tests.service_fixtures import DatabasePool, _conninfo, _database_url

pytestmark = pytest.mark.service


@pytest.fixture
def pool(_postgres_template: str) -> Iterator[DatabasePool]:
    """A pool of its own keeping one database ready, so that the order of names is known."""
    pool = DatabasePool(_postgres_template, prefix="rift_pooltest", ready=1)
    yield pool
    pool.close()


def exists(name: str) -> bool:
    with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             (name,)).fetchone() is not None


def eventually(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def write_rows(name: str) -> None:
    """A project and a job's event: rows in two tables, the events' sequence moved on."""
    with psycopg.connect(_conninfo(name)) as connection:
        connection.execute("SET session_replication_role = replica")  # no job row needed
        connection.execute("INSERT INTO projects (id, name, created_at) "
                           "VALUES ('p1', 'one', now())")
        connection.execute("INSERT INTO job_events (job_id, kind, payload, created_at) "
                           "VALUES ('j1', 'warning', '{}', now())")


def test_a_database_given_back_is_handed_out_again_empty_with_its_sequences_restarted(
        pool: DatabasePool) -> None:
    first = pool.take()
    write_rows(first)
    pool.give_back(first)
    # One of the next two (the other was made ahead, perhaps) is the first, emptied instead of
    # dropped and cloned again.
    assert first in (pool.take(), pool.take())
    assert pool.recycled == 1
    with psycopg.connect(_conninfo(first)) as connection:
        assert connection.execute("SELECT count(*) FROM projects").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM job_events").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    write_rows(first)  # the sequence starts over, as in a fresh clone
    with psycopg.connect(_conninfo(first)) as connection:
        assert connection.execute("SELECT id FROM job_events").fetchall() == [(1,)]


def test_a_database_whose_schema_a_test_changed_is_dropped_not_handed_out(
        pool: DatabasePool) -> None:
    first = pool.take()
    downgrade_database(_database_url(first), "0012")
    pool.give_back(first)
    second = pool.take()
    third = pool.take()
    assert first not in (second, third) and pool.recycled == 0
    eventually(lambda: not exists(first))


def test_closing_the_pool_drops_the_databases_still_taken(_postgres_template: str) -> None:
    pool = DatabasePool(_postgres_template, prefix="rift_pooltest", ready=1)
    taken = pool.take()
    pool.close()  # as at the end of a session interrupted mid-test
    assert not exists(taken)


def test_a_database_still_connected_to_is_dropped_not_handed_out(pool: DatabasePool) -> None:
    first = pool.take()
    # A process the test left running (autocommit: the pool's DROP ... WITH (FORCE) may end it).
    with psycopg.connect(_conninfo(first), autocommit=True) as lingering:
        lingering.execute("SELECT 1")
        pool.give_back(first)
        second = pool.take()
        third = pool.take()
    assert first not in (second, third) and pool.recycled == 0
    eventually(lambda: not exists(first))


def test_emptying_gives_up_on_a_lock_someone_holds_instead_of_waiting(
        pool: DatabasePool) -> None:
    first = pool.take()
    raised: list[BaseException] = []

    def empty() -> None:
        with psycopg.connect(_conninfo(first)) as connection:
            try:
                truncate_database(connection, lock_timeout_s=0.5)
            except psycopg.Error as exc:
                raised.append(exc)

    with psycopg.connect(_conninfo(first)) as holder:
        holder.execute("LOCK TABLE projects IN ACCESS SHARE MODE")  # held until the block ends
        emptying = threading.Thread(target=empty)
        emptying.start()
        emptying.join(timeout=30)
        stalled = emptying.is_alive()
    emptying.join()  # the holder let go: a stalled TRUNCATE goes through now
    assert not stalled, "TRUNCATE waited on the lock instead of giving up"
    assert [type(exc) for exc in raised] == [psycopg.errors.LockNotAvailable]
    pool.give_back(first)


def test_the_tests_connections_commit_without_waiting_for_the_disk(postgres_url: str) -> None:
    # The API's, the workers' and the tests' own connections (through DATABASE_URL), and the
    # pool's: a commit waited 3.3 ms for its WAL to reach the disk here, 0.22 ms without.
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"
    finally:
        engine.dispose()
    name = sa.make_url(postgres_url).database
    assert name is not None
    with psycopg.connect(_conninfo(name)) as connection:
        assert connection.execute("SHOW synchronous_commit").fetchone() == ("off",)
