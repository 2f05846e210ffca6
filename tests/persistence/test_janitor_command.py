"""``python -m persistence.janitor`` on a database it cannot use: one line naming what to do and
status 1, as every other entry point (was SQLAlchemy's traceback: "no such table: workers",
"connection refused")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from persistence.settings import Settings
from tests.api.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_janitor(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", STORE_ROOT=str(cwd / "objects"),
               **settings)
    return subprocess.run([sys.executable, "-m", "persistence.janitor", "--dry-run"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_janitor_on_a_database_never_migrated_says_what_to_run(tmp_path: Path) -> None:
    result = run_janitor(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "rift: the database has no schema (never migrated): run `python -m persistence.migrate` "
        "with the same DATABASE_URL, then run the janitor again"]
    assert result.stdout == ""


def test_the_janitor_on_a_database_not_answering_names_database_url(tmp_path: Path) -> None:
    port = free_port()
    result = run_janitor(tmp_path,
                         DATABASE_URL=f"postgresql+psycopg://rift:secret@127.0.0.1:{port}/rift")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "rift: DATABASE_URL: the database cannot be reached: connection failed"), lines
    assert "secret" not in result.stderr


def test_the_janitor_with_an_object_store_not_answering_says_so_in_one_line(
        tmp_path: Path, sqlite_url: str) -> None:
    # Was a 40-line traceback (StoreUnavailable raised from the janitor's first listing).
    port = free_port()
    result = run_janitor(tmp_path, DATABASE_URL=sqlite_url, STORE_KIND="s3", S3_BUCKET="rift",
                         S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_ACCESS_KEY="rift",
                         S3_SECRET_KEY="secret-key")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"rift: object store: cannot reach bucket 'rift' at http://127.0.0.1:{port}"), lines
    assert lines[0].endswith("check S3_ENDPOINT_URL") and "secret-key" not in result.stderr
    assert result.stdout == ""


def test_the_janitor_on_a_store_root_that_is_a_file_stops_naming_it(
        tmp_path: Path, sqlite_url: str) -> None:
    # Was status 0 and a report of nothing removed: the store's listing found no folder there.
    store_root = tmp_path / "objects"
    store_root.write_text("not a folder")
    result = run_janitor(tmp_path, DATABASE_URL=sqlite_url)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rift: object store: ") and \
        "STORE_ROOT" in lines[0], lines
    assert result.stdout == ""
