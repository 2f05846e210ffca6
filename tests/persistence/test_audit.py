"""``persistence.audit`` on SQLite and Postgres: the janitor prunes events past
``AUDIT_RETENTION_DAYS`` (0 keeps them), and ``rift-admin`` records its changes as
``rift-admin`` (no key) and lists them with ``audit list``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from persistence.admin_cli import run
from persistence.audit import Actor, page_audit_events, prune_audit_events, record_audit_event
from persistence.janitor import run_janitor
from persistence.models import AuditEvent, utcnow
from persistence.settings import Settings


def _settings(db_url: str, folder: Path, **extra: object) -> Settings:
    return Settings(database_url=db_url, broker_url="memory://", store_root=folder / "objects",
                    work_dir=folder / "work", log_format="text", **extra)  # type: ignore[arg-type]


def _record(sessions: sessionmaker[Session], days_ago: float) -> str:
    with sessions() as session:
        event = record_audit_event(session, Actor.key("k" * 32, "abcdefabcdef"), "job.deleted",
                                   project_id="p" * 32, resource_id=f"job-{days_ago}",
                                   now=utcnow() - timedelta(days=days_ago))
        session.commit()
        return event.id


def test_the_janitor_prunes_events_past_the_retention(
        sessions: sessionmaker[Session], db_url: str, tmp_path: Path) -> None:
    old, recent = _record(sessions, 40), _record(sessions, 10)
    settings = _settings(db_url, tmp_path, audit_retention_days=30)
    with sessions() as session:
        assert run_janitor(session, settings.build_object_store(), settings,
                           dry_run=True).audit_events_pruned == 1
        assert run_janitor(session, settings.build_object_store(), settings,
                           ).audit_events_pruned == 1
        assert list(session.execute(select(AuditEvent.id)).scalars()) == [recent]
        # 0: kept for ever, however old.
        assert prune_audit_events(session, 0, utcnow() + timedelta(days=10_000)) == 0
        assert old != recent


def test_the_retention_defaults_to_a_year_and_refuses_negatives(tmp_path: Path) -> None:
    assert _settings("sqlite://", tmp_path).audit_retention_days == 365
    with pytest.raises(ValidationError, match="audit_retention_days"):
        _settings("sqlite://", tmp_path, audit_retention_days=-1)


def test_rift_admin_records_its_changes_without_a_key(
        sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(db_url, tmp_path)
    assert run(["keys", "create", "--project", "vision"], settings=settings) == 0
    key = capsys.readouterr().out.strip()
    assert run(["keys", "list", "--output", "json"], settings=settings) == 0
    key_id = json.loads(capsys.readouterr().out)[0]["id"]
    assert run(["keys", "revoke", key_id], settings=settings) == 0
    assert run(["keys", "revoke", key_id], settings=settings) == 0  # again: nothing recorded
    assert run(["projects", "limits", "vision", "--max-active-jobs", "2"], settings=settings) == 0
    capsys.readouterr()

    assert run(["audit", "list", "--project", "vision", "--json"], settings=settings) == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert [e["action"] for e in listed] == [
        "project.limits_changed", "key.revoked", "key.created", "project.created"]
    assert {(e["actor"], e["actor_key_id"], e["actor_key_prefix"], e["project"])
            for e in listed} == {("rift-admin", None, None, "vision")}
    assert key.split("_", 2)[2] not in out
    assert run(["audit", "list", "--limit", "1"], settings=settings) == 0
    assert capsys.readouterr().out.split("\t")[2:4] == ["rift-admin", "project.limits_changed"]
    # Unknown project: refused (exit 2), naming how to ask for a deleted project's trail.
    assert run(["audit", "list", "--project", "gone"], settings=settings) == 2
    assert "by its id" in capsys.readouterr().err
    with sessions() as session:
        assert len(page_audit_events(session, project_id=None, limit=10, cursor=None,
                                     every_project=True).items) == 4
