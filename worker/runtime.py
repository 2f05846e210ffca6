"""What a worker process holds while it runs stages: its database and store handles, its id, its
cache of prepared runs (:mod:`worker.prepared_runs`), and the reporter that keeps a stage's lease
alive and turns pipeline callbacks into database writes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import exc as database_errors
from sqlalchemy.orm import Session, sessionmaker

from persistence import materializations, stage_shards, stages
from persistence.db import session_factory_from_settings
from persistence.db_clock import db_now
from persistence.event_notify import build_publisher, install_publisher
from persistence.models import TERMINAL_STATUSES, Job, utcnow
from persistence.settings import Settings
from persistence.stages import LeaseLost
from persistence.storage import ObjectNotFound, ObjectStore
from persistence.time_limits import TimeLimit
from persistence.transactions import EventKind, JobNotFound
from persistence.webhooks import install_delivery_dispatch
from rift.errors import JobCancelled, RiftError, TimeLimitExceeded
from worker.prepared_runs import PreparedRunCache
from worker.store_writes import PatientObjectStore

logger = logging.getLogger(__name__)

#: Files of one stage written at once: the interpolate stage writes five (weights, result, charts).
STORE_WRITERS = 6


#: What a database that cannot be reached or cannot answer now raises (connection refused or
#: lost, starting up, too many connections, SQLite busy, the pool exhausted): worth another try.
DATABASE_DOWN = (database_errors.OperationalError, database_errors.InterfaceError,
                 database_errors.TimeoutError)


def resend_later(what: str, resend: Callable[[float], None], delay: float,
                 exc: Exception) -> str:
    """A task met ``exc`` (one of :data:`DATABASE_DOWN`) before it held any work: send its
    message again after ``delay`` seconds with ``resend(delay)``, and return the task's outcome
    ("database_unavailable"). Raising instead would lose the message (``acks_late``
    acknowledges a failed task too), and the work would wait for the recovery loop's
    ``QUEUED_RESEND_AFTER_SECONDS``; a claim that did commit unseen holds a lease that expires,
    as after a crash."""
    logger.warning("%s: the database (DATABASE_URL) cannot be reached (%s: %s); its message "
                   "is sent again in %.1f s", what, type(exc).__name__,
                   (str(exc).splitlines() or [""])[0][:300], delay)
    resend(delay)
    return "database_unavailable"


class ShuttingDown(Exception):
    """The worker process began a warm shutdown (SIGTERM): the work it holds stops at its next
    batch and goes back to the queue for another worker (see ``WorkerResources.stopping``)."""


@dataclass
class _ProcessHandles:
    pid: int
    worker_id: str
    session_factory: sessionmaker[Session]
    store: ObjectStore
    prepared_runs: PreparedRunCache
    store_writer: ThreadPoolExecutor


@dataclass
class WorkerResources:
    """Per-process handles built on first use from ``settings``.

    Built lazily and per process id: a database connection pool must not cross a ``fork`` (the
    prefork pool forks children after the app is imported).
    """

    settings: Settings
    #: Sends a webhook message's task by id; set by ``register_tasks``. Sessions call it after
    #: a commit that wrote messages (a job's end).
    webhook_sender: Callable[[str], None] | None = None
    #: The process's Prometheus collectors (:class:`worker.metrics.WorkerMetrics`), set by
    #: :func:`worker.tasks.register_tasks`.
    metrics: Any = field(default=None, repr=False)
    #: Set when the worker process begins a warm shutdown (in a prefork pool child, when the
    #: parent tells it: :mod:`worker.tasks`): the work it runs stops at its next batch
    #: (:class:`ShuttingDown`) and is handed back, and a stage it finishes sends the next
    #: stage's message instead of running that stage itself (see ``worker_chain_stages``).
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    #: Random, made where the resources are (the prefork parent, before it forks) and so shared
    #: by its pool children: their owner ids begin ``host:pid:<family>`` (:meth:`owner_prefix`),
    #: which no process of another parent has. Host and pid alone are not enough: containers on
    #: the host's network share its hostname, each with its own pid namespace.
    family: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _handles: _ProcessHandles | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _get(self) -> _ProcessHandles:
        with self._lock:
            if self._handles is None or self._handles.pid != os.getpid():
                factory = session_factory_from_settings(self.settings)
                # The API's event streams hear of the events this process commits.
                publisher = build_publisher(self.settings)
                if publisher is not None:
                    install_publisher(factory, publisher)
                if self.webhook_sender is not None:
                    install_delivery_dispatch(factory, self.webhook_sender)
                self._handles = _ProcessHandles(
                    pid=os.getpid(),
                    # Unique per process and start, so a restarted worker never reuses a lease.
                    worker_id=self.owner_prefix(os.getpid()) + uuid.uuid4().hex[:8],
                    session_factory=factory,
                    # Outputs written as work ends wait out a short store outage.
                    store=cast(ObjectStore, PatientObjectStore(
                        self.settings.build_object_store(),
                        give_up_after_s=self.settings.worker_lease_seconds)),
                    # Per process: a forked child starts with none of its parent's runs.
                    prepared_runs=PreparedRunCache(self.settings.worker_prepared_run_cache_bytes),
                    store_writer=ThreadPoolExecutor(STORE_WRITERS,
                                                    thread_name_prefix="store-write"),
                )
            return self._handles

    def owner_prefix(self, pid: int) -> str:
        """How the owner ids of process ``pid`` of this family (this process, or a pool child
        it forked) begin: ``host:pid:<family>``."""
        return f"{socket.gethostname()}:{pid}:{self.family}"

    @property
    def worker_id(self) -> str:
        return self._get().worker_id

    @property
    def store(self) -> ObjectStore:
        return self._get().store

    @property
    def prepared_runs(self) -> PreparedRunCache:
        return self._get().prepared_runs

    @property
    def store_writer(self) -> ThreadPoolExecutor:
        """The threads that write a stage's files side by side (``worker.stages``)."""
        return self._get().store_writer

    @property
    def chains_stages(self) -> bool:
        """Whether a finished stage's worker claims and runs the job's next stage itself."""
        return self.settings.worker_chain_stages and not self.stopping.is_set()

    def session(self) -> Session:
        """A new session; use it in a ``with`` block so it is closed promptly."""
        return self._get().session_factory()


