"""Fixtures of the persistence tests: sessions on real SQLite and real Postgres schemas, both built
by the Alembic migrations, a checkpoint row, and a factory of queued jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.db import create_db_engine, create_session_factory
from persistence.records import create_checkpoint
from tests.persistence.helpers import SPEC, T0


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(db_url)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def checkpoint_id(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        return create_checkpoint(
            session, filename="model.safetensors", size=123, sha256="0" * 64,
            format="safetensors", storage_key="checkpoints/x.safetensors", num_tensors=4,
            num_parameters=1000).id


@pytest.fixture
def new_job(sessions: sessionmaker[Session], checkpoint_id: str) -> Callable[..., str]:
    def create(labels: dict[str, str] | None = None, now: datetime = T0, **kwargs: Any) -> str:
        with sessions() as session:
            job, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                           labels=labels, now=now, **kwargs)
            assert created
            return job.id
    return create
