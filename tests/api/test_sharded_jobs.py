"""A job whose MRC stage runs as shards (``mrc.shards`` > 1) through HTTP on a real Celery worker
(Postgres, Redis): it records what a one-task MRC stage records, ``manifest.json`` included, so
the artifact route and the report page find it."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rift.config import RiftConfig
from rift.manifest import config_from_manifest
from tests.api.helpers import Api, run_job, upload_checkpoint
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

def test_a_sharded_job_stores_its_manifest(
        start_worker: Callable[..., WorkerProcess], celery_api: Api,
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    worker, api = start_worker(), celery_api
    config = copy.deepcopy(quick_config)
    config["mrc"]["shards"] = 2
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    job = run_job(api, checkpoint["id"], config, (worker,))
    job_id = job["id"]
    events = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    assert [e["payload"]["shards"] for e in events if e["kind"] == "mrc_sharded"] == [2]

    listing = {a["name"]: a for a in
               api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    assert "manifest.json" in listing
    download = api.client.get(listing["manifest.json"]["url"])
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == listing["manifest.json"]["sha256"]
    assert len(download.content) == listing["manifest.json"]["size"]
    # The manifest a one-task MRC stage stores: the job's ids, inputs and config (shards too).
    manifest = download.json()
    assert (manifest["job_id"], manifest["checkpoint_id"]) == (job_id, checkpoint["id"])
    assert manifest["checkpoint_sha256"] == checkpoint["sha256"]
    assert manifest["config"] == job["config"] and manifest["config"]["mrc"]["shards"] == 2
    assert config_from_manifest(manifest) == RiftConfig.model_validate(job["config"])
    assert manifest["device"] == job["device"] == "cpu"

    report = api.client.get(f"/v1/jobs/{job_id}/report")
    assert report.status_code == 200 and "No manifest recorded" not in report.text
    assert checkpoint["sha256"] in report.text  # the manifest is on the page
