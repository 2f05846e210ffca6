"""``rift-admin`` on a database it reaches but that was never migrated: one line saying what to
run, not "cannot reach the database: no such table: projects"."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistence.admin_cli import run
from persistence.migrate import upgrade_database
from persistence.settings import Settings


def _settings(folder: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{folder}/rift.db", broker_url="memory://",
                    store_root=folder / "objects", work_dir=folder / "work", log_format="text")


def test_an_unmigrated_database_says_to_migrate_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["keys", "list"], settings=_settings(tmp_path))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "cannot reach" not in err and "no such table" not in err
    assert err.startswith("rift-admin: the database has no schema (never migrated): run "
                          "`python -m persistence.migrate` with the same DATABASE_URL, then run "
                          "rift-admin again")
    upgrade_database(f"sqlite:///{tmp_path}/rift.db")
    assert run(["projects", "list"], settings=_settings(tmp_path)) == 0


def test_a_database_refusing_the_url_is_named_as_refused_not_unreachable(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Was "cannot reach the database (DATABASE_URL): connection failed: ... FATAL: ...", though
    # the server answered; the services say it as below (persistence/schema.py).
    settings = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:5432/rift_admin_no_such_database",
        broker_url="memory://", log_format="text")
    code = run(["projects", "list"], settings=settings)
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        'rift-admin: DATABASE_URL: the database refused this connection: FATAL: database '
        '"rift_admin_no_such_database" does not exist']
