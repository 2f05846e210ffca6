"""This worker process's row in the worker registry (:mod:`persistence.workers`): registered when
the process is ready, renewed by a daemon heartbeat thread every ``WORKER_HEARTBEAT_SECONDS``,
deleted on a clean shutdown.

The row belongs to the process that runs the tasks, under the id its stage leases carry
(:attr:`worker.runtime.WorkerResources.worker_id`): with Celery's prefork pool that is each pool
child (started from ``worker_process_init``, ended from ``worker_process_shutdown``), with the
solo and thread pools the main process (``worker_ready`` / ``worker_shutdown``). The devices are
counted once, by the heartbeat thread before its first write, in that process: never in a
prefork parent, where asking CUDA before the fork would break CUDA in the children, and never in
a signal handler, which Celery waits on (a pool child must report up within seconds, and
counting CUDA devices can take that long).

The built-in datasets the process's ``DATA_ROOT`` holds (:func:`rift.data_root.datasets_present`)
are looked at by the same thread, before the first write and again at the first heartbeat after
each ``WORKER_DATASETS_CHECK_SECONDS``; the row's list is rewritten with that heartbeat when it
changed (a dataset copied in, or removed, while the worker runs).

A heartbeat that fails (database unreachable) is logged and tried again at the next one; it never
reaches the tasks. A worker that could not write for 3 heartbeats counts as gone and the janitor
may delete its row: the next heartbeat that succeeds registers it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from persistence import workers
from persistence.models import utcnow
from rift.data_root import datasets_present
from rift.device import visible_devices
from rift.device_names import DEVICE_TYPES
from worker.runtime import WorkerResources

logger = logging.getLogger(__name__)


def local_devices() -> dict[str, int]:
    """This process's devices by type, those it has none of left out: ``{"cpu": 1, "cuda": 2}``."""
    counts = {kind: visible_devices(kind) for kind in DEVICE_TYPES}
    return {kind: count for kind, count in counts.items() if count > 0}


class WorkerRegistration:
    """The registry row of the process that calls :meth:`start`, and its heartbeat thread.

    ``queues`` gives the queues the worker consumes; ``devices`` counts the devices (called once,
    in the heartbeat thread); ``datasets`` names the built-in datasets held (default: those of
    the settings' ``data_root``; called in the heartbeat thread, at most every
    ``worker_datasets_check_seconds``). :meth:`start` and :meth:`stop` act once per process, so
    a handler connected to several signals, or a forked copy of this object, does no harm.
    """

    def __init__(self, resources: WorkerResources, queues: Callable[[], list[str]],
                 devices: Callable[[], dict[str, int]] = local_devices,
                 datasets: Callable[[], list[str]] | None = None) -> None:
        self.resources = resources
        self._queues = queues
        self._devices = devices
        self._datasets = datasets or (lambda: datasets_present(resources.settings.data_root))
        self._pid: int | None = None
        self._info: workers.WorkerInfo | None = None
        self._registered = False
        self._held: list[str] = []  # the datasets of the last look
        self._looked_at: float | None = None  # its time.monotonic()
        self._written: list[str] | None = None  # the datasets the row holds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """Whether this process started the registration (and has not stopped it)."""
        return self._pid == os.getpid() and self._thread is not None

    def start(self) -> None:
        """Start the heartbeat thread of this process; its first beat registers the worker."""
        if self._pid == os.getpid():
            return
        # A forked child starts afresh: its parent's thread, row and id are not its own.
        self._pid, self._info, self._registered = os.getpid(), None, False
        self._looked_at, self._written = None, None
        self._stop = threading.Event()
        started_at = utcnow()
        self._thread = threading.Thread(target=self._run, args=(started_at,),
                                        name="rift-worker-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeat and delete the row (a clean shutdown); a failure is only logged
        (the row then goes stale and the janitor removes it)."""
        if not self.started:
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        self._thread = None
        try:
            with self.resources.session() as session:
                workers.deregister_worker(session, self.resources.worker_id)
        except Exception:
            logger.warning("could not remove worker %s from the registry",
                           self.resources.worker_id, exc_info=True)

    def beat(self) -> None:
        """One heartbeat: look at the datasets if due, then register (first time, or when the
        row has gone), else renew ``last_seen_at`` (and the datasets, when they changed). Raises
        what the database raises."""
        info = self._info
        assert info is not None
        self._look_at_datasets()
        held = self._held
        with self.resources.session() as session:
            if self._registered:
                changed = held if held != self._written else None
                if workers.touch_worker(session, info.id, datasets=changed):
                    if changed is not None:
                        logger.info("worker %s: DATA_ROOT now holds %s", info.id,
                                    ", ".join(held) or "no built-in dataset")
                    self._written = held
                    return
            workers.register_worker(session, replace(info, datasets=held))
        if self._registered:
            logger.info("worker %s registered again (its row had been removed)", info.id)
        elif self.resources.settings.celery_queue not in info.queues:
            # A webhook-only worker reads no dataset: its DATA_ROOT (compose shares the stage
            # workers' environment without the mount) is no concern of its operator's.
            logger.info("worker %s registered; queues %s", info.id, ", ".join(info.queues))
        else:
            logger.info("worker %s registered; DATA_ROOT holds %s", info.id,
                        ", ".join(held) or "no built-in dataset")
        self._registered, self._written = True, held

    def _look_at_datasets(self) -> None:
        """Look again at the datasets held once ``worker_datasets_check_seconds`` passed."""
        period = self.resources.settings.worker_datasets_check_seconds
        now = time.monotonic()
        if self._looked_at is None or now - self._looked_at >= period:
            self._held, self._looked_at = sorted(self._datasets()), now

    def _run(self, started_at: datetime) -> None:
        period = self.resources.settings.worker_heartbeat_seconds
        wait = 0.0
        while not self._stop.wait(wait):
            wait = period
            try:
                if self._info is None:
                    self._info = self._describe(started_at)
                self.beat()
            except Exception:
                logger.warning("worker registry heartbeat failed; will retry in %.0f s", period,
                               exc_info=True)

    def _describe(self, started_at: datetime) -> workers.WorkerInfo:
        return workers.WorkerInfo(
            id=self.resources.worker_id, hostname=socket.gethostname(),
            queues=sorted(self._queues()), devices=self._devices(),
            device_override=self.resources.settings.worker_device,
            started_at=started_at)
