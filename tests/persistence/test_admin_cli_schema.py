"""``rift-admin`` on a database it reaches but that was never migrated: one line saying what to
run, not "cannot reach the database: no such table: projects"."""

from __future__ import annotations

import os
import sqlite3
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
    sqlite3.connect(tmp_path / "rift.db").close()  # a database, empty
    code = run(["keys", "list"], settings=_settings(tmp_path))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "cannot reach" not in err and "no such table" not in err
    assert err.startswith("rift-admin: the database has no schema (never migrated): run "
                          "`python -m persistence.migrate` with the same DATABASE_URL, then run "
                          "rift-admin again")
    upgrade_database(f"sqlite:///{tmp_path}/rift.db")
    assert run(["projects", "list"], settings=_settings(tmp_path)) == 0


def test_a_missing_sqlite_file_is_named_and_not_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """rift-admin in a shell without the service's DATABASE_URL, in another folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    default = Settings(broker_url="memory://", store_root=tmp_path / "objects",
                       work_dir=tmp_path / "work", log_format="text")
    code = run(["keys", "list", "--project", "vision"], settings=default)
    err = capsys.readouterr().err
    # Before: var/rift.db made here, empty, and "the database has no schema (never migrated)".
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"rift-admin: no database file at {tmp_path / 'var' / 'rift.db'} "
                          "(DATABASE_URL is not set: its default, sqlite:///./var/rift.db, "
                          "relative to the current folder)"), err
    assert not (tmp_path / "var").exists()
    named = run(["keys", "list"], settings=_settings(tmp_path / "elsewhere"))
    err = capsys.readouterr().err
    assert named == 1 and f"{tmp_path / 'elsewhere' / 'rift.db'} (DATABASE_URL)" in err
    assert not os.path.exists(tmp_path / "elsewhere")


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
