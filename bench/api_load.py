"""The API's read path on an organisation-sized Postgres database: per-route SQL statements,
latency and response size, the plans of the list and quota queries, and concurrent polling.

Seeds a fresh, migrated database (dropped afterwards) straight through the persistence models:
``--projects`` projects (one of them "big", holding ``--big-share`` of the jobs), ``--jobs`` jobs
with their labels, stages, MRC rows, epochs, curve points, events, artifacts, webhook deliveries
and attempts, checkpoints, datasets and API keys. Then:

* ``routes``: each read route through the in-process app (``TestClient``, the real ASGI stack),
  with the SQL statements it ran (an engine event listener), the median of ``--repeat`` timed
  calls and the response size; for the big project and for a small one.
* ``plans``: ``EXPLAIN`` of the queries behind the list filters and the quota counters
  (whether they use an index or scan a whole table).
* ``concurrent``: ``--clients`` threads polling ``GET /v1/jobs/{id}`` on a real uvicorn server
  for ``--duration`` seconds: status codes, p50/p99, and the database connections it held.

Prints one JSON document (and writes it with ``--output``)::

    .venv/bin/python bench/api_load.py --output bench/results/api_load_2cores.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service_load import api_server, free_port, fresh_database  # noqa: E402

STATUSES = (["succeeded"] * 14 + ["failed"] * 2 + ["cancelled"] + ["queued"] * 2 + ["running"])
MRC_ROWS_PER_JOB = 20
POINTS_PER_JOB = 11
EVENTS_PER_JOB = 10


def _spec() -> dict[str, Any]:
    from rift.config import RiftConfig

    return RiftConfig.model_validate({
        "architecture": {"name": "resnet18", "num_classes": 10},
        "dataset": {"name": "cifar10"},
    }).model_dump(mode="json")


def seed(database_url: str, *, projects: int, jobs: int, big_share: float,
         seed_value: int = 0) -> dict[str, Any]:
    """Write the data set; returns the keys and ids the measurements use."""
    from sqlalchemy import insert

    from persistence.api_keys import create_key, create_project
    from persistence.db import session_factory_from_settings
    from persistence.models import (
        STAGE_ORDER,
        Artifact,
        Checkpoint,
        Dataset,
        EpochMetric,
        InterpolationPoint,
        Job,
        JobEvent,
        JobLabel,
        JobStage,
        MRCRow,
        WebhookAttempt,
        WebhookDelivery,
        WebhookEndpoint,
        new_id,
        utcnow,
    )
    from persistence.settings import Settings

    rng = random.Random(seed_value)
    spec = _spec()
    factory = session_factory_from_settings(Settings(database_url=database_url))
    start = utcnow() - timedelta(days=90)
    out: dict[str, Any] = {"projects": []}
    with factory() as session:
        project_rows = []
        for p in range(projects):
            project = create_project(session, f"team-{p:02d}")
            scopes = ["read", "write", "admin"] if p == 0 else ["read", "write"]
            key = create_key(session, project, scopes, name="bench").key
            for extra in range(3):  # an organisation's projects hold several keys each
                create_key(session, project, ["read"], name=f"ci-{extra}")
            project_rows.append((project.id, key))
        big_jobs = int(jobs * big_share)
        rest = jobs - big_jobs
        counts = [big_jobs] + [rest // (projects - 1) + (1 if i < rest % (projects - 1) else 0)
                               for i in range(projects - 1)]
        t = 0
        for (project_id, key), count in zip(project_rows, counts, strict=True):
            checkpoints = [dict(id=new_id(), filename=f"m{c}.safetensors", size=45_000_000,
                                sha256="0" * 64, format="safetensors",
                                storage_key=f"checkpoints/{project_id}/{c}", num_tensors=62,
                                num_parameters=11_000_000, created_at=start,
                                project_id=project_id, entries=[])
                           for c in range(20)]
            session.execute(insert(Checkpoint), checkpoints)
            session.execute(insert(Dataset), [
                dict(id=new_id(), filename=f"d{d}.npz", kind="npz", size=150_000_000,
                     sha256="0" * 64, storage_key=f"datasets/{project_id}/{d}", created_at=start,
                     project_id=project_id, content="images", num_examples=50_000,
                     num_classes=10) for d in range(5)])
            endpoint_id = new_id()
            session.execute(insert(WebhookEndpoint), [dict(
                id=endpoint_id, project_id=project_id, url="https://example.invalid/hook",
                secret="whsec_x", event_types=["job.succeeded", "job.failed"], created_at=start)])
            job_rows, labels, stages, mrc, epochs, points, events, artifacts = ([] for _ in range(8))
            deliveries, attempts = [], []
            ids_by_status: dict[str, list[str]] = {}
            for i in range(count):
                job_id = new_id()
                status = rng.choice(STATUSES)
                created = start + timedelta(seconds=t)
                t += 1
                done = status in ("succeeded", "failed", "cancelled")
                job_rows.append(dict(
                    id=job_id, status=status, stage=None if done or status == "queued" else "mrc",
                    stage_progress=1.0 if done else 0.0, spec=spec,
                    checkpoint_id=checkpoints[i % 20]["id"], cancel_requested=False,
                    attempts=3 if done else 0, created_at=created, updated_at=created,
                    started_at=None if status == "queued" else created,
                    finished_at=created + timedelta(minutes=30) if done else None,
                    project_id=project_id, cost_estimate=10_000_000,
                    selected_module="layer4.1.conv2" if status == "succeeded" else None,
                    chosen_alpha=0.7 if status == "succeeded" else None,
                    metrics={"clean_accuracy": 80.0} if status == "succeeded" else None,
                    error_code="stage_failed" if status == "failed" else None))
                ids_by_status.setdefault(status, []).append(job_id)
                labels += [dict(job_id=job_id, key="team", value=f"t{i % 10}",
                                project_id=project_id, created_at=created),
                           dict(job_id=job_id, key="run", value=str(i),
                                project_id=project_id, created_at=created)]
                for position, name in enumerate(STAGE_ORDER):
                    stages.append(dict(job_id=job_id, stage=name, position=position,
                                       status="done" if status == "succeeded" else "pending",
                                       attempts=1 if status == "succeeded" else 0))
                for e in range(EVENTS_PER_JOB):
                    events.append(dict(job_id=job_id, kind="progress", payload={"n": e},
                                       created_at=created + timedelta(seconds=e)))
                if status == "succeeded":
                    mrc += [dict(job_id=job_id, position=m, module=f"layer{m}.conv",
                                 parameters=1000 * m, mrc=rng.random(), worst_robust_loss=1.0)
                            for m in range(MRC_ROWS_PER_JOB)]
                    epochs += [dict(job_id=job_id, epoch=e, lr=0.01, train_loss=0.5,
                                    train_accuracy=80.0, val_accuracy=79.0) for e in (1, 2, 3)]
                    points += [dict(job_id=job_id, position=a, alpha=a / 10,
                                    clean_accuracy=80.0, robust_accuracy=40.0)
                               for a in range(POINTS_PER_JOB)]
                    artifacts += [dict(job_id=job_id, name=name, storage_key=f"jobs/{job_id}/{name}",
                                       size=45_000_000, sha256="0" * 64,
                                       content_type="application/octet-stream", created_at=created)
                                  for name in ("finetuned.safetensors", "tuned.safetensors",
                                               "manifest.json")]
                if done:
                    delivery_id = new_id()
                    deliveries.append(dict(
                        id=delivery_id, endpoint_id=endpoint_id, job_id=job_id,
                        event_type=f"job.{status}", body="{}", status="succeeded", attempts=1,
                        last_status_code=200, created_at=created, updated_at=created))
                    attempts.append(dict(delivery_id=delivery_id, attempt=1, status_code=200,
                                         started_at=created, duration_ms=12.0))
            for model, rows in ((Job, job_rows), (JobLabel, labels), (JobStage, stages),
                                (JobEvent, events), (MRCRow, mrc), (EpochMetric, epochs),
                                (InterpolationPoint, points), (Artifact, artifacts),
                                (WebhookDelivery, deliveries), (WebhookAttempt, attempts)):
                for chunk in range(0, len(rows), 5000):
                    session.execute(insert(model), rows[chunk:chunk + 5000])
            session.commit()
            out["projects"].append({"id": project_id, "key": key, "jobs": count,
                                    "endpoint_id": endpoint_id,
                                    "succeeded": ids_by_status.get("succeeded", [])[-1:],
                                    "queued": ids_by_status.get("queued", [])[-1:],
                                    "running": ids_by_status.get("running", [])[-20:]})
        session.commit()
        # The stored-bytes ledger of the rows written above, as the upgrade to migration 0026
        # (or `rift-admin projects recount-storage --all`) fills it, folded as the janitor
        # leaves it.
        from persistence.records import recount_stored_bytes
        from persistence.storage_ledger import fold

        for project in out["projects"]:
            recount_stored_bytes(session, project["id"], repair=True)
        fold(session)
    with factory.kw["bind"].connect() as connection:
        # As autovacuum keeps a live database: statistics, and the visibility map that lets
        # counts be answered from an index alone.
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE")
    factory.kw["bind"].dispose()
    return out


def _median_ms(call: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 2)


def explained_work(engine: Any, statements: list[tuple[str, Any]]) -> dict[str, float]:
    """``statements`` (SELECTs with their parameters) run again under EXPLAIN (ANALYZE,
    BUFFERS): the 8 KiB pages they touched and their execution time in the database. Pages do
    not depend on how busy the machine is, wall times do."""
    pages, ms = 0, 0.0
    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}",
                parameters).scalar_one()[0]
            pages += plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
            ms += plan["Execution Time"]
        connection.rollback()
    return {"pages": pages, "ms": round(ms, 2)}


def measure_routes(database_url: str, data: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Statements, median latency and bytes of each read route, for the big project and a small
    one (in-process: the engine's statements are counted)."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from api.main import create_app
    from persistence.db import session_factory_from_settings
    from persistence.settings import Settings

    settings = Settings(database_url=database_url, broker_url="memory://", event_notify="poll",
                        validation_warm_start=False, default_max_requests_per_minute=100_000_000)
    factory = session_factory_from_settings(settings)
    engine = factory.kw["bind"]
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append((statement, parameters))

    def database_work() -> dict[str, float]:
        """The captured SELECTs' database work (:func:`explained_work`)."""
        return explained_work(engine, [(statement, parameters) for statement, parameters in seen
                                       if statement.lstrip().upper().startswith("SELECT")])

    results: dict[str, Any] = {}
    with TestClient(create_app(settings, session_factory=factory)) as client:
        for which, project in (("big", data["projects"][0]), ("small", data["projects"][1])):
            headers = {"Authorization": f"Bearer {project['key']}"}
            first = client.get("/v1/jobs", params={"limit": 100}, headers=headers).json()
            deep_cursor = None
            page = first
            for _ in range(10):  # the 11th page
                if page["next_cursor"] is None:
                    break
                deep_cursor = page["next_cursor"]
                page = client.get("/v1/jobs", params={"limit": 100, "cursor": deep_cursor},
                                  headers=headers).json()
            status_cursor = None
            for _ in range(2):
                page = client.get("/v1/jobs", headers=headers, params={
                    "status": "succeeded", "limit": 100,
                    **({"cursor": status_cursor} if status_cursor else {})}).json()
                status_cursor = page["next_cursor"]
            job = project["succeeded"][0]
            queued = project["queued"][0] if project["queued"] else job
            routes: dict[str, tuple[str, dict[str, Any]]] = {
                "list_first_20": ("/v1/jobs", {}),
                "list_first_100": ("/v1/jobs", {"limit": 100}),
                "list_deep_cursor_100": ("/v1/jobs", {"limit": 100, "cursor": deep_cursor}),
                "list_status_running": ("/v1/jobs", {"status": "running", "limit": 100}),
                "list_status_queued": ("/v1/jobs", {"status": "queued", "limit": 100}),
                "list_status_queued_running": ("/v1/jobs", {"status": "queued,running",
                                                            "limit": 100}),
                "list_status_succeeded": ("/v1/jobs", {"status": "succeeded", "limit": 100}),
                "list_status_succeeded_page_3": ("/v1/jobs", {
                    "status": "succeeded", "limit": 100, "cursor": status_cursor}),
                "list_label_team": ("/v1/jobs", {"label": "team:t3", "limit": 100}),
                "list_label_run_rare": ("/v1/jobs", {"label": "run:7", "limit": 100}),
                "list_expand": ("/v1/jobs", {"limit": 100, "expand": "config,stages"}),
                "job_detail": (f"/v1/jobs/{job}", {}),
                "job_detail_queued": (f"/v1/jobs/{queued}", {}),
                "mrc": (f"/v1/jobs/{job}/mrc", {}),
                "curves": (f"/v1/jobs/{job}/curves", {}),
                "artifacts": (f"/v1/jobs/{job}/artifacts", {}),
                "events": (f"/v1/jobs/{job}/events", {}),
                "report": (f"/v1/jobs/{job}/report", {}),
                "usage": ("/v1/usage", {}),
                "checkpoints": ("/v1/checkpoints", {"limit": 100}),
                "datasets": ("/v1/datasets", {"limit": 100}),
                "webhook_deliveries": (f"/v1/webhooks/{project['endpoint_id']}/deliveries",
                                       {"limit": 100}),
                "metrics": ("/metrics", {}),
            }
            if which == "big":
                routes["admin_usage_small"] = ("/v1/admin/projects/team-01/usage", {})
                routes["admin_usage_big"] = ("/v1/admin/projects/team-00/usage", {})
                routes["admin_projects"] = ("/v1/admin/projects", {})
                routes["admin_keys"] = ("/v1/admin/projects/team-00/keys", {})
            out = {}
            for name, (path, params) in routes.items():
                params = {k: v for k, v in params.items() if v is not None}
                response = client.get(path, params=params, headers=headers)  # warm
                seen.clear()
                event.listen(engine, "before_cursor_execute", record)
                response = client.get(path, params=params, headers=headers)
                event.remove(engine, "before_cursor_execute", record)
                statements = len(seen)
                work = database_work()
                ms = _median_ms(lambda p=path, q=params, h=headers: client.get(p, params=q, headers=h),
                                repeat)
                out[name] = {"status": response.status_code, "statements": statements,
                             "db_pages": work["pages"], "db_ms": work["ms"],
                             "median_ms": ms, "bytes": len(response.content)}
            results[which] = {"jobs_in_project": project["jobs"], "routes": out}
    engine.dispose()
    return results


