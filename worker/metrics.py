"""Prometheus metrics of a worker process, served on ``WORKER_METRICS_PORT`` (0: off).

Recorded by this process as it runs tasks:

- ``rift_stage_duration_seconds{stage, outcome}``: histogram of stage run times (claim to end;
  a sharded MRC or a sweep's fine-tuning ends its attempt with ``sharded`` once its parts are
  sent; ``job_ended`` when the job had ended by another's hand, the recovery loop's past its
  time limit, before the attempt could end it);
- ``rift_part_duration_seconds{stage, outcome}``: histogram of the run times of MRC shard
  (``mrc``) and sweep candidate (``finetune``) tasks, which do those stages' work;
- ``rift_stage_attempts_total{stage}``: stage claims this process won;
- ``rift_gpu_seconds_total{stage}``: seconds of stage attempts and of MRC shard and sweep
  candidate tasks run on a CUDA device (a part counts under its stage, ``mrc`` or ``finetune``);
- ``rift_device_seconds_total{stage, device}``: the same seconds by the type of device they ran
  on (``cpu``, ``cuda``, ``mps``): ``device="cuda"`` is ``rift_gpu_seconds_total``, the others
  show a CPU worker's time, which the GPU counter leaves out;
- ``rift_materializations_total{outcome}``.

Read from the database and the broker at scrape time (the same for every worker; aggregate with
``max``): ``rift_jobs{status}`` (jobs by state) and ``rift_queue_depth{queue}`` (messages waiting
in the stage queue and in the webhook queue), plus ``rift_stages_waiting`` (stages ready to
run that no worker has taken) and ``rift_workers_live{queue}`` (worker processes of the
registry seen within 3 heartbeats, by queue consumed: :mod:`persistence.workers`).

Each process has its own registry (no process-global collectors). Celery's prefork pool runs
tasks in a child process, so the server is started where tasks run: in the pool child
(``worker_process_init``) for prefork, in the main process for the solo and thread pools.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from persistence.models import Job, JobStage, JobStatus, StageStatus
from persistence.workers import live_workers

if TYPE_CHECKING:
    from worker.runtime import PartRun

logger = logging.getLogger(__name__)

#: Stage durations (s): seconds on a GPU for small models, hours for big ones on a CPU.
STAGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


class _StateCollector(Collector):
    """Jobs by state, stages waiting, live workers and the broker's queue depth, read when
    scraped."""

    def __init__(self, resources: Any, queue_size: Any) -> None:
        self.resources = resources
        self.queue_size = queue_size

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names, without values: the registry checks names when the collector is
        registered, and without this it would call :meth:`collect`, reading the database and the
        broker while the worker module is still being imported."""
        yield GaugeMetricFamily("rift_jobs", "", labels=["status"])
        yield GaugeMetricFamily("rift_stages_waiting", "")
        yield GaugeMetricFamily("rift_workers_live", "", labels=["queue"])
        yield GaugeMetricFamily("rift_queue_depth", "", labels=["queue"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("rift_jobs", "Jobs in the database by status.", labels=["status"])
        waiting = GaugeMetricFamily("rift_stages_waiting",
                                    "Stages ready to run (pending, job active) not yet claimed.")
        live = GaugeMetricFamily("rift_workers_live",
                                 "Worker processes seen within 3 heartbeats, by queue consumed.",
                                 labels=["queue"])
        try:
            with self.resources.session() as session:
                counts = dict(session.execute(
                    select(Job.status, func.count()).group_by(Job.status)).all())
                pending = session.execute(
                    select(func.count()).select_from(JobStage).join(Job, Job.id == JobStage.job_id)
                    .where(JobStage.status == StageStatus.PENDING,
                           func.coalesce(Job.stage, "mrc") == JobStage.stage,
                           Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).scalar_one()
                workers = live_workers(
                    session, heartbeat_seconds=self.resources.settings.worker_heartbeat_seconds)
            for status in JobStatus:
                jobs.add_metric([status.value], float(counts.get(status.value, 0)))
            waiting.add_metric([], float(pending))
            by_queue: dict[str, int] = {}
            for queue in (queue for worker in workers for queue in worker.queues):
                by_queue[queue] = by_queue.get(queue, 0) + 1
            for queue in sorted({self.resources.settings.celery_queue, *by_queue}):
                live.add_metric([queue], float(by_queue.get(queue, 0)))
            yield jobs
            yield waiting
            yield live
        except Exception:
            logger.warning("metrics: the database could not be read", exc_info=True)
        depth = GaugeMetricFamily("rift_queue_depth", "Messages waiting in the broker queue.",
                                  labels=["queue"])
        settings = self.resources.settings
        # The webhook queue too: its backlog (a receiver down, too few delivery workers) was
        # visible nowhere.
        measured = False
        for queue in dict.fromkeys((settings.celery_queue, settings.webhook_queue)):
            try:
                depth.add_metric([queue], float(self.queue_size(queue)))
                measured = True
            except Exception:
                logger.warning("metrics: the broker queue %s could not be measured", queue,
                               exc_info=True)
        if measured:
            yield depth


class WorkerMetrics:
    """The collectors of one worker process and its HTTP server."""

    def __init__(self, resources: Any, queue_size: Any) -> None:
        # PROMETHEUS_MULTIPROC_DIR is the API's setting, but prometheus_client reads it in every
        # process that imports it: a worker given it (a shared environment file) keeps its
        # values in files there, and its first metric failed with FileNotFoundError where the
        # folder did not exist. Each worker process still serves its own registry.
        shared = resources.settings.prometheus_multiproc_dir
        if shared is not None:
            Path(shared).mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram("rift_stage_duration_seconds",
                                       "Run time of a stage attempt in this worker.",
                                       ["stage", "outcome"], buckets=STAGE_BUCKETS,
                                       registry=self.registry)
        self.part_seconds = Histogram("rift_part_duration_seconds",
                                      "Run time of an MRC shard or sweep candidate task in this "
                                      "worker.", ["stage", "outcome"], buckets=STAGE_BUCKETS,
                                      registry=self.registry)
        self.attempts = Counter("rift_stage_attempts", "Stage claims won by this worker.",
                                ["stage"], registry=self.registry)
        self.gpu_seconds = Counter("rift_gpu_seconds",
                                   "Seconds of stage and part tasks run on a CUDA device.",
                                   ["stage"], registry=self.registry)
        self.device_seconds = Counter("rift_device_seconds",
                                      "Seconds of stage and part tasks by the type of device "
                                      "they ran on.", ["stage", "device"],
                                      registry=self.registry)
        self.materializations = Counter("rift_materializations",
                                        "Materialization requests handled, by outcome.",
                                        ["outcome"], registry=self.registry)
        self.registry.register(_StateCollector(resources, queue_size))
        self._server_pid: int | None = None
        self._lock = threading.Lock()

    def observe_stage(self, stage: str, outcome: str, seconds: float, device: str | None) -> None:
        self.stage_seconds.labels(stage, outcome).observe(seconds)
        self._count_device_time(stage, seconds, device)

    def timed_part(self, stage: str, run: Callable[[], PartRun]) -> str:
        """``run()`` (a shard or candidate task, returning its outcome and device), its run time
        recorded, and counted as device time as a stage's is; returns the outcome. Those tasks
        recorded nothing: a sharded MRC or a sweep's fine-tuning, the bulk of their jobs' time,
        was missing from every duration, then from the GPU seconds (the device, resolved inside
        the task, was not handed back)."""
        started = time.monotonic()
        outcome, device = run()
        seconds = time.monotonic() - started
        self.part_seconds.labels(stage, outcome).observe(seconds)
        self._count_device_time(stage, seconds, device)
        return outcome

    def _count_device_time(self, stage: str, seconds: float, device: str | None) -> None:
        """``device`` as a job records it (``cpu``, ``cuda:0 (NVIDIA H100 ...)``); None: the task
        ended before it resolved one, and ran on none."""
        if device is None:
            return
        kind = device.split(":", 1)[0].split(" ", 1)[0]
        self.device_seconds.labels(stage, kind).inc(seconds)
        if kind == "cuda":
            self.gpu_seconds.labels(stage).inc(seconds)

    def serve(self, port: int) -> bool:
        """Start the HTTP server on ``port`` (once per process); False if the port is taken."""
        with self._lock:
            if port == 0 or self._server_pid == os.getpid():
                return False
            try:
                start_http_server(port, registry=self.registry)
            except OSError as exc:
                logger.warning("worker metrics: port %d is not free (%s); not serving metrics "
                               "from process %d", port, exc, os.getpid())
                return False
            self._server_pid = os.getpid()
        logger.info("worker metrics served on port %d", port)
        return True
