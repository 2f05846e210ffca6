"""The same RiFT job run directly (``run_pipeline``) and through the service (HTTP API + Redis
queue + Celery worker + Postgres + object store), on the same machine; prints JSON with the wall
times, their relative difference, and where the service's time went.

Direct: a fresh Python process runs ``run_pipeline`` on the demo job once to warm up (first-use
costs: loading the data set, kernel set-up), then the bench's job, timed; then it times building
the run and the preflight check again on their own (its part outside the stages' compute). The
worker is warm in the same way after a first demo job, which is not compared.
Service: ``uvicorn`` and one ``celery worker`` (solo pool) are started first and left idle; the
time runs from ``POST /v1/jobs`` until the job's ``job_succeeded`` event arrives on its event
stream (``Accept: text/event-stream``, woken by Postgres NOTIFY: no polling interval), so it
includes the queue, the stages' preparation of their run, the database writes and the stream.
The job's event timestamps break it down (``service_breakdown_median``, see :func:`_breakdown`);
``fixed_overhead_seconds_median`` is the service's time outside the library's stage compute less
the direct run's, the figure the machine's load disturbs least. The checkpoint upload is timed
separately. Both sides run with ``OMP_NUM_THREADS=1`` on the CPU and the same
``THP_MEM_ALLOC_ENABLE`` (the environment's, else ``1`` as the worker sets it). Jobs
(``--job``): the digits demo job, ``digits-long``, or ``resnet18-small`` (a ResNet-18 on
CIFAR-shaped synthetic data, uploaded with ``POST /v1/datasets``; see :func:`make_job`).

CPU seconds (Linux): the direct process's for its timed ``run_pipeline`` against the worker
process's and the API process's for the service job (``/proc/<pid>/stat``, read before the
``POST`` and after the terminal event). Unlike wall time, they hardly move with the load other
processes put on the machine, so a change of the service's own work shows through it.
``--tree``: the checkout whose code the direct run, the API and the worker run (default: this
one), to compare two trees with one bench in one sitting.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres; a scratch database is created and dropped) and
Redis on 127.0.0.1:6379. Requests carry a key the bench makes in its fresh database.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/service_overhead.py --repeats 5
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/service_overhead.py --job digits-long
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/service_overhead.py --job resnet18-small
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/service_overhead.py --tree /work/main
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from synthetic import job_config as synthetic_job_config  # bench/ is on sys.path as a script
from synthetic import write_template_dataset, write_theta_at

from persistence.migrate import upgrade_database
from rift.config import AttackSpec
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TERMINAL_EVENTS = ("job_succeeded", "job_failed", "job_cancelled")
JOBS = ("digits", "digits-long", "resnet18-small")


@dataclass(frozen=True)
class SyntheticSizes:
    """The ``resnet18-small`` job's sizes: a ResNet-18 (random weights) on CIFAR-shaped
    template data, sized to 31-42 CPU-seconds of one thread (about 31 s wall on the quiet 2-core
    machine the README's numbers come from, up to 3x that under load); tests pass smaller ones."""

    train: int = 128
    test: int = 32
    epochs: int = 1
    mrc_examples: int = 16
    mrc_steps: int = 2
    attack_steps: int = 2
    alpha_step: float = 0.2


@dataclass(frozen=True)
class BenchJob:
    """A job both sides run: its checkpoint, its config as ``run_pipeline`` reads it, and the
    npz archive the service gets as an upload (None: a built-in dataset)."""

    checkpoint: Path
    config: dict[str, Any]
    dataset: Path | None = None

    def service_config(self) -> dict[str, Any]:
        """The config ``POST /v1/jobs`` takes: an uploaded dataset's path is the service's."""
        config = copy.deepcopy(self.config)
        if self.dataset is not None:
            config["dataset"].pop("path")
        return config


def job_config(job: str) -> dict[str, Any]:
    """The bench's jobs: ``digits`` is the demo job (under a second of compute); ``digits-long``
    the same checkpoint and data with 100 fine-tuning epochs and a 0.02 α grid (51 points), tens
    of seconds of compute: the share of the fixed cost in a realistic job."""
    config = copy.deepcopy(DIGITS_DEMO_CONFIG)
    config["device"] = "cpu"
    if job == "digits-long":
        config["finetune"].update(epochs=100, lr_milestones=[75])
        config["interpolation"].update(alpha_step=0.02)
    return config


def make_job(job: str, folder: Path, sizes: SyntheticSizes | None = None) -> BenchJob:
    """Write job ``job``'s inputs under ``folder``: the digits checkpoint for ``digits`` and
    ``digits-long`` (:func:`job_config`); for ``resnet18-small``, ``bench/synthetic.py``'s
    template data and random-weight ResNet-18 with ``bench/pipeline.py``'s whole-job config
    (the library's defaults, the preflight check off as on random weights), at ``sizes``."""
    if job != "resnet18-small":
        checkpoint = folder / "digits.safetensors"
        if not checkpoint.exists():
            make_digits_checkpoint(checkpoint, seed=0, device="cpu")
        return BenchJob(checkpoint, job_config(job))
    sizes = sizes or SyntheticSizes()
    dataset = write_template_dataset(folder / "synthetic.npz", sizes.train, sizes.test)
    attack = AttackSpec(steps=sizes.attack_steps)
    write_theta_at(folder / "resnet18.safetensors", "resnet18", dataset, attack, at_epochs=0,
                   device="cpu")
    config = synthetic_job_config(
        "resnet18", dataset, trained=False, alpha_step=sizes.alpha_step,
        attack_steps=sizes.attack_steps, mrc_examples=sizes.mrc_examples,
        mrc_batch_size=sizes.mrc_examples, mrc_steps=sizes.mrc_steps, epochs=sizes.epochs,
        device="cpu")
    return BenchJob(folder / "resnet18.safetensors", config, folder / "synthetic.npz")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _direct(job: BenchJob, warm_up: BenchJob, out: Path,
            env: dict[str, str], tree: Path) -> tuple[float, float, float, float]:
    """``run_pipeline`` in a fresh process: ``warm_up`` once (first-use costs), then ``job``,
    timed; returns its seconds, the library's own compute seconds of its three stages (as the
    service's breakdown counts them), those of its part outside them (building the run and
    the preflight check, timed again on their own), and the CPU seconds of the timed run."""
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from rift.config import RiftConfig\n"
        "from rift.pipeline import prepare_run, run_pipeline, run_preflight_stage\n"
        "config = RiftConfig.model_validate(json.loads(sys.argv[1]))\n"
        "warm_up = RiftConfig.model_validate(json.loads(sys.argv[2]))\n"
        "run_pipeline(warm_up, sys.argv[5], Path(sys.argv[4]) / 'warm-up')\n"
        "started, cpu = time.perf_counter(), time.process_time()\n"
        "result = run_pipeline(config, sys.argv[3], Path(sys.argv[4]) / 'timed')\n"
        "total, cpu = time.perf_counter() - started, time.process_time() - cpu\n"
        "compute = sum(result[s]['seconds'] for s in ('mrc', 'finetune', 'interpolation'))\n"
        "started = time.perf_counter()\n"
        "run_preflight_stage(prepare_run(config, sys.argv[3]))\n"
        "print(total, compute, time.perf_counter() - started, cpu)\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(job.config),
                           json.dumps(warm_up.config), str(job.checkpoint), str(out),
                           str(warm_up.checkpoint)], env=env, cwd=tree, check=True,
                          capture_output=True, text=True)
    total, compute, fixed, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(total), float(compute), float(fixed), float(cpu)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _stream_events(client: httpx.Client, job_id: str) -> tuple[list[dict[str, Any]], float]:
    """The job's events from its Server-Sent Events stream, read until the job's terminal event;
    returns them and the wall-clock time (``time.time()``) that event arrived. The stream is
    woken by the service's notifications (Postgres LISTEN), so there is no polling interval."""
    events: list[dict[str, Any]] = []
    kind = ""
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind != "end":
                event = json.loads(line[len("data: "):])
                events.append(event)
                if event["kind"] in TERMINAL_EVENTS:
                    return events, time.time()
            elif line.startswith("data: "):
                break
    raise RuntimeError(f"the event stream of job {job_id} ended without a terminal event")


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"]).timestamp()