def quota_pages(database_url: str, data: dict[str, Any]) -> dict[str, Any]:
    """The statements and 8 KiB pages of the big project's stored-bytes count: the reference
    from its rows (``stored_bytes_by_kind``, what every quota check ran before migration
    0026) and the ledger's sum (what it runs now), each run again under EXPLAIN (ANALYZE,
    BUFFERS)."""
    from sqlalchemy import event

    from persistence.db import session_factory_from_settings
    from persistence.records import ledger_stored_bytes_by_kind, stored_bytes_by_kind
    from persistence.settings import Settings

    factory = session_factory_from_settings(Settings(database_url=database_url))
    engine = factory.kw["bind"]
    big = data["projects"][0]["id"]
    out: dict[str, Any] = {}
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    for name, count in (("reference", stored_bytes_by_kind),
                        ("ledger", ledger_stored_bytes_by_kind)):
        seen.clear()
        with factory() as session:
            event.listen(engine, "before_cursor_execute", record)
            total = count(session, big).total
            event.remove(engine, "before_cursor_execute", record)
            session.rollback()
        work = explained_work(engine, seen)
        out[name] = {"stored_bytes": total, "statements": len(seen), "db_pages": work["pages"],
                     "db_ms": work["ms"]}
    engine.dispose()
    return out


