"""The schema check: a database never migrated, behind, or migrated by a newer release is named as
such, with the command that fixes it; the API and worker entry points refuse to start on one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from persistence.db import create_db_engine
from persistence.migrate import downgrade_database
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