def _breakdown(events: list[dict[str, Any]], submitted: float, detected: float
               ) -> dict[str, Any]:
    """Where the service's time went, from the job's event timestamps (written by the API and the
    worker on this machine's clock) and the client's own clock:

    - ``api``: ``POST /v1/jobs`` sent until the job row was written (``job_created``);
    - ``queue_hops``: from the job's creation, or a stage's ``stage_finished``, until the next
      stage's ``stage_started`` (commit, sending the message, the worker taking it, the claim;
      0 for a stage the worker claimed in the transaction that finished the previous one,
      ``WORKER_CHAIN_STAGES``, whose time then counts in that stage's ``other``);
    - per stage: ``prepare`` (fetching the inputs and building the run, or taking it from the
      worker's cache), ``compute`` (the library's own seconds for the stage), ``other`` (the rest
      of claim → finish: the preflight check in ``mrc``, storing files, events, progress);
    - ``detect``: the terminal event's commit until the client had it from the stream.
    """
    created = next(_at(e) for e in events if e["kind"] == "job_created")
    last, started = created, created
    hops: list[float] = []
    stages: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["kind"] == "stage_started":
            started = _at(event)
            hops.append(started - last)
        elif event["kind"] == "stage_finished":
            payload, last = event["payload"], _at(event)
            total = last - started
            prepare = float(payload.get("prepare_seconds", 0.0))
            compute = float(payload.get("seconds", 0.0))
            stages[payload["stage"]] = {
                "total": total, "prepare": prepare, "compute": compute,
                "other": total - prepare - compute,
                "prepared_run": payload.get("prepared_run", "not recorded")}
    end = _at(events[-1])
    return {"api": created - submitted, "queue_hops": hops, "stages": stages,
            "detect": detected - end}


