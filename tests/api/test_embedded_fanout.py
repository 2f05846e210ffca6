"""The embedded default (SQLite, a local folder, kombu's SQLAlchemy broker) runs the fan-out
stages too: MRC in shards and a candidate sweep (one module at two rates, although two modules
were asked for: a warning says so), on two worker processes writing one SQLite database at
once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.dispatch import CeleryDispatcher
from tests.api.helpers import Api, embedded_environment, spawn_worker, upload_checkpoint
from tests.api.test_end_to_end import follow_events
from tests.preloaded_launcher import Launcher
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = [pytest.mark.service, pytest.mark.slow]


StartWorkers = Callable[[dict[str, str], int], list[WorkerProcess]]


@pytest.fixture
def embedded_workers(tmp_path: Path, optional_worker_launcher: Launcher | None
                     ) -> Iterator[StartWorkers]:
    """``start(env, count)``: that many worker processes, stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], count: int) -> list[WorkerProcess]:
        workers = [spawn_worker(env, tmp_path / f"worker-{i}.log", optional_worker_launcher)
                   for i in range(count)]
        started.extend(workers)
        for worker in workers:
            worker.wait_ready()
        return workers

    yield start
    for worker in started:
        worker.stop()


def test_sharded_mrc_and_a_sweep_on_the_embedded_default(
    sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api],
    embedded_workers: StartWorkers,
    digits_checkpoint_path: Path, digits_job_config: dict[str, Any],
) -> None:
    env = embedded_environment(sqlite_url, tmp_path)
    settings = settings_from_env(env)
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))
    workers = embedded_workers(env, 2)
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    config = {**digits_job_config,
              "mrc": {**digits_job_config.get("mrc", {}), "shards": 2},
              "finetune": {**digits_job_config["finetune"], "candidates": 2, "module": "fc",
                           "lr_grid": [0.01, 0.05]}}
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": config})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    events = follow_events(api, job_id)
    logs = "\n".join(worker.log()[-2000:] for worker in workers)
    assert events[-1]["event"] == "end", logs
    assert events[-1]["data"]["status"] == "succeeded", logs
    job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    curves = api.client.get(f"/v1/jobs/{job_id}/curves").json()
    assert [(c["module"], c["lr"]) for c in curves["candidates"]] == [("fc", 0.01), ("fc", 0.05)]
    warnings = [e["payload"]["message"] for e in
                api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
                if e["kind"] == "warning"]
    assert any("finetune.candidates is 2 but 1 module(s) are tried" in w for w in warnings), warnings
    mrc = api.client.get(f"/v1/jobs/{job_id}/mrc").json()
    assert [r["module"] for r in mrc["rows"] if r["selected"]] == [job["selected_module"]]
