"""The worker registry in the API (api/services/workers.py): ``POST /v1/jobs`` refuses a
``config.device`` that no live worker has, accepts any device while no worker is live, and
``GET /v1/admin/workers`` lists the live workers. Worker rows are written directly here; the rows
of real worker processes are checked in tests/worker/test_tasks.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from persistence import workers
from persistence.models import utcnow
from tests.api.helpers import Api, digits_config, error_of, make_key, upload_checkpoint

pytestmark = pytest.mark.service


@pytest.fixture
def checkpoint_id(api: Api, small_cnn_file: Path) -> str:
    return str(upload_checkpoint(api, small_cnn_file)["id"])


def add_worker(api: Api, worker_id: str, devices: dict[str, int], *, queues: tuple[str, ...] = (),
               seconds_ago: float = 0.0, override: str | None = None) -> None:
    """A registry row as a worker process writes it, last seen ``seconds_ago``."""
    seen = utcnow() - timedelta(seconds=seconds_ago)
    info = workers.WorkerInfo(id=worker_id, hostname=worker_id.split(":")[0],
                              queues=list(queues or (api.settings.celery_queue,)),
                              devices=devices, device_override=override,
                              started_at=seen - timedelta(hours=1))
    with api.sessions() as session:
        workers.register_worker(session, info, now=seen)


def create(api: Api, checkpoint_id: str, device: str) -> Any:
    return api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                             "config": digits_config(device=device)})


def test_a_device_no_live_worker_has_is_refused_naming_what_they_have(
        api: Api, checkpoint_id: str) -> None:
    stale = 4 * api.settings.worker_heartbeat_seconds
    add_worker(api, "cpu-host:1:aa", {"cpu": 1})
    add_worker(api, "gpu-host:2:bb", {"cpu": 1, "cuda": 1})
    add_worker(api, "old-host:3:cc", {"cpu": 1, "cuda": 4, "mps": 1}, seconds_ago=stale)
    add_worker(api, "hook-host:4:dd", {"cpu": 1, "cuda": 4}, queues=("rift-webhooks",))

    for device in ("cuda:1", "mps", "xpu"):
        response = create(api, checkpoint_id, device)
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert (error["code"], error["field"]) == ("device_unavailable", "config.device")
        assert error["message"] == (f"no live worker has {device!r}: 2 workers, "
                                    "devices cpu; cuda:0")
        assert error["live_workers"] == [
            {"id": "cpu-host:1:aa", "hostname": "cpu-host", "devices": {"cpu": 1}},
            {"id": "gpu-host:2:bb", "hostname": "gpu-host", "devices": {"cpu": 1, "cuda": 1}}]
    assert api.count_jobs() == 0

    for device in ("cuda", "cuda:0", "cpu", "auto"):
        assert create(api, checkpoint_id, device).status_code == 201, device
    # A worker run with WORKER_DEVICE runs every job there: it takes any device.
    add_worker(api, "pinned-host:5:ee", {"cpu": 1}, override="cpu")
    assert create(api, checkpoint_id, "cuda:1").status_code == 201
    assert api.count_jobs() == 5


def test_any_device_is_accepted_while_no_worker_is_live(api: Api, checkpoint_id: str) -> None:
    assert create(api, checkpoint_id, "cuda:3").status_code == 201  # no worker at all
    add_worker(api, "old-host:1:aa", {"cpu": 1}, seconds_ago=4 * 30.0)
    add_worker(api, "hook-host:2:bb", {"cpu": 1}, queues=("rift-webhooks",))
    response = create(api, checkpoint_id, "xpu:1")  # none live on the stage queue
    assert response.status_code == 201, response.text


def test_admin_lists_the_live_workers(api: Api) -> None:
    add_worker(api, "b-host:2:bb", {"cpu": 1, "cuda": 2}, queues=("rift", "rift-webhooks"))
    add_worker(api, "a-host:1:aa", {"cpu": 1}, override="cpu")
    add_worker(api, "old-host:3:cc", {"cpu": 1}, seconds_ago=4 * 30.0)
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        response = admin.get("/v1/admin/workers")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [w["id"] for w in items] == ["a-host:1:aa", "b-host:2:bb"]
    assert {key: items[1][key] for key in ("hostname", "queues", "devices", "device_override")
            } == {"hostname": "b-host", "queues": ["rift", "rift-webhooks"],
                  "devices": {"cpu": 1, "cuda": 2}, "device_override": None}
    assert items[0]["device_override"] == "cpu"
    assert set(items[0]) == {"id", "hostname", "queues", "devices", "device_override",
                             "started_at", "last_seen_at"}

    refused = api.client.get("/v1/admin/workers")  # a read and write key
    assert refused.status_code == 403
    assert error_of(refused)["required_scope"] == "admin"
