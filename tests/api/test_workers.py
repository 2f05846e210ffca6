"""The worker registry in the API (api/services/workers.py): ``POST /v1/jobs`` refuses a
``config.device`` that no live worker has, and a built-in dataset that no live worker able to run
the job holds in its DATA_ROOT, accepts either while no worker is live (the dataset with a
warning), and ``GET /v1/admin/workers`` lists the live workers with their datasets. Worker rows
are written directly here; the rows of real worker processes are checked in
tests/worker/test_tasks.py and tests/worker/test_data_root.py."""

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
               seconds_ago: float = 0.0, override: str | None = None,
               datasets: list[str] | None = None) -> None:
    """A registry row as a worker process writes it, last seen ``seconds_ago``."""
    seen = utcnow() - timedelta(seconds=seconds_ago)
    info = workers.WorkerInfo(id=worker_id, hostname=worker_id.split(":")[0],
                              queues=list(queues or (api.settings.celery_queue,)),
                              devices=devices, device_override=override,
                              started_at=seen - timedelta(hours=1), datasets=datasets)
    with api.sessions() as session:
        workers.register_worker(session, info, now=seen)


def create(api: Api, checkpoint_id: str, device: str, dataset: str = "digits") -> Any:
    # small_cnn pools globally: the digits checkpoint fits MNIST's 28×28 grey images too.
    return api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "config": digits_config(
        device=device, dataset={"name": dataset})})


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


def test_a_dataset_no_live_worker_holds_is_refused_naming_it_and_the_layout(
        api: Api, checkpoint_id: str) -> None:
    stale = 4 * api.settings.worker_heartbeat_seconds
    add_worker(api, "a-host:1:aa", {"cpu": 1}, datasets=["cifar10"])
    add_worker(api, "b-host:2:bb", {"cpu": 1, "cuda": 1}, datasets=[])
    add_worker(api, "old-host:3:cc", {"cpu": 1}, seconds_ago=stale, datasets=["mnist"])
    add_worker(api, "hook-host:4:dd", {"cpu": 1}, queues=("rift-webhooks",), datasets=["mnist"])

    response = create(api, checkpoint_id, "cpu", "mnist")
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("dataset_unavailable", "config.dataset.name")
    assert error["message"] == (
        "dataset 'mnist' is in no live worker's DATA_ROOT (2 live workers checked): place its "
        "files in the workers' DATA_ROOT in torchvision's layout (MNIST/raw/{"
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte}), or upload the data (POST /v1/datasets) and pass its "
        "'dataset_id'")
    assert error["workers_checked"] == 2
    assert error["live_workers"] == [
        {"id": "a-host:1:aa", "hostname": "a-host", "datasets": ["cifar10"]},
        {"id": "b-host:2:bb", "hostname": "b-host", "datasets": []}]
    assert error["expected_files"][0] == "MNIST/raw/train-images-idx3-ubyte"
    # Only the workers that could run the job's device count: a-host holds cifar10, but has
    # no CUDA device. (The dataset is refused before the checkpoint is fitted to it.)
    refused = error_of(create(api, checkpoint_id, "cuda", "cifar10"))
    assert (refused["code"], refused["workers_checked"]) == ("dataset_unavailable", 1)
    assert api.count_jobs() == 0

    # Digits ships with the library: no worker is asked.
    assert create(api, checkpoint_id, "cpu", "digits").status_code == 201
    # A worker that does not say which it holds (an earlier release) may hold it.
    add_worker(api, "c-host:5:ee", {"cpu": 1}, datasets=None)
    accepted = create(api, checkpoint_id, "cpu", "mnist")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["warnings"] == []


def test_a_dataset_held_by_a_live_worker_is_accepted(api: Api, checkpoint_id: str) -> None:
    add_worker(api, "a-host:1:aa", {"cpu": 1}, datasets=[])
    assert create(api, checkpoint_id, "cpu", "mnist").status_code == 422
    add_worker(api, "b-host:2:bb", {"cpu": 1}, datasets=["cifar10", "mnist"])
    accepted = create(api, checkpoint_id, "cpu", "mnist")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["warnings"] == []


def test_a_dataset_is_accepted_with_a_warning_while_no_worker_is_live(
        api: Api, checkpoint_id: str) -> None:
    add_worker(api, "old-host:1:aa", {"cpu": 1}, seconds_ago=4 * 30.0, datasets=[])
    response = create(api, checkpoint_id, "cpu", "mnist")
    assert response.status_code == 201, response.text
    warnings = response.json()["warnings"]
    assert [(w["stage"], w["count"]) for w in warnings] == [(None, 1)]
    assert warnings[0]["message"].startswith(
        "no live worker was registered when the job was created, so whether the workers' "
        "DATA_ROOT holds dataset 'mnist' was not checked")
    again = api.client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert again["warnings"] == warnings
    # Digits is in no folder: nothing to warn of.
    assert create(api, checkpoint_id, "cpu", "digits").json()["warnings"] == []


def test_admin_lists_the_live_workers(api: Api) -> None:
    add_worker(api, "b-host:2:bb", {"cpu": 1, "cuda": 2}, queues=("rift", "rift-webhooks"),
               datasets=["cifar10", "svhn"])
    add_worker(api, "a-host:1:aa", {"cpu": 1}, override="cpu")
    add_worker(api, "old-host:3:cc", {"cpu": 1}, seconds_ago=4 * 30.0)
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        response = admin.get("/v1/admin/workers")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [w["id"] for w in items] == ["a-host:1:aa", "b-host:2:bb"]
    assert {key: items[1][key] for key in ("hostname", "queues", "devices", "device_override",
                                           "datasets")
            } == {"hostname": "b-host", "queues": ["rift", "rift-webhooks"],
                  "devices": {"cpu": 1, "cuda": 2}, "device_override": None,
                  "datasets": ["cifar10", "svhn"]}
    assert (items[0]["device_override"], items[0]["datasets"]) == ("cpu", None)
    assert set(items[0]) == {"id", "hostname", "queues", "devices", "device_override",
                             "datasets", "started_at", "last_seen_at"}

    refused = api.client.get("/v1/admin/workers")  # a read and write key
    assert refused.status_code == 403
    assert error_of(refused)["required_scope"] == "admin"