class LeaseHeartbeat:
    """Keeps one lease alive from a daemon thread: :meth:`renew` (which subclasses define: a
    stage's, a part's, a materialization's) every third of ``WORKER_LEASE_SECONDS``, also while
    the work sits in code that calls no callback (loading data, building the model). A renewal
    that matches no row (another worker took the work over, or its row is gone) flags the lease
    as lost and ends the thread; a failed one (the database briefly unreachable) is retried at
    the next beat, the lease having slack for it."""

    def __init__(self, resources: WorkerResources, what: str) -> None:
        self.resources = resources
        self.owner = resources.worker_id
        self._what = what  # in log lines: "job <id> stage <stage>"
        self._lease_seconds = resources.settings.worker_lease_seconds
        self._lease_lost = threading.Event()
        # The renewal failed because the job ended (the recovery loop failed it past its time
        # limit), not because another worker took the work: the work stops as for a
        # cancellation, and the end is reported as the job's, not as a lease lost.
        self._job_ended = threading.Event()
        # Set once the work's end is being recorded (:meth:`begin_finish`).
        self._finishing = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self._what}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def begin_finish(self) -> None:
        """The work's end is about to be recorded. Its own commit clears the lease, so a
        renewal that finds the lease gone from now on may be that commit's doing: the heartbeat
        then ends without flagging the lease as lost. The finishing transactions check that
        this worker still holds the work themselves. Before, a beat between the commit and
        :meth:`stop` logged "lease lost to another worker" for a stage that had just ended
        well; and a finish retried through a database outage whose first try had committed
        unseen could raise :class:`LeaseLost` (a beat after the outage) instead of reading
        that try back."""
        self._finishing.set()

    def _heartbeat(self) -> None:
        period = self._lease_seconds / 3
        while not self._stop.wait(period):
            try:
                held = self.renew()
            except Exception:
                logger.warning("could not renew the lease of %s", self._what, exc_info=True)
                continue
            if not held:
                if self._finishing.is_set():
                    logger.debug("%s: its lease ended with its finish", self._what)
                    return
                if self._ended_meanwhile():
                    logger.info("%s: the job has ended; its lease ended with it", self._what)
                    self._job_ended.set()
                    return
                logger.warning("%s: lease lost to another worker", self._what)
                self._lease_lost.set()
                return

    def renew(self) -> bool:
        """Extend the lease; False once this worker no longer holds it."""
        raise NotImplementedError

    def work_ended(self) -> bool:
        """After a failed renewal: whether the work's job has ended (none here; see
        :class:`StageReporter`), so no other worker holds it."""
        return False

    def _ended_meanwhile(self) -> bool:
        try:
            return self.work_ended()
        except Exception:  # cannot tell (the database away): stop as for a lost lease
            logger.warning("%s: could not read whether its job ended", self._what,
                           exc_info=True)
            return False

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def what(self) -> str:
        """The leased work, in log lines: "job <id> stage <stage>", "materialization <id>"."""
        return self._what


