"""Open-loop load on the API's read path: ``GET /v1/jobs/{id}`` and ``GET /v1/jobs?limit=50``.

Starts a real API (``uvicorn --workers N`` subprocess) on a fresh, migrated Postgres database
seeded with jobs, then for each target rate sends requests on a fixed schedule (request ``i``
leaves at ``start + i / rate`` whether or not earlier ones have been answered: open loop), bounded
by ``--duration`` seconds and ``--max-requests`` per rate. Latency is measured from the scheduled
send time, so a client or server that falls behind shows up in the figures instead of silently
lowering the rate (no coordinated omission). Loopback only. Also reports the SQL statements of one
``GET /v1/jobs?limit=50`` (counted in-process on the same database) and its unloaded latency.

Prints one JSON document (and writes it with ``--output``):

    .venv/bin/python bench/service_load.py --workers 2 --rates 100,300,1000 \\
        --list-rates 50,100 --output bench/results/service_load_2cores.json

The client is a small asyncio HTTP/1.1 keep-alive client (a pool of ``--connections``
connections), cheaper per request than a general-purpose client, so that the measuring side takes
as little as possible of a small machine's CPU. The seeded jobs belong to a project 'bench' whose
read key the client sends as ``Authorization: Bearer``; the API's request limit is raised so the
bench measures latency, not the limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ------------------------------------------------------------------------------------ client
class HttpPool:
    """Keep-alive HTTP/1.1 connections to one loopback host; one request per connection at a
    time. Enough of HTTP for this API's answers (Content-Length bodies)."""

    def __init__(self, host: str, port: int, size: int, headers: dict[str, str]) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self._opened = 0
        self._opening = asyncio.Lock()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host}:{port}\r\nAccept: application/json\r\n{extra}\r\n"

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and self._opened < self.size:
            self._opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._opened -= 1
                raise
        return await self._idle.get()

    async def get(self, path: str) -> tuple[int, int]:
        """(status, body bytes) of ``GET path``."""
        reader, writer = await self._take()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\n{self._head}".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                          if line.lower().startswith("content-length:"))
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._opened -= 1
            raise
        self._idle.put_nowait((reader, writer))
        return status, len(body)

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ms = [v * 1000 for v in latencies_s]
    return {"p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


async def open_loop(pool: HttpPool, path_of: Callable[[int], str], rate: float,
                    duration_s: float, max_requests: int, timeout_s: float) -> dict[str, Any]:
    """Send ``min(rate * duration, max_requests)`` requests at ``rate`` per second."""
    loop = asyncio.get_running_loop()
    count = max(1, min(int(rate * duration_s), max_requests))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    late: list[float] = []
    start = loop.time() + 0.2

    async def one(i: int, scheduled: float) -> None:
        try:
            status, _ = await asyncio.wait_for(pool.get(path_of(i)), timeout_s)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return
        if status == 200:
            latencies.append(loop.time() - scheduled)
        else:
            errors[f"http_{status}"] += 1

    tasks = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late.append(-delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    return {
        "target_rate": rate, "requests": count, "ok": len(latencies), "errors": dict(errors),
        "achieved_rate": round(len(latencies) / elapsed, 1),
        "seconds": round(elapsed, 2),
        # How far behind its schedule the generator itself was (client CPU starvation).
        "send_lag_p99_ms": round(percentile(late, 99) * 1000, 2) if late else 0.0,
        **summary(latencies),
    }


async def drain(pool: HttpPool, path: str, quiet_ms: float = 50.0, limit_s: float = 180.0) -> float:
    """Wait until ``GET path`` answers within ``quiet_ms`` again: after an overloaded phase the
    server still works through requests whose clients gave up (nothing sheds them), and the next
    phase must not be measured behind that backlog. Returns the seconds waited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < limit_s:
        begin = loop.time()
        try:
            await asyncio.wait_for(pool.get(path), limit_s)
        except Exception:
            await asyncio.sleep(0.5)
            continue
        if (loop.time() - begin) * 1000 < quiet_ms:
            break
        await asyncio.sleep(0.5)
    return round(loop.time() - started, 2)


async def sequential(pool: HttpPool, path: str, count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies = []
    for _ in range(count):
        begin = loop.time()
        status, size = await pool.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        latencies.append(loop.time() - begin)
    return {"requests": count, "body_bytes": size, **summary(latencies)}


# ------------------------------------------------------------------------------------ server
@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, migrated Postgres database, dropped afterwards."""
    import psycopg
    from sqlalchemy import make_url

    from persistence.migrate import upgrade_database

    name = f"rift_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        rendered = url.render_as_string(hide_password=False)
        upgrade_database(rendered)
        yield rendered
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(database_url: str, jobs_count: int) -> tuple[list[str], str]:
    """``jobs_count`` jobs of a project 'bench' with a realistic config, a third cancelled, the
    rest queued; returns their ids and a read key of that project."""
    from persistence import jobs
    from persistence.api_keys import create_key, create_project
    from persistence.db import session_factory_from_settings
    from persistence.models import utcnow
    from persistence.records import create_checkpoint
    from persistence.settings import Settings
    from rift.config import RiftConfig

    spec = RiftConfig.model_validate({
        "architecture": {"name": "resnet18", "num_classes": 10},
        "dataset": {"name": "cifar10"},
    }).model_dump(mode="json")
    factory = session_factory_from_settings(Settings(database_url=database_url))
    start = utcnow()
    ids = []
    with factory() as session:
        project = create_project(session, "bench")
        key = create_key(session, project, ["read"], name="bench").key
        checkpoint = create_checkpoint(
            session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1, project_id=project.id)
        for i in range(jobs_count):
            job, _ = jobs.create_job(session, spec=spec, checkpoint_id=checkpoint.id,
                                     labels={"team": f"t{i % 4}", "run": str(i)},
                                     now=start + timedelta(milliseconds=i),
                                     project_id=project.id)
            ids.append(job.id)
        for job_id in ids[::3]:
            jobs.request_cancel(session, job_id)
    factory.kw["bind"].dispose()
    return ids, key


def list_statements(database_url: str, api_key: str) -> int:
    """SQL statements (transaction control left out) of one GET /v1/jobs?limit=50, in-process."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from api.main import create_app
    from persistence.db import session_factory_from_settings
    from persistence.settings import Settings

    # Counts statements only: no validator server to start for it.
    settings = Settings(database_url=database_url, broker_url="memory://", event_notify="poll",
                        validation_warm_start=False)
    factory = session_factory_from_settings(settings)
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append(statement)

    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings, session_factory=factory)) as client:
        client.get("/v1/jobs?limit=50", headers=headers)  # warm caches
        event.listen(factory.kw["bind"], "before_cursor_execute", record)
        response = client.get("/v1/jobs?limit=50", headers=headers)
        event.remove(factory.kw["bind"], "before_cursor_execute", record)
    if response.status_code != 200 or len(response.json()["items"]) != 50:
        raise RuntimeError(f"list failed: {response.status_code} {response.text[:200]}")
    factory.kw["bind"].dispose()
    return len(seen)


@contextmanager
def api_server(database_url: str, workers: int, port: int, log: Path,
               extra_env: dict[str, str] | None = None, settle_s: float = 1.0) -> Iterator[str]:
    # Validator servers start with the first upload, as before VALIDATION_WARM_START: the load
    # bench uploads nothing, and bench/validator_memory.py counts the servers its uploads start.
    env = {**os.environ, "VALIDATION_WARM_START": "false", **(extra_env or {}),
           "DATABASE_URL": database_url,
           "BROKER_URL": "memory://",
           "STORE_KIND": "local", "STORE_ROOT": str(log.parent / "objects"),
           "WORK_DIR": str(log.parent / "work"),
           # The bench measures latency, not the per-project request limit (1,200/min by default).
           "DEFAULT_MAX_REQUESTS_PER_MINUTE": "100000000"}
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(settle_s)  # the other worker processes finish starting
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------ main
async def measure(url: str, ids: list[str], args: argparse.Namespace,
                  headers: dict[str, str]) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host}: loopback only")
    pool = HttpPool(host, port, args.connections, headers)
    try:
        unloaded = {
            "by_id": await sequential(pool, f"/v1/jobs/{ids[1]}", args.unloaded_requests),
            "list_50": await sequential(pool, "/v1/jobs?limit=50", args.unloaded_requests),
        }
        probe = f"/v1/jobs/{ids[0]}"
        by_id = []
        for rate in args.rates:
            by_id.append(await open_loop(pool, lambda i: f"/v1/jobs/{ids[i % len(ids)]}", rate,
                                         args.duration, args.max_requests, args.timeout))
            by_id[-1]["drain_seconds_after"] = await drain(pool, probe)
        listing = []
        for rate in args.list_rates:
            listing.append(await open_loop(pool, lambda i: "/v1/jobs?limit=50", rate,
                                           args.duration, args.max_requests, args.timeout))
            listing[-1]["drain_seconds_after"] = await drain(pool, probe)
    finally:
        await pool.close()
    return {"unloaded": unloaded, "by_id": by_id, "list_50": listing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get(
        "RIFT_BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="Postgres URL allowed to create and drop the bench database")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--rates", default="100,300,1000", help="req/s for GET /v1/jobs/{id}")
    parser.add_argument("--list-rates", default="50,100", help="req/s for GET /v1/jobs?limit=50")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per rate")
    parser.add_argument("--connections", type=int, default=256, help="client connections")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs seeded in the database")
    parser.add_argument("--unloaded-requests", type=int, default=200)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r]
    args.list_rates = [float(r) for r in args.list_rates.split(",") if r]

    load_before = os.getloadavg()
    with fresh_database(args.admin_url) as database_url, \
            tempfile.TemporaryDirectory(prefix="rift-bench-") as scratch:
        ids, api_key = seed(database_url, args.jobs)
        headers = {"Authorization": f"Bearer {api_key}"}
        statements = list_statements(database_url, api_key)
        with api_server(database_url, args.workers, free_port(), Path(scratch) / "api.log") as url:
            results = asyncio.run(measure(url, ids, args, headers))

    report = {
        "benchmark": "service_load",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                    "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "API, Postgres and the load generator share these CPUs with other "
                            "work; figures are noisy"},
        "setup": {"uvicorn_workers": args.workers, "jobs_in_database": args.jobs,
                  "connections": args.connections, "seconds_per_rate": args.duration,
                  "max_requests_per_rate": args.max_requests, "database": "postgres",
                  "event_notify": "postgres"},
        "list_50_sql_statements": statements,
        **results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