def explain_plans(database_url: str, data: dict[str, Any]) -> dict[str, Any]:
    """The plans (one line each: the node types) of the queries the filters and quota checks
    run, compiled by SQLAlchemy exactly as the service builds them."""
    from sqlalchemy import func, select, text

    from persistence import jobs as job_queries
    from persistence.db import session_factory_from_settings
    from persistence.models import Job, JobStatus
    from persistence.settings import Settings

    factory = session_factory_from_settings(Settings(database_url=database_url))
    big = data["projects"][0]["id"]
    captured: dict[str, Any] = {}

    def plan(session: Any, query: Any) -> dict[str, Any]:
        compiled = query.compile(dialect=session.bind.dialect,
                                 compile_kwargs={"literal_binds": True})
        rows = session.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}")).scalar_one()
        top = rows[0]
        nodes: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            nodes.append(f"{node['Node Type']}"
                         + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
                         + (f" using {node['Index Name']}" if "Index Name" in node else ""))
            for child in node.get("Plans", []):
                walk(child)

        walk(top["Plan"])
        return {"ms": round(top["Execution Time"], 2), "nodes": nodes}

    with factory() as session:
        captured["count_active_jobs_big"] = plan(session, select(func.count()).select_from(
            Job).where(Job.project_id == big, Job.status.in_([JobStatus.QUEUED,
                                                              JobStatus.RUNNING])))
        for status in ("running", "queued"):
            query = (job_queries._summary_query(False).where(Job.project_id == big,
                                                             Job.status == status)
                     .order_by(Job.created_at.desc(), Job.id.desc()).limit(101))
            captured[f"list_status_{status}_big"] = plan(session, query)
        session.rollback()
    factory.kw["bind"].dispose()
    return captured


