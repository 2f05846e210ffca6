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
