"""``python -m api.preflight`` against a real S3 server (moto's): a missing bucket stops the start
with one line naming the bucket and endpoint; an endpoint that does not answer yet does not (it
is an outage for /readyz, not a setting to fix)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from persistence.settings import Settings
from tests.api.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def preflight(sqlite_url: str, endpoint: str, bucket: str, cwd: Path
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=sqlite_url, BROKER_URL="memory://",
               STORE_KIND="s3", S3_BUCKET=bucket, S3_ENDPOINT_URL=endpoint,
               S3_ACCESS_KEY="testing", S3_SECRET_KEY="testing", LOG_FORMAT="text")
    return subprocess.run([sys.executable, "-m", "api.preflight"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_bucket_stops_the_start(sqlite_url: str, moto_s3_endpoint: str,
                                          tmp_path: Path) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    result = preflight(sqlite_url, moto_s3_endpoint, bucket, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rift: object store: bucket {bucket!r} at {moto_s3_endpoint} does not exist; "
        "create it first"], result.stderr


def test_an_existing_bucket_passes(sqlite_url: str, moto_s3_endpoint: str,
                                   tmp_path: Path) -> None:
    import boto3

    bucket = f"present-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    result = preflight(sqlite_url, moto_s3_endpoint, bucket, tmp_path)
    assert result.returncode == 0, result.stderr


def test_an_endpoint_not_answering_yet_is_only_logged(sqlite_url: str, tmp_path: Path) -> None:
    result = preflight(sqlite_url, f"http://127.0.0.1:{free_port()}", "rift", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "object store unreachable at start" in result.stderr