def _server_rss_mib(port: int) -> float:
    """Resident memory of the uvicorn serving ``port``, its worker processes included (MiB)."""
    marker = f"--port\0{port}\0".encode()
    parents: dict[int, int] = {}
    main = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                main = int(entry.name)
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    if main is None:
        return float("nan")
    family = {main} | {pid for pid, parent in parents.items() if parent == main}
    total_kib = 0
    for pid in family:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


def _transactions(database_url: str) -> int:
    """Transactions committed or rolled back in the database so far (pg_stat_database)."""
    import psycopg
    from sqlalchemy import make_url

    url = make_url(database_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                 "WHERE datname = %s", (url.database,)).fetchone()
    assert row is not None
    return int(row[0])


def open_streams(url: str, database_url: str, data: dict[str, Any], streams: int,
                 duration: float, settle_s: float = 20.0) -> dict[str, Any]:
    """``streams`` SSE streams of running jobs held open: the database transactions per second
    while they are open (counted from ``settle_s`` after they were opened: on a loaded 2-core
    machine a hundred streams take several seconds to connect, each reading its log once),
    against the same time with none open (autovacuum and the like)."""
    import asyncio

    import httpx

    project = data["projects"][0]
    running = project["running"]
    counted: dict[str, int] = {}

    async def hold() -> int:
        opened = 0
        async with httpx.AsyncClient(base_url=url, timeout=duration + settle_s + 30, headers={
                "Authorization": f"Bearer {project['key']}",
                "Accept": "text/event-stream"}) as client:
            async def one(i: int) -> None:
                nonlocal opened
                async with client.stream("GET", f"/v1/jobs/{running[i % len(running)]}/events"
                                         ) as response:
                    if response.status_code == 200:
                        opened += 1
                    try:
                        async with asyncio.timeout(duration + settle_s + 1):
                            async for _ in response.aiter_raw():
                                pass
                    except TimeoutError:
                        pass

            async def count() -> None:
                await asyncio.sleep(settle_s)
                counted["start"] = await asyncio.to_thread(_transactions, database_url)
                await asyncio.sleep(duration)
                counted["end"] = await asyncio.to_thread(_transactions, database_url)

            await asyncio.gather(count(), *(one(i) for i in range(streams)))
        return opened

    opened = asyncio.run(hold())
    before = _transactions(database_url)
    time.sleep(duration)
    idle = _transactions(database_url) - before
    return {"streams": streams, "opened": opened, "duration_s": duration,
            "transactions_per_s_none_open": round(idle / duration, 2),
            "transactions_per_s_streams_open": round(
                (counted["end"] - counted["start"]) / duration, 2)}


