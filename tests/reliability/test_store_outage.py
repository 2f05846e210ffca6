"""S3 failing while a stage stores its outputs (503 SlowDown past botocore's own tries): the
worker writes them again in place, for at most a lease length (worker/store_writes.py), and the
stage is recorded at attempt 1. It used to take the failure as the stage's error: the claim was
counted and the stage ran again from its start, and an outage met by MAX_STAGE_ATTEMPTS stages in
a row failed the job.

A real worker, Redis and Postgres; S3 is moto's server behind a proxy that answers the stage's
PUTs 503 (tests/s3_fault_proxy.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence.storage_s3 import S3ObjectStore
from tests.s3_fault_proxy import FaultProxy
from tests.service_fixtures import WorkerProcess, service_environment
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

#: A store write is 4 requests (botocore's first and 3 retries): θ_FT's write fails twice.
FAILED_PUTS = 8


@pytest.fixture
def s3_proxy(moto_s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_s3_endpoint) as proxy:
        yield proxy


@pytest.fixture
def service_env(postgres_url: str, redis_broker_url: str, celery_queue: str, tmp_path: Path,
                s3_proxy: FaultProxy, moto_s3_endpoint: str) -> dict[str, str]:
    """The service's environment with its objects in S3, through the proxy."""
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    S3ObjectStore(bucket, endpoint_url=moto_s3_endpoint, access_key="testing",
                  secret_key="testing", create_bucket=True)
    env = service_environment(postgres_url, redis_broker_url, celery_queue, tmp_path)
    env.update(STORE_KIND="s3", S3_ENDPOINT_URL=s3_proxy.url, S3_BUCKET=bucket,
               S3_ACCESS_KEY="testing", S3_SECRET_KEY="testing", S3_REGION="us-east-1")
    return env


def test_a_stage_whose_output_writes_meet_s3_failing_is_recorded_at_its_first_attempt(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], s3_proxy: FaultProxy,
        quick_config: dict[str, Any]) -> None:
    worker = start_worker(WORKER_LEASE_SECONDS="60")
    job_id = submit(quick_config)
    # θ_FT, as the fine-tune stage's first attempt stores it (botocore's waits: seconds).
    s3_proxy.fail("PUT", times=FAILED_PUTS,
                  query=f"/{job_id}/finetune/attempt-1/finetuned.safetensors")
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert job.status == "succeeded", job.error_message
    assert {stage.stage: stage.attempts for stage in job.stages} == {
        "mrc": 1, "finetune": 1, "interpolate": 1}, worker.log()[-3000:]
    tries = [line for line in worker.log().splitlines()
             if "the object store is unavailable" in line]
    assert len(tries) == 2 and all("SlowDown" in line for line in tries), worker.log()[-3000:]