@dataclass
class PendingReports:
    """What a stage reported and its reporter has not written: its events ``(kind, payload,
    when)`` in order, and the job's device if not yet recorded."""

    events: list[tuple[str, dict[str, Any], datetime]]
    device: str | None = None


class StageReporter(LeaseHeartbeat):
    """Keeps the lease of one claimed stage and reports the pipeline's callbacks to the database.

    Its heartbeat (:class:`LeaseHeartbeat`) flags the lease as lost when another worker took the
    stage over. ``should_cancel``, which the
    library polls at every batch and attack step (:mod:`rift.cancellation`), then raises
    :class:`persistence.stages.LeaseLost`; it raises :class:`rift.errors.TimeLimitExceeded` once
    the job first claimed at ``started_at`` is past ``time_limit`` (its own
    ``time_limit_seconds``, else ``JOB_TIME_LIMIT_SECONDS``), and :class:`ShuttingDown` once
    the worker process began a warm shutdown (the stage is then handed back).

    Events (all, in order), progress (the latest) and the job's device (:meth:`set_device`) are
    written, and the job's cancellation flag read, together in one transaction (a write) at most
    once per ``progress_interval_seconds`` from the stage's start, instead of a transaction per
    event, progress write and check: each costs milliseconds, and fine-tuning sends an event per
    epoch (measured: 4–10 % of a fast fine-tuning run before). Every ``warning`` is written at
    once, and what waits when the time limit passes; the stage writes the rest with its outputs
    (:meth:`take_pending`), so a stage shorter than the interval writes nothing before its end
    (a job's claim and each stage's finish read the cancellation flag too). Events still waiting
    when a stage fails or loses its lease are dropped (at most one interval's worth), so none
    follows the job's end. (Before, the first report and a finished progress (1.0) were written
    at once too, and the device on its own: seven transactions more per demo job, each also
    waking the API's event streams while the stage computes.)

    With ``write_behind`` (the stage tasks), the writes happen on a thread of the reporter, so
    the stage's own thread never waits for the database: a write costs the compute a lock and a
    wake-up instead of the round trips and the commit (measured in the worker: 1–22 ms of wall
    each for 0.7–3.8 ms of CPU on a loaded machine). The cancellation flag a write reads is then
    returned from the next ``should_cancel`` (one batch later), and an error of a write is raised
    there (or by :meth:`take_pending`), so the stage fails as it would have; but a write that
    meets an unreachable database (:data:`DATABASE_DOWN`: a restart, a failover) is logged and
    its reports kept for the next write, so the stage runs on through an outage shorter than its
    lease (they used to fail the stage at its next batch, which then started over elsewhere).
    :meth:`close` waits for a write in flight and ends the writing: the stage calls it before it
    records its end (failure, cancellation), so no report of the stage follows that. Without
    ``write_behind``, or before :meth:`start`, writes happen on the caller's thread.
    """

    def __init__(self, resources: WorkerResources, job_id: str, stage: str,
                 clock: Callable[[], float] = time.monotonic, *,
                 time_limit: TimeLimit | None = None, started_at: datetime | None = None,
                 write_behind: bool = False) -> None:
        super().__init__(resources, f"job {job_id} stage {stage}")
        self.job_id = job_id
        self.stage = stage
        self._clock = clock
        self._interval = resources.settings.progress_interval_seconds
        self._last_flush = clock()  # the first write an interval after the stage's start
        self._cancel = False
        # The job's deadline on this process's clock (None: not enforced here). ``started_at``
        # is the database's time (persistence/db_clock.py), so the time left is measured by it
        # too: by this process's own clock, one running ahead would fail jobs early.
        self._time_limit = time_limit
        self._deadline = (clock() + time_limit.seconds_left(started_at, self._db_now(started_at))
                          if time_limit is not None else None)
        # What waits to be written; the stage's thread adds, the writer takes (_pending_lock).
        self._events: list[tuple[str, dict[str, Any], datetime]] = []
        self._progress: tuple[float, str | None] | None = None
        self._device: str | None = None
        self._pending_lock = threading.Lock()
        # One write at a time, so writes commit in the order their reports were made.
        self._write_lock = threading.Lock()
        self._closed = False
        self._write_behind = write_behind
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()
        self._error: Exception | None = None

    def _db_now(self, started_at: datetime | None) -> datetime | None:
        """The database's time, when there is a start to measure from (else no round trip)."""
        if started_at is None:
            return None
        with self.resources.session() as session:
            return db_now(session)

    # -- writer -------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._write_behind:
            self._writer = threading.Thread(target=self._write_loop,
                                            name=f"report-{self.job_id}", daemon=True)
            self._writer.start()

    def stop(self) -> None:
        self.close()
        self._stop.set()  # before the wake-up: the woken writer must see it and end
        self._wake.set()
        super().stop()
        if self._writer is not None:
            self._writer.join(timeout=10)

    def close(self) -> None:
        """Wait for a write in flight, then write nothing more: what waits is dropped, but for
        the job's device (:meth:`set_device`), which is written now if it was not yet."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._pending_lock:
                device, self._device = self._device, None
        # Another worker's job row now, or an ended job's (which gets no reports).
        if device is None or self._lease_lost.is_set() or self._job_ended.is_set():
            return
        try:
            with self.resources.session() as session:
                stages.set_job_device(session, self.job_id, device)
        except Exception:
            # The stage is ending anyway (its error is what the job records).
            logger.warning("could not record the device of job %s", self.job_id, exc_info=True)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._write()
            except DATABASE_DOWN:
                # Kept for the next write (see _write); the lease has slack for the outage.
                logger.warning("could not write the reports of %s; will retry", self._what,
                               exc_info=True)
            except Exception as exc:
                # Raised on the stage's thread at its next callback: the stage fails as it
                # would have with the write on its own thread.
                self._error = exc
                return

    def renew(self) -> bool:
        """Extend the lease; False once another worker holds it."""
        with self.resources.session() as session:
            return stages.renew_lease(session, self.job_id, self.stage, owner=self.owner,
                                      lease_seconds=self._lease_seconds)

    def work_ended(self) -> bool:
        """Whether the job ended (or is gone): the recovery loop's failure past the time limit
        clears the stage's lease, which a worker late to its own check then fails to renew.
        Before, that read as "lease lost to another worker" (a warning, outcome ``lease_lost``)."""
        return job_has_ended(self.resources, self.job_id)

    # -- pipeline callbacks ----------------------------------------------------------------
    def on_progress(self, stage: str, fraction: float, message: str) -> None:
        self._raise_write_error()
        with self._pending_lock:
            self._progress = (fraction, message)
        if self._due():
            self._report()

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        self._raise_write_error()
        with self._pending_lock:
            self._events.append((kind, payload, utcnow()))
        if kind == EventKind.WARNING or self._due():
            self._report()

    def should_cancel(self) -> bool:
        self._raise_write_error()
        if self._lease_lost.is_set():
            raise stages.LeaseLost(f"worker {self.owner} lost the lease on stage '{self.stage}' "
                                   f"of job {self.job_id}")
        if self._job_ended.is_set():
            return True  # stops as for a cancellation; the end is the job's (JobEnded)
        if self._deadline is not None and self._clock() >= self._deadline:
            self.flush()
            assert self._time_limit is not None
            raise TimeLimitExceeded(self._time_limit.message())
        if self.resources.stopping.is_set() and not self._cancel:  # a cancelled job just ends
            raise ShuttingDown(f"worker {self.owner} is shutting down")
        if not self._cancel and self._due():
            self._report()
        return self._cancel

    def cancelled_at_end(self) -> bool:
        """:meth:`should_cancel` for work that has finished, before it records its outputs:
        the lease lost raises, a cancellation read returns True, but a warm shutdown does not
        stop it (the work is done; handing it back would run it again from its start)."""
        self._raise_write_error()
        if self._lease_lost.is_set():
            raise stages.LeaseLost(f"worker {self.owner} lost the lease on stage '{self.stage}' "
                                   f"of job {self.job_id}")
        return self._cancel or self._job_ended.is_set()

    def set_device(self, device: str) -> None:
        """Record the device the job runs on, with the next write."""
        with self._pending_lock:
            self._device = device

    def flush(self) -> None:
        """Write the waiting events, the latest progress and the device, and read the
        cancellation flag, in one transaction, on the caller's thread (after a write in
        flight)."""
        self._raise_write_error()
        self._last_flush = self._clock()
        self._write()

    def _report(self) -> None:
        """A write now: handed to the writer thread, or made here without one."""
        self._last_flush = self._clock()
        if self._writer is None:
            try:
                self._write()
            except DATABASE_DOWN:
                logger.warning("could not write the reports of %s; will retry", self._what,
                               exc_info=True)
        else:
            self._wake.set()

    def _write(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            with self._pending_lock:
                events, self._events = self._events, []
                progress, self._progress = self._progress, None
                device, self._device = self._device, None
            try:
                with self.resources.session() as session:
                    stop = stages.report_activity(session, self.job_id, self.stage,
                                                  events=events, progress=progress,
                                                  device=device)
            except DATABASE_DOWN:
                # The database is briefly away (a restart, a failover): what was taken waits
                # for the next write, before what came meanwhile, and the stage runs on; a
                # longer outage ends with the lease, which the heartbeat cannot renew.
                with self._pending_lock:
                    self._events = events + self._events
                    self._progress = self._progress or progress
                    self._device = self._device or device
                raise
            self._cancel = self._cancel or stop

    def _raise_write_error(self) -> None:
        if self._error is not None:
            raise self._error

    def take_pending(self) -> PendingReports:
        """What is not yet written, for the caller to write in its own transaction (the stage's
        outputs): one commit fewer at the end of a stage. Waits for a write in flight and ends
        the writing. The waiting progress is dropped: finishing the stage sets it."""
        with self._write_lock:
            self._raise_write_error()
            self._closed = True
            with self._pending_lock:
                pending = PendingReports(self._events, self._device)
                self._events, self._progress, self._device = [], None, None
        return pending

    def _due(self) -> bool:
        return self._clock() - self._last_flush >= self._interval


class PartRun(NamedTuple):
    """What an MRC shard or sweep candidate task did (``outcome``, as a stage's) and the device
    it resolved for the job (``device``, as recorded in the job: ``cpu``, ``cuda:0 (...)``; None
    when it ended before resolving one), so that its run time counts as that device's time
    (:meth:`worker.metrics.WorkerMetrics.timed_part`) as a stage's does."""

    outcome: str
    device: str | None = None


def stored_events_of(resources: WorkerResources, job_id: str
                     ) -> Callable[[str, str], list[dict[str, Any]]]:
    """A stage's ``stored_events`` callback (``rift.pipeline.PipelineCallbacks``): what earlier
    attempts of the job stored under a digest (``stages.stored_events``)."""
    def stored(kind: str, inputs: str) -> list[dict[str, Any]]:
        with resources.session() as session:
            return stages.stored_events(session, job_id, kind, inputs)
    return stored


class PartReporter(StageReporter):
    """A :class:`StageReporter` whose heartbeat renews the lease of one part of a split stage (an
    MRC shard, a sweep candidate: :mod:`persistence.stage_shards`). Parts run side by side, so
    they do not write the job's progress: finishing a part does (parts done / parts)."""

    def __init__(self, resources: WorkerResources, job_id: str, kind: stage_shards.PartKind,
                 index: int, *, time_limit: TimeLimit | None = None,
                 started_at: datetime | None = None) -> None:
        super().__init__(resources, job_id, kind.stage, time_limit=time_limit,
                         started_at=started_at)
        self.kind, self.index = kind, index
        self._what = f"job {job_id} {kind.noun} {index}"

    def renew(self) -> bool:
        with self.resources.session() as session:
            return stage_shards.renew_part_lease(session, self.kind, self.job_id, self.index,
                                                 owner=self.owner,
                                                 lease_seconds=self._lease_seconds)

    def on_progress(self, stage: str, fraction: float, message: str) -> None:
        """Progress within a part is not recorded (see the class docstring)."""


def error_summary(exc: BaseException) -> str:
    """An unexpected error as the job's message gives it: ``Type: first line`` (a driver error
    carries whole SQL statements after it), then the notes the library added, e.g. which MRC
    module was being scored (``rift.mrc``)."""
    first_line = (str(exc).splitlines() or [""])[0][:300]
    notes = "; ".join(str(note) for note in getattr(exc, "__notes__", ()))
    return f"{type(exc).__name__}: {first_line}" + (f" ({notes[:300]})" if notes else "")


def job_has_ended(resources: WorkerResources, job_id: str) -> bool:
    """Whether the job ended (or is gone). A part that stopped for its job's failure or
    cancellation ends the job only if it was the last running part; until then what the parts
    share (an MRC shard set, a sweep's epoch states) is still in use by the others."""
    with resources.session() as session:
        job = session.get(Job, job_id)
        return job is None or job.status in TERMINAL_STATUSES


def settle_part_error(lease: LeaseHeartbeat, kind: stage_shards.PartKind, job_id: str,
                      index: int, attempt: int, exc: Exception) -> str:
    """End a part of a split stage (MRC shard, sweep candidate) that raised ``exc``, held under
    ``lease`` (its reporter, still renewing it); call it from the ``except`` block. Its release,
    hand-back and failure are tried again through a database outage (:mod:`worker.finishing`).
    Returns the task's outcome: "cancelled", "lease_lost", "failed",
    "retry" (the part is released and the caller sends it again after the retry delay),
    "handed_back" (the worker is shutting down: the part is pending again, its attempt not
    counted, and the caller sends it again at once) or "job_ended" (the job was deleted as the
    part stopped: nothing is left to record; before, ``JobNotFound`` reached the worker's log as
    the task's error).

    Errors of the library (the time limit included) and missing inputs fail the job: another
    attempt would meet the same error, and a split stage with a part missing cannot finish. The
    part is marked failed; while a sibling part runs the job's failure is pending and the
    siblings stop first (:func:`persistence.stage_shards.fail_part`).
    Anything else is retried until the part has had ``max_stage_attempts``."""
    try:
        return _settle_part(lease, kind, job_id, index, attempt, exc)
    except JobNotFound:
        logger.info("job %s %s %d stopped: the job was deleted meanwhile", job_id, kind.noun,
                    index)
        return "job_ended"


def _settle_part(lease: LeaseHeartbeat, kind: stage_shards.PartKind, job_id: str,
                 index: int, attempt: int, exc: Exception) -> str:
    # Here, not at the top: worker.finishing builds on this module's LeaseHeartbeat.
    from worker.finishing import record_finish

    resources, owner = lease.resources, lease.owner
    if isinstance(exc, JobCancelled):
        # The job ends with its last running part (before, the first part to stop ended it
        # while the others still ran).
        with resources.session() as session:
            stage_shards.stop_cancelled_part(session, kind, job_id, index, owner=owner)
        return "cancelled"
    if isinstance(exc, LeaseLost):
        logger.warning("job %s %s %d: %s", job_id, kind.noun, index, exc)
        return "lease_lost"
    if isinstance(exc, ShuttingDown):
        try:
            cancelled = record_finish(
                lease,
                lambda session: stage_shards.hand_back_part(session, kind, job_id, index,
                                                            owner=owner),
                lambda session: stage_shards.recorded_part_hand_back(
                    session, kind, job_id, index, owner=owner, attempt=attempt))
        except LeaseLost as lost:
            logger.warning("job %s %s %d: %s", job_id, kind.noun, index, lost)
            return "lease_lost"
        if cancelled:  # its cancellation was asked and nothing else runs: ended, not resent
            return "cancelled"
        logger.info("job %s %s %d handed back: the worker is shutting down", job_id, kind.noun,
                    index)
        return "handed_back"
    if isinstance(exc, RiftError | ObjectNotFound):
        code = exc.code if isinstance(exc, RiftError) else "missing_object"
        _fail_part(lease, kind, job_id, index, attempt, code, exc.message,
                   exc.field if isinstance(exc, RiftError) else None)
        return "failed"
    logger.exception("job %s %s %d: unexpected error", job_id, kind.noun, index)
    if attempt >= resources.settings.max_stage_attempts:
        _fail_part(lease, kind, job_id, index, attempt, "stage_failed_repeatedly",
                   f"{kind.noun} {index} failed {attempt} times; last error: "
                   f"{error_summary(exc)}")
        return "failed"
    # Read here, in the caller's except block: a try again runs in record_finish's own.
    error = traceback.format_exc(limit=5)

    def release(session: Session) -> bool:
        stage_shards.release_part(session, kind, job_id, index, owner=owner, error=error)
        return True

    record_finish(lease, release,
                  lambda session: stage_shards.recorded_part_release(
                      session, kind, job_id, index, attempt=attempt, error=error))
    return "retry"


def _fail_part(lease: LeaseHeartbeat, kind: stage_shards.PartKind, job_id: str, index: int,
               attempt: int, code: str, message: str, field: str | None = None) -> None:
    """:func:`persistence.stage_shards.fail_part` of the part held under ``lease``, tried again
    through a database outage."""
    from worker.finishing import record_finish  # as in _settle_part

    record_finish(
        lease,
        lambda session: stage_shards.fail_part(session, kind, job_id, index, owner=lease.owner,
                                               code=code, message=message, field=field),
        lambda session: stage_shards.recorded_part_failure(session, kind, job_id, index,
                                                           attempt=attempt, message=message))


class MaterializationLease(LeaseHeartbeat):
    """The lease of one claimed materialization (:mod:`persistence.materializations`), renewed by
    the heartbeat while its weights are made and evaluated. :meth:`should_cancel` is the
    evaluation's cancellation callback: it raises :class:`persistence.stages.LeaseLost` once the
    lease is lost, so a worker taken over (or whose job was deleted) stops at its next batch."""

    def __init__(self, resources: WorkerResources, materialization_id: str) -> None:
        super().__init__(resources, f"materialization {materialization_id}")
        self.materialization_id = materialization_id

    def renew(self) -> bool:
        with self.resources.session() as session:
            return materializations.renew_materialization_lease(
                session, self.materialization_id, owner=self.owner,
                lease_seconds=self._lease_seconds)

    def should_cancel(self) -> bool:
        if self.lease_lost:
            raise LeaseLost(f"worker {self.owner} lost the lease on materialization "
                            f"{self.materialization_id}")
        if self.resources.stopping.is_set():
            raise ShuttingDown(f"worker {self.owner} is shutting down")
        return False
