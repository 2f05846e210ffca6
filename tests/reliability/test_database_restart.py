"""Postgres restarted under a running API (every connection of its database ended by the server,
as a restart or a failover does): the next requests are answered on new connections, without
restarting the API (the pool tests each connection it hands out: ``pool_pre_ping``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.api.helpers import Api
from tests.reliability.conftest import create_job, upload

pytestmark = [pytest.mark.service]


def _end_every_connection(api: Api) -> int:
    """Ask the server to end every other connection to the API's database; how many it ended."""
    engine = sa.create_engine(api.settings.database_url.replace("postgresql://",
                                                                "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            ended = connection.execute(sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
    finally:
        engine.dispose()
    return int(ended)


def test_requests_after_the_database_dropped_every_connection_are_answered(
        api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    assert create_job(api.client, checkpoint["id"]).status_code == 201
    assert _end_every_connection(api) >= 1  # the API's pooled connections were open
    for _ in range(3):  # each pooled connection is found dead before use, not by the route
        assert api.client.get("/v1/jobs").status_code == 200
        assert api.client.get("/readyz").status_code == 200
    assert create_job(api.client, checkpoint["id"]).status_code == 201
