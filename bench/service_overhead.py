"""The same RiFT job run directly (``run_pipeline``) and through the service (HTTP API + Redis
queue + Celery worker + Postgres + object store), on the same machine; prints JSON with the wall
times and their relative difference.

Direct: a fresh Python process runs ``run_pipeline`` once to warm up (first-use costs: loading the
data set, kernel set-up), then again, timed; the worker is warm in the same way after its first
job, so the first service job is a warm-up too and is reported but not compared.
Service: ``uvicorn`` and one ``celery worker`` (solo pool) are started first and left idle; the
time runs from ``POST /v1/jobs`` until ``GET /v1/jobs/{id}`` reports ``succeeded`` (polled every
0.1 s), so it includes the queue, every stage's fetch of the checkpoint and data from the store,
the database writes and the polling; the checkpoint upload is timed separately. Both sides run
with ``OMP_NUM_THREADS=1``. The job is the digits demo job on its demo checkpoint (CPU).

Needs PostgreSQL on 127.0.0.1:5432 (user postgres; a scratch database is created and dropped) and
Redis on 127.0.0.1:6379. Requests carry a key the bench makes in its fresh database.

    PYTHONPATH=. .venv/bin/python bench/service_overhead.py --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from persistence.migrate import upgrade_database
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _direct(config: dict[str, Any], checkpoint: Path, out: Path, env: dict[str, str]) -> float:
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from rift.config import RiftConfig\n"
        "from rift.pipeline import run_pipeline\n"
        "config = RiftConfig.model_validate(json.loads(sys.argv[1]))\n"
        "run_pipeline(config, sys.argv[2], Path(sys.argv[3]) / 'warm-up')\n"
        "started = time.perf_counter()\n"
        "run_pipeline(config, sys.argv[2], Path(sys.argv[3]) / 'timed')\n"
        "print(time.perf_counter() - started)\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(checkpoint),
                           str(out)], env=env, cwd=ROOT, check=True, capture_output=True,
                          text=True)
    return float(done.stdout.strip().splitlines()[-1])


def _wait_http(client: httpx.Client, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{path} not ready after {timeout} s")


def _wait_log(path: Path, marker: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{marker!r} not in {path} after {timeout} s")


def _service_job(client: httpx.Client, checkpoint_id: str, config: dict[str, Any]) -> float:
    started = time.perf_counter()
    created = client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "config": config})
    created.raise_for_status()
    job_id = created.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job}")
    return seconds


def _make_key(database_url: str) -> str:
    """A read/write key of a project 'bench' in the fresh database."""
    from persistence.api_keys import create_key, create_project
    from persistence.db import session_factory_from_settings
    from persistence.settings import Settings

    factory = session_factory_from_settings(Settings(database_url=database_url))
    try:
        with factory() as session:
            return create_key(session, create_project(session, "bench"), ["read", "write"]).key
    finally:
        factory.kw["bind"].dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = copy.deepcopy(DIGITS_DEMO_CONFIG)
    config["device"] = "cpu"
    database = f"rift_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            checkpoint = folder / "digits.safetensors"
            make_digits_checkpoint(checkpoint, seed=0, device="cpu")
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            upgrade_database(url)
            port = _free_port()
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                   "DATABASE_URL": url, "BROKER_URL": "redis://127.0.0.1:6379/0",
                   "CELERY_QUEUE": f"rift-bench-{uuid.uuid4().hex[:8]}", "STORE_KIND": "local",
                   "STORE_ROOT": str(folder / "objects"), "WORK_DIR": str(folder / "work"),
                   "WORKER_DEVICE": "cpu"}
            bin_dir = Path(sys.executable).parent
            with open(folder / "api.log", "wb") as log:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "uvicorn"), "--factory", "api.main:create_app", "--host",
                     "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                    stderr=subprocess.STDOUT))
            with open(folder / "worker.log", "wb") as log:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                     "--concurrency=1", "-Q", env["CELERY_QUEUE"], "--without-gossip",
                     "--without-mingle", "--loglevel=INFO", "-n", "bench@%h"], cwd=ROOT,
                    env=env, stdout=log, stderr=subprocess.STDOUT))
            headers = {"Authorization": f"Bearer {_make_key(url)}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                              timeout=60.0) as client:
                _wait_http(client, "/healthz")
                _wait_log(folder / "worker.log", " ready.")
                started = time.perf_counter()
                with checkpoint.open("rb") as handle:
                    uploaded = client.post("/v1/checkpoints",
                                           files={"file": (checkpoint.name, handle)})
                uploaded.raise_for_status()
                upload_seconds = time.perf_counter() - started
                direct, service = [], []
                warm_up = _service_job(client, uploaded.json()["id"], config)
                for index in range(args.repeats):  # alternate, so drifts in load hit both
                    direct.append(_direct(config, checkpoint, folder / f"direct-{index}", env))
                    service.append(_service_job(client, uploaded.json()["id"], config))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    best_direct, best_service = min(direct), min(service)
    print(json.dumps({
        "benchmark": "service_overhead", "job": "digits demo (DIGITS_DEMO_CONFIG, cpu)",
        "threads": 1, "repeats": args.repeats,
        "direct_seconds": [round(s, 2) for s in direct],
        "service_seconds": [round(s, 2) for s in service],
        "checkpoint_upload_seconds": round(upload_seconds, 3),
        "service_warm_up_job_seconds": round(warm_up, 2),
        "overhead_seconds_median": round(statistics.median(service)
                                         - statistics.median(direct), 2),
        "overhead_fraction_median": round(statistics.median(service)
                                          / statistics.median(direct) - 1, 4),
        "overhead_seconds_best": round(best_service - best_direct, 2),
        "overhead_fraction_best": round(best_service / best_direct - 1, 4),
        "note": "shared 2-core machine under load from other processes: noisy; the best of the "
                "repeats is compared",
    }, indent=2))


if __name__ == "__main__":
    main()
