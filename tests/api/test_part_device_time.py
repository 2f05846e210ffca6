"""The run time of MRC shard and sweep candidate tasks counts as device time, as a stage's does
(``worker/metrics.py``): a real Celery worker runs a sharded job and a sweep, and its
``/metrics`` (parsed with prometheus_client) shows, per stage, device seconds equal to the stage
attempts' seconds plus the parts' seconds. Was: the parts resolved their device inside the task
and did not hand it back, so their time (most of those jobs') was missing from
``rift_gpu_seconds_total``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import Api, upload_checkpoint, wait_for_end
from tests.service_fixtures import WorkerProcess, start_worker_serving_metrics

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _totals(page: str) -> dict[tuple[str, str, str], float]:
    """(sample name, stage, device) → the sum of its samples' values over other labels."""
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("stage", ""), sample.labels.get("device", ""))
            found[key] = found.get(key, 0.0) + sample.value
    return found


def test_shard_and_candidate_time_counts_as_device_time(
        start_worker: Callable[..., WorkerProcess], celery_api: Api,
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    (worker, port), api = start_worker_serving_metrics(start_worker), celery_api
    sharded = copy.deepcopy(quick_config)
    sharded["mrc"]["shards"] = 2
    sweep = copy.deepcopy(quick_config)
    sweep["finetune"].update(candidates=2)
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    job_ids = []
    for config in (sharded, sweep):
        created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                    "config": config})
        assert created.status_code == 201, created.text
        job_ids.append(created.json()["id"])
    for job_id in job_ids:
        job = wait_for_end(api, job_id, (worker,))
        assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])

    def scrape() -> dict[tuple[str, str, str], float]:
        return _totals(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    # A task records its time just after it commits the job's end: scrape until all are in.
    deadline = time.monotonic() + 10
    while True:
        found = scrape()
        parts = {stage: found.get(("rift_part_duration_seconds_count", stage, ""), 0)
                 for stage in ("mrc", "finetune")}
        if parts == {"mrc": 2, "finetune": 2} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert parts == {"mrc": 2, "finetune": 2}
    for stage in ("mrc", "finetune", "interpolate"):
        stage_seconds = found.get(("rift_stage_duration_seconds_sum", stage, ""), 0.0)
        part_seconds = found.get(("rift_part_duration_seconds_sum", stage, ""), 0.0)
        assert stage_seconds > 0, stage
        # Every second of the stage's attempts and of its parts, on this worker's CPU.
        assert found.get(("rift_device_seconds_total", stage, "cpu")) == pytest.approx(
            stage_seconds + part_seconds, rel=1e-9, abs=1e-9), (stage, found)
        # A CPU worker's time is no GPU time, for parts as for stages.
        assert found.get(("rift_gpu_seconds_total", stage, ""), 0.0) == 0.0
        assert not [key for key in found if key[0] == "rift_device_seconds_total"
                    and key[2] != "cpu"]
    assert found[("rift_part_duration_seconds_sum", "mrc", "")] > 0
    assert found[("rift_part_duration_seconds_sum", "finetune", "")] > 0
