"""What an API key costs per request: sequential GET /v1/jobs/{id} with a key against
GET /v1/healthz (no key, no database) and against authenticate() alone, on a fresh Postgres
database (loopback only). Prints JSON with p50/p95 in milliseconds.

    .venv/bin/python -m bench.auth_overhead [--requests 500]   (from the repository root)

Needs Postgres at 127.0.0.1:5432 (user postgres, trust), like the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from api.main import create_app
from persistence.api_keys import authenticate
from persistence.db import session_factory_from_settings
from persistence.jobs import create_job
from persistence.migrate import upgrade_database
from persistence.records import create_checkpoint
from persistence.settings import Settings
from tests.api.helpers import ApiServer, RecordingDispatcher, make_key

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    name = f"rift_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        upgrade_database(url)
        with tempfile.TemporaryDirectory() as tmp:
            # No upload is timed: no validator server warming up beside the requests timed.
            settings = Settings(database_url=url, broker_url="memory://",
                                store_root=Path(tmp) / "objects", work_dir=Path(tmp) / "work",
                                validation_warm_start=False)
            sessions = session_factory_from_settings(settings)
            project_id, key = make_key(sessions, "bench")
            with sessions() as session:
                checkpoint = create_checkpoint(
                    session, filename="m", size=1, sha256="0" * 64, format="safetensors",
                    storage_key="k", num_tensors=1, num_parameters=1, project_id=project_id)
                job, _ = create_job(session, spec={}, checkpoint_id=checkpoint.id,
                                    project_id=project_id)
                job_id = job.id
            server = ApiServer(create_app(settings, session_factory=sessions,
                                          dispatcher=RecordingDispatcher())).start()
            results: dict[str, object] = {"requests": args.requests}
            with httpx.Client(base_url=server.url,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                for label, path in (("healthz_no_key", "/v1/healthz"),
                                    ("job_by_id_with_key", f"/v1/jobs/{job_id}")):
                    for _ in range(20):
                        client.get(path)
                    samples = []
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        assert client.get(path).status_code == 200
                        samples.append(time.perf_counter() - start)
                    results[label] = _percentiles(samples)
            samples = []
            for _ in range(args.requests):
                start = time.perf_counter()
                with sessions() as session:
                    assert authenticate(session, key) is not None
                samples.append(time.perf_counter() - start)
            results["authenticate_only"] = _percentiles(samples)
            server.stop()
            sessions.kw["bind"].dispose()
        print(json.dumps(results, indent=2))
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
