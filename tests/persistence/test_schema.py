"""The schema check: a database never migrated, behind, or migrated by a newer release is named as
such, with the command that fixes it; the API and worker entry points refuse to start on one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from persistence.db import create_db_engine
from persistence.migrate import alembic_config, downgrade_database, upgrade_database
from persistence.schema import MIGRATE_COMMAND, SchemaNotCurrent, check_schema, expected_revision
from persistence.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OLDER = "0012"


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_db_engine(postgres_url)
    yield engine
    engine.dispose()


def test_a_migrated_database_passes(engine: Engine) -> None:
    check_schema(engine)


def test_an_older_schema_names_both_revisions_and_the_command(postgres_url: str,
                                                               engine: Engine) -> None:
    downgrade_database(postgres_url, OLDER)
    with pytest.raises(SchemaNotCurrent) as raised:
        check_schema(engine)
    assert raised.value.current == OLDER and raised.value.expected == expected_revision()
    assert OLDER in raised.value.message and expected_revision() in raised.value.message
    assert MIGRATE_COMMAND in raised.value.message


def test_a_database_never_migrated(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaNotCurrent, match="never migrated") as raised:
            check_schema(engine)
        assert raised.value.current is None and MIGRATE_COMMAND in raised.value.message
    finally:
        engine.dispose()


def test_a_schema_from_a_newer_release(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaNotCurrent, match="newer release"):
        check_schema(engine)


def test_a_database_that_is_down_is_no_schema_verdict() -> None:
    from tests.api.helpers import free_port

    engine = create_db_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(Exception) as raised:
            check_schema(engine)
        assert not isinstance(raised.value, SchemaNotCurrent)
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "api.preflight"],
    [sys.executable, "-c", "from api.main import create_app; create_app()"],
], ids=["api-preflight", "create_app"])
def test_the_api_refuses_to_start_on_an_older_schema(command: list[str], postgres_url: str,
                                                      tmp_path: Path) -> None:
    downgrade_database(postgres_url, OLDER)
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=postgres_url, BROKER_URL="memory://",
               STORE_ROOT=str(tmp_path / "objects"), WORK_DIR=str(tmp_path / "work"))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rift: the database schema is at migration "
                                                   f"{OLDER}"), result.stderr
    assert MIGRATE_COMMAND in lines[0]


def test_the_api_starts_on_a_schema_from_a_newer_release(postgres_url: str, engine: Engine,
                                                         tmp_path: Path) -> None:
    """An older API or worker restarted during a rolling deploy (after its migration) starts,
    with a warning naming the revision: it used to stop, and so crash-looped until replaced, as
    a rollback's processes all did."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=postgres_url, BROKER_URL="memory://",
               STORE_ROOT=str(tmp_path / "objects"), WORK_DIR=str(tmp_path / "work"))
    result = subprocess.run([sys.executable, "-m", "api.preflight"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "9999_future" in result.stderr and "newer release" in result.stderr



#: The first migration after the last one that broke the release before it (0024 made
#: ``job_labels.created_at`` NOT NULL without a default, which a 0023 API never sets).
FIRST_ADDITIVE = "0025"


def _columns(engine: Engine) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(table, column) -> (nullable, has a server default) of every column of the schema."""
    inspector = inspect(engine)
    return {(table, column["name"]): (bool(column["nullable"]), column.get("default") is not None)
            for table in inspector.get_table_names()
            for column in inspector.get_columns(table)}


def _revisions_since(first: str) -> list[str]:
    """``first`` and every later revision up to the head, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    revisions = [expected_revision()]
    while revisions[-1] != first:
        down = script.get_revision(revisions[-1]).down_revision
        assert isinstance(down, str), f"{first} is not an ancestor of the head"
        revisions.append(down)
    return revisions[::-1]


def test_migrations_since_the_last_breaking_one_only_add(postgres_url: str,
                                                         engine: Engine) -> None:
    """What lets an older release serve a newer schema (above): each migration keeps every
    table and column, adds to an existing table no NOT NULL column without a server default
    (the older release's INSERTs leave it out) and makes no existing column NOT NULL. A
    migration that must break this waits one release, and moves FIRST_ADDITIVE and README
    "Schema and devices at start" along."""
    revisions = _revisions_since(FIRST_ADDITIVE)
    previous = ScriptDirectory.from_config(alembic_config("")).get_revision(
        FIRST_ADDITIVE).down_revision
    assert isinstance(previous, str)
    downgrade_database(postgres_url, previous)
    before = _columns(engine)
    breaks: list[str] = []
    for revision in revisions:
        upgrade_database(postgres_url, revision)
        after = _columns(engine)
        tables = {table for table, _ in before}
        breaks += [f"{revision} removes {table}.{column}" for table, column in before
                   if (table, column) not in after]
        breaks += [f"{revision} adds {table}.{column} NOT NULL without a server default"
                   for (table, column), (nullable, default) in after.items()
                   if table in tables and (table, column) not in before
                   and not nullable and not default]
        breaks += [f"{revision} makes {table}.{column} NOT NULL"
                   for (table, column), (nullable, _) in before.items()
                   if nullable and (table, column) in after and not after[table, column][0]]
        before = after
    assert not breaks
