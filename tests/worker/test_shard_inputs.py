"""The adversarial set a sharded MRC stage shares (``jobs/<id>/mrc/attempt-<k>/
adversarial.safetensors``, made once by the prepare step and read by every shard): nothing reads
it once the merge is recorded, so it is not left in the store behind the job, on real workers,
with the local store and with S3 (moto's server, which the worker process talks to as well)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.object_keys import job_prefix
from persistence.stage_shards import list_shards
from persistence.storage import ObjectStore
from tests.service_fixtures import WorkerProcess, service_environment
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service


@pytest.fixture(params=["local", "s3"])
def service_env(request: pytest.FixtureRequest, postgres_url: str, redis_broker_url: str,
                celery_queue: str, tmp_path: Path) -> dict[str, str]:
    """The test's service environment with either object store (the test's ``store`` fixture
    creates the S3 bucket before any worker starts)."""
    env = service_environment(postgres_url, redis_broker_url, celery_queue, tmp_path)
    if request.param == "s3":
        env.update(STORE_KIND="s3", S3_BUCKET=f"rift-{uuid.uuid4().hex[:10]}",
                   S3_ENDPOINT_URL=request.getfixturevalue("moto_s3_endpoint"),
                   S3_ACCESS_KEY="testing", S3_SECRET_KEY="testing", S3_CREATE_BUCKET="true")
    return env


def test_a_finished_sharded_job_leaves_no_adversarial_set_behind(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, service_env: dict[str, str],
        quick_config: dict[str, Any]) -> None:
    """Before, the set stayed under the MRC stage's recorded attempt (the janitor keeps that
    attempt's files) until the job was deleted: bytes no artifact lists and no quota counts."""
    worker = start_worker()
    config = copy.deepcopy(quick_config)
    config["mrc"]["shards"] = 2
    job_id = submit(config)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        shards = list_shards(session, job_id)
        artifacts = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    inputs_keys = {shard.inputs_key for shard in shards}
    assert len(shards) == 2 and len(inputs_keys) == 1
    stored = {item.key for item in store.list_objects(job_prefix(job_id))}
    assert not inputs_keys & stored, "the shared adversarial set is still stored"
    # Only the set went: every artifact (the stage's manifest.json and MRC table too) is there.
    assert {"manifest.json", "mrc.csv"} <= set(artifacts), sorted(artifacts)
    assert set(artifacts.values()) <= stored
    if service_env["STORE_KIND"] == "s3":
        assert not Path(service_env["STORE_ROOT"]).exists()  # the shards went through S3


def test_a_job_cancelled_while_its_shards_run_leaves_no_adversarial_set_behind(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, service_env: dict[str, str],
        quick_config: dict[str, Any]) -> None:
    """Cancelled once a shard runs: the shard stops at its next batch and the job ends
    cancelled, and its set goes with it (before, it waited for the janitor's grace period,
    24 h by default); the other shard's message, taken after, runs nothing."""
    worker = start_worker()
    config = copy.deepcopy(quick_config)
    config["mrc"].update(shards=2, steps=400)  # minutes: it is cancelled long before
    job_id = submit(config)
    def shard_started(_: object) -> bool:
        with sessions() as session:
            return any(e.kind == "shard_started"
                       for e in jobs.list_events(session, job_id, limit=10_000))

    wait_for(sessions, job_id, shard_started, "a shard running", workers=(worker,))
    with sessions() as session:
        jobs.request_cancel(session, job_id)
        inputs_key = list_shards(session, job_id)[0].inputs_key
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert job.status == "cancelled", job.error_message
    wait_for(sessions, job_id, lambda _: not store.exists(inputs_key), "the set deleted",
             timeout=30, workers=(worker,))
    with sessions() as session:
        kinds = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert kinds.count("shard_finished") == 0 and "stage_finished" not in kinds