def concurrent_polling(database_url: str, data: dict[str, Any], clients: int,
                       duration: float, workers: int, streams: int,
                       stream_settle_s: float = 20.0) -> dict[str, Any]:
    """``clients`` threads each polling one job's status as fast as answers come; then
    ``streams`` open event streams (:func:`open_streams`)."""
    import httpx

    projects = data["projects"]
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        with api_server(database_url, workers, port, Path(scratch) / "api.log",
                        {"DEFAULT_MAX_REQUESTS_PER_MINUTE": "100000000",
                         "DEFAULT_MAX_STREAMS_PER_KEY": str(max(streams, 1)),
                         "EVENT_NOTIFY": "postgres"}) as url:
            rss_before = _server_rss_mib(port)
            codes: Counter[int] = Counter()
            latencies: list[float] = []
            retry_after: Counter[str] = Counter()
            lock = threading.Lock()
            stop = time.monotonic() + duration

            def poll(i: int) -> None:
                project = projects[i % len(projects)]
                job = (project["succeeded"] or project["queued"])[0]
                with httpx.Client(base_url=url, timeout=30,
                                  headers={"Authorization": f"Bearer {project['key']}"}) as c:
                    while time.monotonic() < stop:
                        began = time.perf_counter()
                        try:
                            response = c.get(f"/v1/jobs/{job}")
                            code = response.status_code
                        except httpx.HTTPError:
                            code = 0
                            response = None
                        with lock:
                            codes[code] += 1
                            latencies.append(time.perf_counter() - began)
                            if response is not None and code >= 500:
                                retry_after[response.headers.get("retry-after", "none")] += 1

            threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rss_after = _server_rss_mib(port)
            # A second round: memory that keeps growing with requests served would show here.
            stop = time.monotonic() + duration
            threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rss_after_second = _server_rss_mib(port)
            sse = (open_streams(url, database_url, data, streams, duration, stream_settle_s)
                   if streams else None)
    latencies.sort()
    count = len(latencies)
    return {"clients": clients, "uvicorn_workers": workers, "duration_s": duration * 2,
            "server_rss_mib": {"started": rss_before, "after_first_round": rss_after,
                               "after_second_round": rss_after_second},
            "event_streams": sse,
            "requests": count, "per_s": round(count / duration / 2, 1),
            "status_codes": {str(k): v for k, v in sorted(codes.items())},
            "retry_after_on_5xx": dict(retry_after),
            "p50_ms": round(latencies[count // 2] * 1000, 1) if count else None,
            "p99_ms": round(latencies[min(count - 1, int(count * 0.99))] * 1000, 1)
            if count else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--big-share", type=float, default=0.25,
                        help="the share of the jobs held by project team-00")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per route")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=100, help="event streams held open")
    parser.add_argument("--stream-settle", type=float, default=20.0,
                        help="seconds between opening the streams and counting transactions")
    parser.add_argument("--skip-concurrent", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"setup": {
        "projects": args.projects, "jobs": args.jobs, "big_share": args.big_share,
        "rows_per_succeeded_job": {"mrc": MRC_ROWS_PER_JOB, "curve_points": POINTS_PER_JOB,
                                   "events": EVENTS_PER_JOB, "artifacts": 3},
        "machine": platform.platform(), "python": platform.python_version()}}
    with fresh_database(args.admin_url) as url:
        began = time.perf_counter()
        data = seed(url, projects=args.projects, jobs=args.jobs, big_share=args.big_share)
        result["seed_s"] = round(time.perf_counter() - began, 1)
        result["routes"] = measure_routes(url, data, args.repeat)
        result["plans"] = explain_plans(url, data)
        result["quota"] = quota_pages(url, data)
        if not args.skip_concurrent:
            result["concurrent"] = concurrent_polling(url, data, args.clients, args.duration,
                                                      args.workers, args.streams,
                                                      args.stream_settle)
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.output:
        args.output.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