def _service_job(client: httpx.Client, body: dict[str, Any],
                 pids: dict[str, int] | None = None) -> tuple[float, dict[str, Any]]:
    """One job through the service (``body``: its ``POST /v1/jobs`` request), timed from that
    request to the client seeing its ``job_succeeded`` event on the stream; returns the seconds
    and their breakdown, with the CPU seconds the processes in ``pids`` (name -> pid) spent
    meanwhile."""
    cpu = {name: _cpu_seconds(pid) for name, pid in (pids or {}).items()}
    submitted, started = time.time(), time.perf_counter()
    created = client.post("/v1/jobs", json=body)
    created.raise_for_status()
    job_id = created.json()["id"]
    events, detected = _stream_events(client, job_id)
    seconds = time.perf_counter() - started
    if events[-1]["kind"] != "job_succeeded":
        raise RuntimeError(f"job {job_id} ended with {events[-1]}")
    breakdown = _breakdown(events, submitted, detected)
    breakdown["cpu"] = {name: _cpu_seconds(pid) - cpu[name] for name, pid in (pids or {}).items()}
    return seconds, breakdown


def _outside_compute(breakdown: dict[str, Any]) -> float:
    """Seconds of one service job spent outside the library's stage compute."""
    return (breakdown["api"] + sum(breakdown["queue_hops"]) + breakdown["detect"]
            + sum(stage["prepare"] + stage["other"] for stage in breakdown["stages"].values()))


