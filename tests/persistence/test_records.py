"""Upload rows and the stored-bytes quota: counted with the insert, under the project's lock, so
concurrent uploads of one project cannot pass it together (SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import Project
from persistence.records import (
    StorageQuotaReached,
    create_checkpoint,
    create_dataset,
    stored_bytes,
    stored_bytes_by_kind,
)
from tests.persistence.helpers import race


def _project(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        project = Project(name=name)
        session.add(project)
        session.commit()
        return project.id


def _checkpoint(session: Session, project_id: str, size: int, limit: int | None) -> str:
    return create_checkpoint(
        session, filename="m.safetensors", size=size, sha256="0" * 64, format="safetensors",
        storage_key="checkpoints/m.safetensors", num_tensors=1, num_parameters=1,
        project_id=project_id, max_stored_bytes=limit).id


def test_an_upload_over_the_quota_is_not_recorded(sessions: sessionmaker[Session]) -> None:
    project_id = _project(sessions, "small")
    with sessions() as session:
        _checkpoint(session, project_id, 600, limit=1000)
    with sessions() as session, pytest.raises(StorageQuotaReached) as raised:
        create_dataset(session, filename="d.npz", kind="npz", size=401, sha256="1" * 64,
                       storage_key="datasets/d.npz", project_id=project_id,
                       max_stored_bytes=1000)
    assert (raised.value.used, raised.value.incoming, raised.value.limit) == (600, 401, 1000)
    with sessions() as session:
        _checkpoint(session, project_id, 400, limit=1000)  # exactly at the quota is allowed
        assert stored_bytes(session, project_id) == 1000


def _statements(sessions: sessionmaker[Session], count: Callable[[], int]) -> list[str]:
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(sessions.kw["bind"], "before_cursor_execute", note)
    try:
        assert count() == 600
    finally:
        event.remove(sessions.kw["bind"], "before_cursor_execute", note)
    return [s for s in statements if not s.upper().startswith("BEGIN")]


def test_the_stored_bytes_are_summed_in_one_statement(sessions: sessionmaker[Session]) -> None:
    # Job creation counts them in its transaction on the way to the queue: the four sums were
    # four round trips; the quota now reads the project's ledger, in one.
    project_id = _project(sessions, "counted")
    with sessions() as session:
        _checkpoint(session, project_id, 600, limit=1000)
        reference = _statements(sessions, lambda: stored_bytes_by_kind(session, project_id).total)
        quota = _statements(sessions, lambda: stored_bytes(session, project_id))
    # The reference: the sums, then the active jobs' reservations.
    assert len(reference) == 2, reference
    assert len(quota) == 1 and "stored_bytes_ledger" in quota[0], quota


def test_concurrent_uploads_never_pass_the_stored_bytes_quota(
        sessions: sessionmaker[Session]) -> None:
    project_id = _project(sessions, "racing")

    def upload(start: Callable[[], None]) -> str:
        with sessions() as session:
            # Every request has passed the API's early check (nothing stored yet); only the
            # count under the project's lock may decide.
            assert stored_bytes(session, project_id) == 0
            session.commit()
            start()
            return _checkpoint(session, project_id, 100, limit=350)

    seen = race(8, upload, StorageQuotaReached)
    assert seen.errors == []
    assert len(seen.values) == 3 and len(seen.refused) == 5
    assert all(isinstance(exc, StorageQuotaReached) and exc.used == 300 and exc.limit == 350
               for exc in seen.refused)
    with sessions() as session:
        assert stored_bytes(session, project_id) == 300
