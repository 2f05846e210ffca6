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

A heartbeat that fails (database unreachable) is logged and tried again at the next one; it never
reaches the tasks. A worker that could not write for 3 heartbeats counts as gone and the janitor
may delete its row: the next heartbeat that succeeds registers it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime

from persistence import workers
from persistence.models import utcnow
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
    in the heartbeat thread). :meth:`start` and :meth:`stop` act once per process, so a handler
    connected to several signals, or a forked copy of this object, does no harm.
    """

    def __init__(self, resources: WorkerResources, queues: Callable[[], list[str]],
                 devices: Callable[[], dict[str, int]] = local_devices) -> None:
        self.resources = resources
        self._queues = queues
        self._devices = devices
        self._pid: int | None = None
        self._info: workers.WorkerInfo | None = None
        self._registered = False
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
        """One heartbeat: register (first time, or when the row has gone), else renew
        ``last_seen_at``. Raises what the database raises."""
        info = self._info
        assert info is not None
        with self.resources.session() as session:
            if self._registered and workers.touch_worker(session, info.id):
                return
            workers.register_worker(session, info)
        if self._registered:
            logger.info("worker %s registered again (its row had been removed)", info.id)
        self._registered = True

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