def _compute(breakdown: dict[str, Any]) -> float:
    return float(sum(stage["compute"] for stage in breakdown["stages"].values()))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _median_breakdown(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each part over the repeats (seconds, 3 decimals)."""
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    stages = parts[0]["stages"]
    return {
        "api": median([p["api"] for p in parts]),
        "queue_hops": [median([p["queue_hops"][i] for p in parts])
                       for i in range(len(parts[0]["queue_hops"]))],
        "stages": {name: {key: median([p["stages"][name][key] for p in parts])
                          for key in ("total", "prepare", "compute", "other")}
                   | {"prepared_run": "/".join(sorted({p["stages"][name]["prepared_run"]
                                                     for p in parts}))}
                   for name in stages},
        "detect": median([p["detect"] for p in parts]),
    }


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


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the median of a single value for both)."""
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def _upload(client: httpx.Client, route: str, path: Path) -> tuple[str, float]:
    """``POST`` the file at ``path`` to ``route``; returns the new resource's id and the
    seconds the upload took (validation included)."""
    started = time.perf_counter()
    with path.open("rb") as handle:
        uploaded = client.post(route, files={"file": (path.name, handle)})
    uploaded.raise_for_status()
    return str(uploaded.json()["id"]), time.perf_counter() - started


def _job_body(client: httpx.Client, job: BenchJob) -> tuple[dict[str, Any], dict[str, float]]:
    """Upload ``job``'s checkpoint (and dataset); returns the ``POST /v1/jobs`` body that runs
    it and the seconds of each upload."""
    checkpoint_id, seconds = _upload(client, "/v1/checkpoints", job.checkpoint)
    body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "config": job.service_config()}
    uploads = {"checkpoint": seconds}
    if job.dataset is not None:
        body["dataset_id"], uploads["dataset"] = _upload(client, "/v1/datasets", job.dataset)
    return body, uploads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", choices=JOBS, default="digits")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the checkout whose code runs the jobs (default: this one)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    database = f"rift_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            warm_up_job, job = make_job("digits", folder), make_job(args.job, folder)
            config = job.config
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            port = _free_port()
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
                   "DATABASE_URL": url, "BROKER_URL": "redis://127.0.0.1:6379/0",
                   "CELERY_QUEUE": f"rift-bench-{uuid.uuid4().hex[:8]}", "STORE_KIND": "local",
                   "STORE_ROOT": str(folder / "objects"), "WORK_DIR": str(folder / "work"),
                   "WORKER_DEVICE": "cpu",
                   # The worker's entry module turns huge pages on unless the environment says
                   # otherwise (torch reads it once, at start); set here, the direct run's process
                   # and the worker run with the same setting, whichever tree they come from.
                   "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "1")}
            if tree == ROOT:
                upgrade_database(url)
            else:  # the tree's own migrations: an older tree refuses a newer schema
                subprocess.run([sys.executable, "-m", "persistence.migrate"], cwd=tree, env=env,
                               check=True)
            bin_dir = Path(sys.executable).parent
            with open(folder / "api.log", "wb") as log:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "uvicorn"), "--factory", "api.main:create_app", "--host",
                     "127.0.0.1", "--port", str(port)], cwd=tree, env=env, stdout=log,
                    stderr=subprocess.STDOUT))
            with open(folder / "worker.log", "wb") as log:
                processes.append(subprocess.Popen(
                    [str(bin_dir / "celery"), "-A", "worker.celery_app", "worker", "--pool=solo",
                     "--concurrency=1", "-Q", env["CELERY_QUEUE"], "--without-gossip",
                     "--without-mingle", "--loglevel=INFO", "-n", "bench@%h"], cwd=tree,
                    env=env, stdout=log, stderr=subprocess.STDOUT))
            headers = {"Authorization": f"Bearer {_make_key(url)}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                              timeout=60.0) as client:
                try:
                    _wait_http(client, "/healthz")
                    _wait_log(folder / "worker.log", " ready.")
                except TimeoutError:
                    for log in ("api.log", "worker.log"):  # why it did not start
                        print((folder / log).read_text(errors="replace")[-3000:], file=sys.stderr)
                    raise
                body, upload_seconds = _job_body(client, job)
                warm_up_body, _ = _job_body(client, warm_up_job)
                direct: list[float] = []
                direct_fixed: list[float] = []
                direct_compute: list[float] = []
                direct_cpu: list[float] = []
                service: list[float] = []
                pids = {"worker": processes[1].pid, "api": processes[0].pid}
                parts: list[dict[str, Any]] = []
                warm_up, _ = _service_job(client, warm_up_body)
                for index in range(args.repeats):  # alternate, so drifts in load hit both
                    seconds, compute, fixed, cpu = _direct(job, warm_up_job,
                                                           folder / f"direct-{index}", env, tree)
                    direct.append(seconds)
                    direct_compute.append(compute)
                    direct_fixed.append(fixed)
                    direct_cpu.append(cpu)
                    seconds, breakdown = _service_job(client, body, pids)
                    service.append(seconds)
                    parts.append(breakdown)
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
    paired = [s / d for s, d in zip(service, direct, strict=True)]
    fixed_parts = [_outside_compute(part) for part in parts]
    print(json.dumps({
        "benchmark": "service_overhead", "job": args.job, "tree": str(tree),
        "config": {key: config[key] for key in ("finetune", "interpolation")},
        "threads": 1, "repeats": args.repeats,
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", "1"),  # both sides
        "direct_seconds": [round(s, 2) for s in direct],
        "service_seconds": [round(s, 2) for s in service],
        "checkpoint_upload_seconds": round(upload_seconds["checkpoint"], 3),
        **({"dataset_upload_seconds": round(upload_seconds["dataset"], 3)}
           if "dataset" in upload_seconds else {}),
        "service_warm_up_job_seconds": round(warm_up, 2),
        "overhead_seconds_median": round(statistics.median(service)
                                         - statistics.median(direct), 2),
        "overhead_fraction_median": round(statistics.median(service)
                                          / statistics.median(direct) - 1, 4),
        # Each service job against the direct run just before it (the repeats alternate), so
        # a drift of the machine's load between repeats cancels: the median of those ratios,
        # and the middle half of them.
        "overhead_fraction_paired_median": round(statistics.median(paired) - 1, 4),
        "overhead_fraction_paired_quartiles": [round(q - 1, 4) for q in _quartiles(paired)],
        "overhead_seconds_best": round(best_service - best_direct, 2),
        "overhead_fraction_best": round(best_service / best_direct - 1, 4),
        # Robust to the machine's load, which mostly stretches compute: everything the service
        # spends outside the library's stage compute, less what run_pipeline itself spends there.
        "fixed_overhead_seconds_median": round(statistics.median(fixed_parts)
                                               - statistics.median(direct_fixed), 3),
        "fixed_overhead_fraction_of_direct_median": round(
            (statistics.median(fixed_parts) - statistics.median(direct_fixed))
            / statistics.median(direct), 4),
        "service_outside_compute_seconds": [round(f, 3) for f in fixed_parts],
        # The stages' compute on both sides (the library's own seconds): under load the gap
        # between the end-to-end medians is mostly a difference here, not outside it.
        "service_compute_seconds": [round(_compute(part), 2) for part in parts],
        "direct_compute_seconds": [round(c, 2) for c in direct_compute],
        "direct_prepare_and_preflight_seconds": [round(f, 3) for f in direct_fixed],
        # CPU seconds: the direct process's timed run; the worker's and the API's for each job.
        "direct_cpu_seconds": [round(c, 2) for c in direct_cpu],
        "service_worker_cpu_seconds": [round(p["cpu"]["worker"], 2) for p in parts],
        "service_api_cpu_seconds": [round(p["cpu"]["api"], 2) for p in parts],
        "worker_cpu_over_direct_median": round(
            statistics.median(p["cpu"]["worker"] for p in parts)
            / statistics.median(direct_cpu) - 1, 4),
        "service_breakdown_median": _median_breakdown(parts),
        "service_breakdowns": [_rounded(part) for part in parts],
        "note": "shared 2-core machine under load from other processes: noisy; the best of the "
                "repeats is compared",
    }, indent=2))


if __name__ == "__main__":
    main()
