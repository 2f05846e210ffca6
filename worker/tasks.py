"""The Celery tasks: one per stage (``rift.stage.mrc``, ``.finetune``, ``.interpolate``), plus
the recovery of stages whose worker died.

A stage task gets only the job id. It claims the stage's lease in the database (a duplicate
message, or a stage another worker holds, returns at once; a stage already done only sends the
next message), runs the stage with the library, stores its outputs and marks it done in one
transaction, and in that transaction claims the job's next stage, which the same task then runs
(``WORKER_CHAIN_STAGES``; once the worker begins a warm shutdown, or with the setting off, it
sends the next stage's message instead). A chained stage is claimed under the same rules and
lease as one taken from the queue: a cancellation ends the job at that claim, and if the worker
dies the lease expires and the recovery loop sends the stage to another worker. Chaining saves
each later stage a message round trip through the broker, a claim transaction and the reads
after it; the queue orders jobs, a job's stages follow each other on one worker. The run (model
with θ_AT, data) comes from the process's cache when the job's previous stage ran here
(:mod:`worker.prepared_runs`). Outcomes:

- a library error (:class:`rift.errors.RiftError`): the job fails with the error's code and message
  (``timeout`` when the job passed ``JOB_TIME_LIMIT_SECONDS``, see :mod:`persistence.time_limits`);
- cancellation (:class:`rift.errors.JobCancelled`): the job ends ``cancelled``;
- any other exception: the stage is given back and retried, at most ``MAX_STAGE_ATTEMPTS`` claims
  (counted in the database, so crashes count too), then the job fails with
  ``stage_failed_repeatedly``.

A split stage hands its work to parts that any free worker runs under their own leases: the MRC
shards (``rift.stage.mrc_shard``, :mod:`worker.shards`) and the candidates of a sweep
(``rift.stage.finetune_candidate``, :mod:`worker.candidates`); the interpolate stage of a sweep
records the winner's curve instead of measuring one.

Recovery: a worker re-sends, on start and every ``WORKER_RECOVERY_INTERVAL_SECONDS``, the stages,
parts and materializations whose lease expired (the worker running them was killed) and, once
``QUEUED_RESEND_AFTER_SECONDS`` have passed since their message was sent, those nobody took (the
message was lost before any worker took it: :mod:`persistence.resend`), and the webhook messages
a lease length late, and every waiting row at once when the broker lost its messages
(:mod:`persistence.broker_loss`); a prefork parent hands over at once the work of its pool
children that exited holding leases (:mod:`persistence.lost_processes`); it fails the jobs past
their time limit whose worker is gone, and every ``JANITOR_INTERVAL_SECONDS`` it runs the janitor
(:mod:`persistence.janitor`).

Warm shutdown (SIGTERM): the stage, part or materialization running stops at its next batch
(:class:`worker.runtime.ShuttingDown`, raised by its ``should_cancel``) and is handed back,
its claim not counted, with its message sent again at once; a prefork parent tells its
children with :data:`SHUTDOWN_SIGNAL`. The next attempt of an MRC stage or shard (or of a full
interpolation curve) skips the modules (α points) the stopped one reported, reading them from the
job's events (``stored_events``: :mod:`rift.pipeline`). A message taken while the database refuses
connections is sent again after ``STAGE_RETRY_DELAY_SECONDS`` (:func:`worker.runtime.
resend_later`) instead of being acknowledged with the task's error and lost.

A message this release cannot take (a rolling deploy's other release sent it) goes back to the
queue for a worker that can (:mod:`worker.message_compat`); outputs written as work ends wait out
a short store outage (:mod:`worker.store_writes`).

Each process that runs tasks keeps its row in the worker registry (queues, devices, heartbeat;
:mod:`worker.registry`), which job creation reads to refuse a device no live worker has.

Around a stage: logs carry the job id and the request id of the API request that created the job
(from the message header, else the job row); the first stage stores the job's ``manifest.json``;
stage times, attempts and GPU seconds go to :mod:`worker.metrics`; after the last stage, the job
is exported to MLflow when ``MLFLOW_TRACKING_URI`` is set (a failure is a ``warning`` event only);
``rift.mlflow_export`` runs that export again when a user asks (``POST .../mlflow-export``).
Also here: ``rift.materialize``, which makes θ_α of a succeeded job at another α under a lease
of its own (:class:`worker.runtime.MaterializationLease`), as a stage is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from billiard import current_process
from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from sqlalchemy.orm import Session

from persistence import jobs, named_locks, stages, workers
from persistence.broker_loss import BrokerLossWatch, marker_key
from persistence.deletion import delete_objects
from persistence.janitor import run_janitor
from persistence.logs import log_context, use_json
from persistence.lost_processes import release_dead_process
from persistence.materializations import (
    MaterializationNotFound,
    fail_materialization,
    finish_materialization,
    hand_back_materialization,
    materializations_to_redispatch,
    recorded_materialization,
    recorded_materialization_failure,
    recorded_materialization_hand_back,
    start_materialization,
)
from persistence.models import (
    STAGE_ORDER,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobStatus,
    Materialization,
    StageName,
)
from persistence.queue import (
    MATERIALIZE_TASK_NAME,
    MLFLOW_EXPORT_TASK_NAME,
    RECOVER_TASK_NAME,
    REQUEST_ID_HEADER,
    STAGE_TASK_NAMES,
    WEBHOOK_TASK_NAME,
    RiftCelery,
    enqueue_materialization,
    enqueue_stage,
    enqueue_webhook,
)
from persistence.settings import Settings
from persistence.stages import ClaimOutcome, ClaimTerms, HandBackReason, JobEnded, LeaseLost
from persistence.storage import ObjectNotFound
from persistence.time_limits import fail_overdue_jobs, job_time_limit
from persistence.transactions import JobNotFound
from persistence.webhooks import deliveries_to_redispatch
from rift.errors import JobCancelled, RiftError
from rift.pipeline import PipelineCallbacks, run_preflight_stage
from rift.sweep import is_sweep
from worker import webhooks as webhook_delivery
from worker.candidates import (
    CANDIDATE_TASK_NAME,
    enqueue_candidate,
    execute_candidate,
    record_sweep_interpolation,
    redispatch_stale_candidates,
    start_sweep,
)
from worker.epoch_states import ObjectEpochStateStore, discard_epoch_states
from worker.finishing import record_finish
from worker.inputs import DatasetNotInDataRoot
from worker.message_compat import ArgumentsCheckedTask, leave_incompatible_messages
from worker.metrics import WorkerMetrics
from worker.mlflow_export import MlflowTarget, export_failure_message, export_job
from worker.prepared_runs import RunKey
from worker.registry import WorkerRegistration
from worker.runtime import (
    DATABASE_DOWN,
    MaterializationLease,
    ShuttingDown,
    StageReporter,
    WorkerResources,
    error_summary,
    resend_later,
    stored_events_of,
)
from worker.shards import (
    SHARD_TASK_NAME,
    enqueue_shard,
    execute_shard,
    redispatch_stale_shards,
    start_mrc_shards,
)
from worker.stages import FINETUNED, describe_device, job_manifest, prepare, run_stage

logger = logging.getLogger(__name__)

# Outcomes of a fine-tune stage attempt after which its epoch state is not read again: recorded,
# or the job ended (a "retry" or "handed_back" attempt is continued from it).
_ENDS_A_FINETUNE = frozenset({"done", "failed", "cancelled", "job_ended"})


def register_tasks(app: RiftCelery) -> WorkerResources:
    """Register the stage tasks, the recovery loop and the worker registry's heartbeat on
    ``app``; returns the process handles."""
    resources = WorkerResources(app.settings)
    # A rolling deploy's other release sends tasks or arguments this one lacks: never dropped.
    leave_incompatible_messages(app)
    resources.webhook_sender = lambda delivery_id: enqueue_webhook(app, delivery_id)
    resources.metrics = WorkerMetrics(resources, lambda queue: _queue_size(app, queue))

    for stage in STAGE_ORDER:
        _register_stage_task(app, resources, stage.value)

    @app.task(name=WEBHOOK_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True)
    def deliver_webhook(delivery_id: str) -> str:
        """Make the next attempt of a webhook message; a failed one re-sends itself later."""
        return webhook_delivery.deliver(
            resources, delivery_id,
            schedule_retry=lambda message, delay: enqueue_webhook(app, message, countdown=delay))

    @app.task(name=MATERIALIZE_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True, bind=True)
    def materialize(task: Task, materialization_id: str) -> str:
        """Make the weights of one materialization request; returns the outcome."""
        return execute_materialization(resources, materialization_id, _request_id_of(task),
                                       app=app)

    @app.task(name=MLFLOW_EXPORT_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True)
    def export_to_mlflow(job_id: str, request_event_id: int | None = None) -> None:
        """Export a succeeded job to MLflow again; the outcome is one of its events, naming
        the request's event (None: a message sent before requests were named)."""
        export_again(resources, job_id, request_event_id)

    @app.task(name=SHARD_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True)
    def run_mrc_shard(job_id: str, shard: int) -> str:
        """Score one shard of the job's MRC modules; returns the outcome."""
        return resources.metrics.timed_part(
            StageName.MRC.value, lambda: execute_shard(app, resources, job_id, shard))

    @app.task(name=CANDIDATE_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True)
    def run_sweep_candidate(job_id: str, candidate: int) -> str:
        """Fine-tune and measure one candidate of the job's sweep; returns the outcome."""
        return resources.metrics.timed_part(
            StageName.FINETUNE.value, lambda: execute_candidate(app, resources, job_id, candidate))

    @app.task(name=RECOVER_TASK_NAME, base=ArgumentsCheckedTask, ignore_result=True)
    def recover_stale_jobs() -> int:
        """Re-send the messages of stages whose worker died; returns how many were sent."""
        return redispatch_stale_stages(app, resources)

    controllers: list[Any] = []  # this process's WorkController, once it starts

    def remember_controller(sender: Any = None, **_: Any) -> None:
        controllers[:] = [sender]

    loop = RecoveryLoop(app, resources, children=lambda: pool_child_pids(
        controllers[0] if controllers else None))

    def start_recovery(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            loop.start()

    def stop_recovery(sender: Any = None, **_: Any) -> None:
        loop.stop()

    def stop_work(**_: Any) -> None:
        # A warm shutdown waits for the running task: the work it runs stops at its next batch
        # and goes back to the queue for another worker (ShuttingDown), so the process exits
        # within seconds instead of after the stage (Docker's grace is 10 s). Run in Celery's
        # signal handler of the main process, where the solo and thread pools run their tasks;
        # a prefork pool's children never hear of the shutdown, so they are told.
        resources.stopping.set()
        signal_pool_children(controllers[0] if controllers else None, SHUTDOWN_SIGNAL)

    def listen_for_shutdown(**_: Any) -> None:
        # In a prefork child, before it takes a task: the parent's word that it is stopping.
        # Not in a solo worker (which sends this signal too): there the flag would stay set with
        # Celery still consuming, and every message taken would be sent straight back.
        if current_process().name != "MainProcess":
            signal.signal(SHUTDOWN_SIGNAL, lambda *_: resources.stopping.set())

    registration = WorkerRegistration(
        resources, queues=lambda: list(app.amqp.queues.consume_from))

    def register_pool_child(**_: Any) -> None:
        # Prefork: each pool child runs tasks under its own lease owner id, so it is the worker
        # of the registry (solo sends this signal in the main process, registered below).
        if current_process().name != "MainProcess":
            registration.start()

    def register_main(sender: Any = None, **_: Any) -> None:
        pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
        if getattr(sender, "app", app) is app and "prefork" not in getattr(pool, "__module__", ""):
            registration.start()

    def deregister(**_: Any) -> None:
        registration.stop()  # only in the process that registered

    port = app.settings.worker_metrics_port

    def serve_metrics_in_child(**_: Any) -> None:
        # Prefork: tasks run in the pool's child process, so its collectors are the ones to serve.
        resources.metrics.serve(port)

    def serve_metrics_in_main(sender: Any = None, **_: Any) -> None:
        pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
        if "prefork" not in getattr(pool, "__module__", ""):
            resources.metrics.serve(port)

    def json_logs(logger: logging.Logger, **_: Any) -> None:
        if app.settings.log_format == "json":
            for handler in logger.handlers:
                use_json(handler)
        logging.getLogger("worker").setLevel(app.settings.log_level.upper())

    # weak=False: the handlers are closures that would otherwise be garbage-collected.
    worker_ready.connect(start_recovery, weak=False)
    worker_shutdown.connect(stop_recovery, weak=False)
    worker_init.connect(remember_controller, weak=False)
    worker_shutting_down.connect(stop_work, weak=False)
    worker_process_init.connect(listen_for_shutdown, weak=False)
    worker_process_init.connect(register_pool_child, weak=False)
    worker_ready.connect(register_main, weak=False)
    worker_process_shutdown.connect(deregister, weak=False)
    worker_shutdown.connect(deregister, weak=False)
    if port:
        worker_process_init.connect(serve_metrics_in_child, weak=False)
        worker_ready.connect(serve_metrics_in_main, weak=False)
    after_setup_logger.connect(json_logs, weak=False)
    after_setup_task_logger.connect(json_logs, weak=False)
    return resources


#: The signal a prefork parent in a warm shutdown sends its pool children, which run the tasks
#: (SIGUSR1 is billiard's soft time limit; SIGTERM its cold shutdown's kill).
SHUTDOWN_SIGNAL = signal.SIGUSR2


def pool_child_pids(controller: Any) -> list[int]:
    """The process ids of a prefork pool's children (none for the solo and thread pools)."""
    pool = getattr(getattr(controller, "pool", None), "_pool", None)
    processes = getattr(pool, "_pool", None) or []
    return [pid for pid in (getattr(process, "pid", None) for process in processes)
            if isinstance(pid, int) and pid > 0]


def _parent_pid(pid: int) -> int | None:
    """The parent process id of ``pid`` as Linux's ``/proc`` tells it; None where it cannot
    (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def signal_pool_children(controller: Any, signum: int) -> list[int]:
    """Send ``signum`` to the prefork pool's children that are still this process's children;
    returns the pids signalled. The pool lists a child that exited until it is replaced, and
    once the pool has reaped it its pid may be another process's: SIGUSR2's default action ends
    a process, so a pid whose parent is not this process is skipped (where ``/proc`` is
    missing the pool's word is taken)."""
    signalled: list[int] = []
    have_proc = Path("/proc/self/stat").exists()
    for pid in pool_child_pids(controller):
        if have_proc and _parent_pid(pid) != os.getpid():
            continue
        with contextlib.suppress(OSError):  # exited meanwhile
            os.kill(pid, signum)
            signalled.append(pid)
    return signalled


def _queue_size(app: RiftCelery, queue: str) -> int:
    """Messages waiting in ``queue``. kombu's virtual transports (Redis, SQLAlchemy) count a
    queue's messages directly, an empty Redis queue being no key at all (a passive declare would
    call it missing); other brokers answer a passive declare (the queue is not created)."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        size = getattr(channel, "_size", None)
        if callable(size):
            return int(size(queue))
        return int(channel.queue_declare(queue, passive=True).message_count)


def _request_id_of(task: Task) -> str | None:
    """The request id the sender put in the message header, if any."""
    value = getattr(task.request, REQUEST_ID_HEADER, None)
    if value is None:
        value = (getattr(task.request, "headers", None) or {}).get(REQUEST_ID_HEADER)
    return str(value) if value else None


def _register_stage_task(app: RiftCelery, resources: WorkerResources, stage: str) -> None:
    def run(task: Task, job_id: str) -> str:
        return execute_stage(app, resources, job_id, stage, _request_id_of(task))

    run.__name__ = f"run_{stage}_stage"
    run.__doc__ = f"Run the '{stage}' stage of the job ``job_id``; returns the outcome."
    app.task(name=STAGE_TASK_NAMES[stage], base=ArgumentsCheckedTask, ignore_result=True, bind=True)(run)


@dataclass
class _Step:
    """What one stage of a task came to; ``chained``: the job's next stage, claimed by this
    worker when it finished this one, for the same task to run next."""

    stage: str
    outcome: str
    device: str | None = None
    chained: _Claimed | None = None


@dataclass
class _Claimed:
    """A stage this worker holds the lease of, with what running it needs."""

    job_id: str
    stage: str
    claim: stages.StageClaim
    checkpoint: Checkpoint
    dataset: Dataset | None
    attempts: dict[str, int] = field(default_factory=dict)  # stage -> its latest claim
    request_id: str | None = None


def execute_stage(app: RiftCelery, resources: WorkerResources, job_id: str, stage: str,
                  request_id: str | None = None) -> str:
    """Claim and run one stage of a job, its logs tagged with the job and request ids, then the
    following stages this worker claimed as it finished each (``WORKER_CHAIN_STAGES``); returns
    what happened to the last one run (for logs and tests)."""
    with log_context(job_id=job_id, request_id=request_id):
        started = time.monotonic()
        step = _execute_stage(app, resources, job_id, stage, request_id)
        while True:
            # "sharded": the attempt ended by sending its parts (their own run times are
            # rift_part_duration_seconds); it was left out, so attempts outnumbered durations.
            # "job_ended": another ended the job first (the recovery loop, past its time
            # limit); counted as that, not as this attempt's failure or cancellation.
            if step.outcome in ("done", "failed", "retry", "cancelled", "lease_lost",
                                "handed_back", "sharded", "job_ended"):
                resources.metrics.observe_stage(step.stage, step.outcome,
                                                time.monotonic() - started, step.device)
            if step.outcome == "done" and stages.next_stage(step.stage) is None:
                export_if_configured(resources, job_id)
            if step.stage == StageName.FINETUNE and step.outcome in _ENDS_A_FINETUNE:
                # Recorded, or the job ended: no attempt continues from the epoch state.
                discard_epoch_states(resources.store, job_id)
            if step.chained is None:
                return step.outcome
            started = time.monotonic()
            with log_context(request_id=step.chained.request_id):
                step = _run_claimed(app, resources, step.chained)


def _execute_stage(app: RiftCelery, resources: WorkerResources, job_id: str, stage: str,
                   request_id: str | None) -> _Step:
    settings = resources.settings
    owner = resources.worker_id
    if resources.stopping.is_set():
        # Taken as this worker began to stop: unclaimed, it goes straight back to the queue.
        enqueue_stage(app, job_id, stage, request_id=request_id)
        return _Step(stage, "resent")
    try:
        with resources.session() as session:
            claim, checkpoint, dataset = stages.claim_stage_with_inputs(
                session, job_id, stage, owner=owner, lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.max_stage_attempts)
        # Each stage's latest claim: this attempt, and the recorded one of stages done.
        attempts = dict(claim.attempts)
    except JobNotFound:
        logger.warning("stage %s of unknown job %s: message dropped", stage, job_id)
        resources.prepared_runs.discard_job(job_id)  # deleted
        return _Step(stage, "missing")
    except DATABASE_DOWN as exc:
        return _Step(stage, resend_later(
            f"job {job_id} stage {stage}",
            lambda delay: enqueue_stage(app, job_id, stage, countdown=delay,
                                        request_id=request_id),
            settings.stage_retry_delay_seconds, exc))

    if claim.outcome == ClaimOutcome.DONE:
        # A duplicate message, or the worker died between recording the stage and sending the
        # next message: send it (again); the next claim sorts out duplicates.
        following = stages.next_stage(stage)
        if following is not None and claim.job.status == JobStatus.RUNNING:
            enqueue_stage(app, job_id, following, request_id=request_id or claim.job.request_id)
        return _Step(stage, "already_done")
    if claim.outcome != ClaimOutcome.CLAIMED:
        logger.info("job %s stage %s: %s", job_id, stage, claim.outcome)
        if claim.outcome in (ClaimOutcome.INACTIVE, ClaimOutcome.EXHAUSTED):
            resources.prepared_runs.discard_job(job_id)  # the job has ended
        return _Step(stage, str(claim.outcome))
    if checkpoint is None:
        with resources.session() as session:
            stages.fail_job(session, job_id, "checkpoint_missing",
                            f"the job's checkpoint {claim.job.checkpoint_id} no longer exists")
        return _Step(stage, "failed")
    # A message sent without the header (recovery, an older sender): the job row has the id.
    request_id = request_id or claim.job.request_id
    with log_context(request_id=request_id):
        return _run_claimed(app, resources, _Claimed(job_id, stage, claim, checkpoint, dataset,
                                                     attempts, request_id))


def _run_claimed(app: RiftCelery, resources: WorkerResources, held: _Claimed) -> _Step:
    job_id, stage, claim, checkpoint, dataset, attempts, request_id = (
        held.job_id, held.stage, held.claim, held.checkpoint, held.dataset, held.attempts,
        held.request_id)
    settings = resources.settings
    owner = resources.worker_id
    resources.metrics.attempts.labels(stage).inc()
    device: str | None = None

    logger.info("job %s stage %s: attempt %d on %s", job_id, stage, claim.attempt, owner)
    reporter = StageReporter(
        resources, job_id, stage, started_at=claim.job.started_at,
        time_limit=job_time_limit(claim.job, settings.job_time_limit_seconds),
        write_behind=True)
    callbacks = PipelineCallbacks(
        on_progress=reporter.on_progress, on_event=reporter.on_event,
        should_cancel=reporter.should_cancel, stored_events=stored_events_of(resources, job_id),
        # A hand-back or a takeover continues fine-tuning from the last epoch stored here.
        epoch_state=(ObjectEpochStateStore(resources.store, job_id)
                     if stage == StageName.FINETUNE else None))
    reporter.start()
    try:
        preparing = time.perf_counter()
        # The job's run as the previous stage on this process left it, else built from the store.
        taken = resources.prepared_runs.take(
            RunKey.of(claim.job, checkpoint, dataset),
            lambda: prepare(claim.job, checkpoint, dataset, resources.store, settings.work_dir,
                            settings.worker_device, settings.data_root))
        run = taken.run
        prepare_seconds = time.perf_counter() - preparing
        device = describe_device(run.device)
        if claim.job.device != device:  # a chained stage, or another stage here: unchanged
            # With the stage's first report (else with its outputs): no transaction of its own.
            reporter.set_device(device)
        if not taken.cached:  # building may take intervals: a write and check if one passed
            callbacks.check_cancel()
        manifest = (job_manifest(claim.job, checkpoint, dataset, run, settings.build_commit)
                    if stage == StageName.MRC else None)
        if stage == StageName.MRC and run.config.mrc.shards > 1:
            # A checkpoint near chance on the job's data fails here, before any shard is sent.
            preflight = run_preflight_stage(run, callbacks)
            reporter.flush()
            # The shards hold the work from here; the last one finishes the stage.
            start_mrc_shards(app, resources, claim.job, run, callbacks, claim.attempt,
                             manifest, preflight.as_dict() if preflight is not None else None)
            return _Step(stage, "sharded", device)
        if stage == StageName.FINETUNE and is_sweep(run.config):
            reporter.flush()
            # One task per candidate from here; the last one finishes the stage.
            start_sweep(app, resources, claim.job, run, attempts, callbacks)
            return _Step(stage, "sharded", device)
        if stage == StageName.INTERPOLATE and is_sweep(run.config):
            outputs = record_sweep_interpolation(resources, claim.job, run, attempts,
                                                 callbacks)
        else:
            outputs = run_stage(stage, claim.job, run, resources.store, settings.work_dir,
                                callbacks, attempts, manifest, resources.store_writer)
        # In the stage_finished event: where a stage's time went besides the library's own,
        # and the device and CPU thread count it ran with (the job's device is the last
        # stage's, manifest.json's the MRC stage's: a stage taken over elsewhere was recorded
        # nowhere, and another thread count changes θ_FT in its last bits).
        outputs.summary = {**outputs.summary, "prepare_seconds": round(prepare_seconds, 4),
                           "prepared_run": "cached" if taken.cached else "built",
                           "device": device, "torch_threads": torch.get_num_threads()}
        if reporter.lease_lost:
            raise LeaseLost(f"lost the lease on stage '{stage}' of job {job_id}")
        following = stages.next_stage(stage)
        # This worker holds the run: it takes the next stage in the same transaction.
        terms = (ClaimTerms(owner, settings.worker_lease_seconds, settings.max_stage_attempts)
                 if following is not None and resources.chains_stages else None)
        pending = reporter.take_pending()
        # The stage's last events come before its stage_finished, in the same commit; tried
        # again through a database outage while the lease holds (worker.finishing).
        _, next_claim = record_finish(
            reporter,
            lambda session: stages.finish_stage_and_claim_next(
                session, job_id, stage, owner=owner, outputs=outputs, next_terms=terms,
                events=pending.events, device=pending.device),
            lambda session: stages.recorded_finish(session, job_id, stage, owner=owner,
                                                   attempt=claim.attempt))
    except JobCancelled:
        reporter.close()  # no report of the stage follows its end (each branch below)
        return _Step(stage, _cancel(resources, job_id, stage), device)
    except LeaseLost as exc:
        # Another worker took the stage over (this one stalled past its lease): it owns it now.
        reporter.close()
        logger.warning("job %s stage %s: %s", job_id, stage, exc)
        return _Step(stage, "lease_lost", device)
    except ShuttingDown:
        # The reports not yet written go with the hand-back: the MRC rows among them are what
        # the next attempt does not compute again.
        return _Step(stage, _hand_back(app, reporter, claim.attempt, request_id,
                                       _pending_events(reporter)), device)
    except DatasetNotInDataRoot as exc:
        # Before the check of RiftError, which it is: another worker may hold the dataset.
        return _Step(stage, _dataset_elsewhere(app, reporter, claim.attempt, exc, request_id),
                     device)
    except RiftError as exc:
        reporter.close()
        return _Step(stage, _fail(reporter, claim.attempt, exc.code, exc.message, exc.field),
                     device)
    except ObjectNotFound as exc:
        reporter.close()
        return _Step(stage, _fail(
            reporter, claim.attempt, "missing_object",
            f"an input of the job is missing from the object store: {exc.message}"), device)
    except Exception as exc:
        reporter.close()
        try:
            return _Step(stage, _retry_or_fail(app, reporter, claim.attempt, exc, request_id),
                         device)
        except LeaseLost as lost:
            logger.warning("job %s stage %s: %s", job_id, stage, lost)
            return _Step(stage, "lease_lost", device)
        except (JobEnded, JobNotFound) as ended:
            return _Step(stage, _ended_before(job_id, stage, ended), device)
    finally:
        reporter.stop()

    logger.info("job %s stage %s done", job_id, stage)
    if following is None:
        return _Step(stage, "done", device)
    # Kept before the next message goes out, so that a task taking it at once finds the run;
    # a chained stage takes it back from the cache the same way.
    resources.prepared_runs.keep(taken)
    if next_claim is None:
        enqueue_stage(app, job_id, following, request_id=request_id)
        return _Step(stage, "done", device)
    if next_claim.outcome != ClaimOutcome.CLAIMED:
        # The job was cancelled meanwhile (or its next stage is out of attempts): it has ended.
        logger.info("job %s stage %s: %s", job_id, following, next_claim.outcome)
        resources.prepared_runs.discard_job(job_id)
        return _Step(stage, "done", device)
    chained = _Claimed(job_id, following, next_claim, checkpoint, dataset,
                       {**attempts, str(following): next_claim.attempt}, request_id)
    return _Step(stage, "done", device, chained)


def _pending_events(reporter: StageReporter) -> list[tuple[str, dict[str, Any], datetime]]:
    """The reporter's events not yet written (its writing ended), or none if it cannot say."""
    try:
        return list(reporter.take_pending().events)
    except Exception:  # a failed write: the stage is handed back all the same
        logger.warning("job %s: the stopped attempt's last reports are lost", reporter.job_id,
                       exc_info=True)
        reporter.close()
        return []


def _hand_back(app: RiftCelery, reporter: StageReporter, attempt: int, request_id: str | None,
               events: Sequence[tuple[str, dict[str, Any], datetime]] = (),
               reason: HandBackReason = HandBackReason.WORKER_SHUTDOWN,
               countdown: float | None = None) -> str:
    """Give the stage back, its claim not counted, with the attempt's unwritten ``events``, and
    send its message at once (or after ``countdown`` seconds), for another worker to run it
    (from its start, but for the MRC rows and α points those events and earlier ones stored:
    ``stages.stored_events``): this one is in a warm shutdown, or lacks the job's dataset
    (``reason``). Returns the outcome
    ("handed_back"; "lease_lost" when the stage was no longer this worker's). Tried again
    through a database outage while the lease holds (worker.finishing, for claim ``attempt``);
    past that the stage stays leased, and is taken over once its lease expires, as after a
    crash."""
    resources, job_id, stage, owner = (reporter.resources, reporter.job_id, reporter.stage,
                                       reporter.owner)
    try:
        cancelled = record_finish(
            reporter,
            lambda session: stages.hand_back_stage(session, job_id, stage, owner=owner,
                                                   events=events, reason=reason),
            lambda session: stages.recorded_hand_back(session, job_id, stage, owner=owner,
                                                      attempt=attempt))
    except LeaseLost as exc:
        logger.warning("job %s stage %s: %s", job_id, stage, exc)
        return "lease_lost"
    resources.prepared_runs.discard_job(job_id)
    if cancelled:  # asked for while the stage ran: ended now, nothing to send
        logger.info("job %s stage %s: cancelled as it was handed back", job_id, stage)
        return "cancelled"
    enqueue_stage(app, job_id, stage, countdown=countdown, request_id=request_id)
    logger.info("job %s stage %s handed back: %s", job_id, stage, reason)
    return "handed_back"


def _dataset_elsewhere(app: RiftCelery, reporter: StageReporter, attempt: int,
                       exc: DatasetNotInDataRoot, request_id: str | None) -> str:
    """The job's built-in dataset is not in this worker's ``DATA_ROOT`` (found before anything
    was fetched or run). When another live worker of the queue holds it (or does not say), hand
    the stage back uncounted for one of them after ``STAGE_RETRY_DELAY_SECONDS`` (waited out
    while this worker still holds the stage and its task slot); the message goes to whichever
    free worker takes it (Celery cannot address one), so this is bounded: at most
    ``MAX_STAGE_ATTEMPTS`` hand-backs per live worker of the queue. Otherwise, or past that
    bound, fail the job with the error's message (``dataset_unavailable``), which names the
    dataset, this worker's ``DATA_ROOT`` and the files expected there. Returns the outcome."""
    resources, job_id, stage = reporter.resources, reporter.job_id, reporter.stage
    settings = resources.settings
    try:
        with resources.session() as session:
            live = workers.live_workers(session, queue=settings.celery_queue,
                                        heartbeat_seconds=settings.worker_heartbeat_seconds)
            handed = stages.count_hand_backs(session, job_id, stage,
                                             HandBackReason.DATASET_MISSING)
    except DATABASE_DOWN:
        # Failing is written through the outage (worker.finishing); handing back would send the
        # message round again with nothing known.
        logger.warning("job %s stage %s: could not read the worker registry", job_id, stage,
                       exc_info=True)
        reporter.close()
        return _fail(reporter, attempt, exc.code,
                     exc.message + "; the worker registry could not be read to find another",
                     exc.field)
    holders = [w for w in live if w.id != reporter.owner
               and (w.datasets is None or exc.name in w.datasets)]
    if holders and handed < settings.max_stage_attempts * len(live):
        logger.info("job %s stage %s: dataset %s is not in DATA_ROOT here; %d other live "
                    "worker(s) hold it", job_id, stage, exc.name, len(holders))
        # The pause is taken here, holding the lease and this worker's task slot, and the
        # message then sent at once: a message sent with a countdown is fetched at once and
        # held until due by whichever consumer has waited longest, which was this worker, so
        # every hand-back came back to it while an idle holder waited and the job failed after
        # MAX_STAGE_ATTEMPTS × workers rounds. Busy here (acks_late, one message prefetched),
        # this worker fetches nothing more, so a free worker takes the message.
        resources.stopping.wait(settings.stage_retry_delay_seconds)
        return _hand_back(app, reporter, attempt, request_id, _pending_events(reporter),
                          HandBackReason.DATASET_MISSING)
    reporter.close()
    if holders:
        why = f"; handed back {handed} times for it, and no worker holding it took the stage"
    else:
        why = "; no other live worker holds it"
    return _fail(reporter, attempt, exc.code, exc.message + why, exc.field)


def _ended_before(job_id: str, stage: str, exc: JobEnded | JobNotFound) -> str:
    """The outcome of a stage whose job ended (or was deleted) before its worker could end it:
    the recovery loop fails a job past its time limit a lease after it, and a worker late to
    its own check then meets the job's end in its reports (read as a cancellation) or at its
    own ``fail_job``. Before, it logged and counted that end as its own ("cancelled during
    stage", "failed in stage ...: timeout")."""
    logger.info("job %s stage %s: the job had already ended; nothing recorded (%s)", job_id,
                stage, exc)
    return "job_ended"


def _cancel(resources: WorkerResources, job_id: str, stage: str) -> str:
    """End the job as cancelled after its stage stopped for it (``JobCancelled``); returns the
    outcome: "cancelled", or "job_ended" when that stop was the job's end by another."""
    try:
        with resources.session() as session:
            stages.mark_cancelled(session, job_id)
    except (JobEnded, JobNotFound) as exc:
        return _ended_before(job_id, stage, exc)
    logger.info("job %s cancelled during stage %s", job_id, stage)
    return "cancelled"


def _fail(reporter: StageReporter, attempt: int, code: str, message: str,
          field: str | None = None) -> str:
    """Fail the job in the reporter's stage (claim ``attempt``), tried again through a database
    outage while the lease holds (worker.finishing); returns the outcome. ``field``: the
    setting a library error blames (its ``RiftError.field``), kept in the failure's event."""
    job_id, stage = reporter.job_id, reporter.stage
    try:
        _fail_recorded(reporter, attempt, code, message, field)
    except LeaseLost as exc:
        logger.warning("job %s stage %s: %s", job_id, stage, exc)
        return "lease_lost"
    except (JobEnded, JobNotFound) as exc:
        return _ended_before(job_id, stage, exc)
    logger.info("job %s failed in stage %s: %s", job_id, stage, code)
    return "failed"


def _fail_recorded(reporter: StageReporter, attempt: int, code: str, message: str,
                   field: str | None = None) -> None:
    """:func:`persistence.stages.fail_job` of the reporter's stage by its worker, tried again
    through a database outage while the lease holds (worker.finishing)."""
    job_id, stage, owner = reporter.job_id, reporter.stage, reporter.owner
    record_finish(
        reporter,
        lambda session: stages.fail_job(session, job_id, code, message, stage=stage,
                                        owner=owner, field=field),
        lambda session: stages.recorded_failure(session, job_id, stage, code, message,
                                                attempt=attempt))


def _retry_or_fail(app: RiftCelery, reporter: StageReporter, attempt: int, exc: Exception,
                   request_id: str | None = None) -> str:
    """After an unexpected error: give the stage back for another attempt, or, on the last
    allowed attempt, fail the job (while still holding the lease, so no other worker is racing).
    Either is tried again through a database outage while the lease holds (worker.finishing)."""
    resources, job_id, stage, owner = (reporter.resources, reporter.job_id, reporter.stage,
                                       reporter.owner)
    settings = resources.settings
    logger.exception("job %s stage %s: unexpected error on attempt %d", job_id, stage, attempt)
    if attempt >= settings.max_stage_attempts:
        _fail_recorded(reporter, attempt, "stage_failed_repeatedly",
                       f"stage '{stage}' failed {attempt} times (MAX_STAGE_ATTEMPTS="
                       f"{settings.max_stage_attempts}); last error: {error_summary(exc)}")
        return "failed"
    # Read here, in the caller's except block: a try again runs in record_finish's own.
    error = traceback.format_exc(limit=5)
    record_finish(
        reporter,
        lambda session: stages.release_stage(session, job_id, stage, owner=owner, error=error),
        lambda session: stages.recorded_release(session, job_id, stage, attempt=attempt,
                                                error=error))
    enqueue_stage(app, job_id, stage, countdown=settings.stage_retry_delay_seconds,
                  request_id=request_id)
    return "retry"


#: How long an export waits for another export of the same job to end, in MLflow requests'
#: time (MLFLOW_HTTP_TIMEOUT_SECONDS each): past it, a warning asks the user to try again.
EXPORT_LOCK_WAIT_REQUESTS = 10


def export_again(resources: WorkerResources, job_id: str,
                 request_event_id: int | None = None) -> None:
    """A succeeded job's export asked for again (``POST /v1/jobs/{id}/mlflow-export``): as after
    its success, the outcome an event, carrying ``request_event_id`` (the request's
    ``mlflow_export_requested`` event) so that a client waiting for its request's outcome is not
    answered by another request's. A worker without ``MLFLOW_TRACKING_URI`` (the API's is set)
    says so in a ``warning`` rather than leaving the request unanswered."""
    if resources.settings.mlflow_tracking_uri:
        export_if_configured(resources, job_id, request_event_id)
        return
    _record_export_event(resources, job_id, "warning", {
        "stage": "export", "message": "the export to MLflow was asked for, but the worker that "
        "took it has no MLFLOW_TRACKING_URI set"}, request_event_id)


def export_if_configured(resources: WorkerResources, job_id: str,
                         request_event_id: int | None = None) -> None:
    """Export the succeeded job to MLflow when ``MLFLOW_TRACKING_URI`` is set. Never raises: the
    job has succeeded whatever happens here; a failure is logged and becomes a warning event
    (both outcomes name ``request_event_id`` when a request asked for the export)."""
    settings = resources.settings
    if not settings.mlflow_tracking_uri:
        return
    target = MlflowTarget(settings.mlflow_tracking_uri, settings.mlflow_experiment,
                          settings.mlflow_model_name, settings.mlflow_artifact_location,
                          http_max_retries=settings.mlflow_http_max_retries,
                          http_timeout_seconds=settings.mlflow_http_timeout_seconds)
    try:
        # One export of a job at a time, whichever workers run them: two at once (the export
        # after success and a re-export, or two re-exports) each found no run of the job and
        # logged one. The second now waits, then finds the first's run by its tag.
        with named_locks.held(resources.session, settings.work_dir / "locks",
                              f"mlflow-export:{job_id}",
                              timeout=EXPORT_LOCK_WAIT_REQUESTS * target.http_timeout_seconds):
            result = export_job(target, resources.session, resources.store, job_id,
                                settings.work_dir)
        kind, payload = "mlflow_exported", {"run_id": result.run_id, "model": result.model_name,
                                            "version": result.model_version}
        logger.info("job %s exported to MLflow: model %s version %s", job_id, result.model_name,
                    result.model_version)
    except named_locks.LockTimeout as exc:
        logger.warning("job %s: MLflow export not run: %s", job_id, exc)
        kind, payload = "warning", {"stage": "export", "message": (
            "the export to MLflow was not run: another export of this job was still running "
            f"after {exc.waited:g} s; ask again (POST /v1/jobs/{job_id}/mlflow-export) once it "
            "has ended")}
    except Exception as exc:
        logger.warning("job %s: MLflow export failed", job_id, exc_info=True)
        kind, payload = "warning", {"stage": "export",
                                    "message": export_failure_message(exc, target.tracking_uri)}
    _record_export_event(resources, job_id, kind, payload, request_event_id)


def _record_export_event(resources: WorkerResources, job_id: str, kind: str,
                         payload: dict[str, Any], request_event_id: int | None = None) -> None:
    if request_event_id is not None:
        payload = {**payload, "request_event_id": request_event_id}
    try:
        with resources.session() as session:
            jobs.append_event(session, job_id, kind, payload)
    except Exception:
        logger.warning("job %s: could not record the export event", job_id, exc_info=True)


def execute_materialization(resources: WorkerResources, materialization_id: str,
                            request_id: str | None = None, *,
                            app: RiftCelery | None = None) -> str:
    """Claim, make, store and record the weights of one materialization request under a lease
    renewed by a heartbeat; returns the outcome ("skipped": not claimable now). In a warm
    shutdown the request is queued again, its claim not counted, and its message sent with
    ``app`` ("handed_back"; without ``app`` the recovery loop sends it later)."""
    from worker.materialize import materialization_key, materialize_weights  # torch: here only

    settings = resources.settings
    owner = resources.worker_id
    if resources.stopping.is_set() and app is not None:
        # Taken as this worker began to stop: unclaimed, it goes straight back to the queue.
        enqueue_materialization(app, materialization_id, request_id)
        return "resent"
    try:
        with resources.session() as session:
            row = start_materialization(session, materialization_id, owner=owner,
                                        lease_seconds=settings.worker_lease_seconds,
                                        max_attempts=settings.max_stage_attempts)
            if row is None:
                return "skipped"
            attempt = row.attempts
            job = session.get(Job, row.job_id)
            if job is None:
                # Deleted (with its project) between the claim and this read: nothing to make.
                logger.info("materialization %s: its job was deleted", materialization_id)
                return "deleted"
            checkpoint = session.get(Checkpoint, job.checkpoint_id)
            dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
            finetuned = session.get(Artifact, (job.id, FINETUNED))
    except DATABASE_DOWN as exc:
        if app is None:
            raise
        return resend_later(
            f"materialization {materialization_id}",
            lambda delay: enqueue_materialization(app, materialization_id, request_id,
                                                  countdown=delay),
            settings.stage_retry_delay_seconds, exc)
    key = materialization_key(job.id, row.artifact_name)
    lease = MaterializationLease(resources, materialization_id)
    lease.start()
    with log_context(job_id=job.id, request_id=request_id or row.request_id):
        try:
            try:
                if checkpoint is None or finetuned is None:
                    raise ObjectNotFound("the job's checkpoint or fine-tuned weights are gone")
                made = materialize_weights(row, job, checkpoint, dataset, finetuned,
                                           resources.store, settings.work_dir,
                                           settings.worker_device, settings.data_root,
                                           should_cancel=lease.should_cancel)
            finally:
                # Before the last write: a beat after it would find the lease ended and log it
                # as lost. The lease has two thirds of its length left at least.
                lease.stop()
        except LeaseLost as exc:
            return _materialization_lost(resources, materialization_id, key, exc)
        except ShuttingDown:
            try:
                # Tried again through a database outage, as the finish below.
                record_finish(
                    lease,
                    lambda session: _handed_back_materialization(session, materialization_id,
                                                                 owner=owner),
                    lambda session: recorded_materialization_hand_back(
                        session, materialization_id, attempt=attempt))
            except (LeaseLost, MaterializationNotFound) as exc:
                return _materialization_lost(resources, materialization_id, key, exc)
            if app is not None:
                enqueue_materialization(app, materialization_id, request_id or row.request_id)
            logger.info("materialization %s handed back: the worker is shutting down",
                        materialization_id)
            return "handed_back"
        except Exception as exc:
            logger.warning("materialization %s failed", materialization_id, exc_info=True)
            message = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            try:
                # Tried again through a database outage, as the finish below.
                record_finish(
                    lease,
                    lambda session: _failed_materialization(session, materialization_id,
                                                            message, owner=owner),
                    lambda session: recorded_materialization_failure(
                        session, materialization_id, message, attempt=attempt))
            except LeaseLost as lost:
                return _materialization_lost(resources, materialization_id, key, lost)
            resources.metrics.materializations.labels("failed").inc()
            return "failed"
        try:
            # Tried again through a database outage (worker.finishing). The lease is no longer
            # renewed: a worker taking the request over once it expires makes the finish
            # refused (LeaseLost), and its own claim a later attempt, which `landed` tells.
            record_finish(
                lease,
                lambda session: finish_materialization(
                    session, materialization_id, made.artifact, owner=owner,
                    clean_accuracy=made.clean_accuracy, robust_accuracy=made.robust_accuracy),
                lambda session: recorded_materialization(session, materialization_id,
                                                         attempt=attempt))
        except (LeaseLost, MaterializationNotFound) as exc:
            return _materialization_lost(resources, materialization_id, key, exc)
        resources.metrics.materializations.labels("succeeded").inc()
        logger.info("materialized %s (alpha %s)", row.artifact_name, row.alpha)
        return "succeeded"


def _handed_back_materialization(session: Session, materialization_id: str, *,
                                 owner: str) -> bool:
    """:func:`persistence.materializations.hand_back_materialization`, True once it committed
    (for :func:`worker.finishing.record_finish`, whose read-back answers True too)."""
    hand_back_materialization(session, materialization_id, owner=owner)
    return True


def _failed_materialization(session: Session, materialization_id: str, message: str, *,
                            owner: str) -> bool:
    """:func:`persistence.materializations.fail_materialization`, True once it committed (as
    :func:`_handed_back_materialization`)."""
    fail_materialization(session, materialization_id, message, owner=owner)
    return True


def _materialization_lost(resources: WorkerResources, materialization_id: str, key: str,
                          exc: Exception) -> str:
    """End a materialization whose worker no longer holds it: "deleted" if its row is gone (its
    job or project was deleted meanwhile: nothing records the weights, so they go now rather
    than wait for the janitor), else "lease_lost" (another worker took it over: the weights
    under ``key`` are that worker's too, the same bytes, and are left to it)."""
    with resources.session() as session:
        gone = session.get(Materialization, materialization_id) is None
    if gone:
        logger.info("materialization %s: its job was deleted meanwhile", materialization_id)
        delete_objects(resources.store, [key])
        return "deleted"
    logger.warning("materialization %s: %s", materialization_id, exc)
    return "lease_lost"


def redispatch_stale_materializations(app: RiftCelery, resources: WorkerResources, *,
                                      resend_after: float | None = None) -> int:
    """Queue and send again the materializations whose worker died (lease expired), and send
    again those queued ``resend_after`` seconds (default ``QUEUED_RESEND_AFTER_SECONDS``)
    without a worker (message lost); those claimed ``MAX_STAGE_ATTEMPTS`` times are failed
    instead."""
    settings = resources.settings
    with resources.session() as session:
        stale = materializations_to_redispatch(
            session, max_attempts=settings.max_stage_attempts,
            resend_after=_or_setting(resend_after, settings))
    for materialization_id in stale:
        logger.warning("materialization %s: re-sending it (its lease expired or its message "
                       "is late)", materialization_id)
        enqueue_materialization(app, materialization_id)
    return len(stale)


def _or_setting(resend_after: float | None, settings: Settings) -> float:
    return settings.queued_resend_after_seconds if resend_after is None else resend_after


def redispatch_stale_stages(app: RiftCelery, resources: WorkerResources, *,
                            resend_after: float | None = None) -> int:
    """Send again the stages (MRC shards, sweep candidates) whose worker died or whose message
    was sent ``resend_after`` seconds ago (default ``QUEUED_RESEND_AFTER_SECONDS``) and is
    not taken yet (lost)."""
    pending_after = _or_setting(resend_after, resources.settings)
    with resources.session() as session:
        stale = stages.stages_to_redispatch(
            session, stale_after=resources.settings.worker_lease_seconds,
            pending_after=pending_after)
    for job_id, stage in stale:
        logger.warning("job %s: re-sending stage %s (its lease expired or its message is late)",
                       job_id, stage)
        enqueue_stage(app, job_id, stage)
    return (len(stale) + redispatch_stale_shards(app, resources, resend_after=pending_after)
            + redispatch_stale_candidates(app, resources, resend_after=pending_after))


def redispatch_after_broker_loss(app: RiftCelery, resources: WorkerResources,
                                 watch: BrokerLossWatch) -> int:
    """When the broker lost its messages (:mod:`persistence.broker_loss`), send every waiting
    stage, part and materialization again now; returns how many were sent."""
    if not watch.lost_messages():
        return 0
    try:
        sent = (redispatch_stale_stages(app, resources, resend_after=0)
                + redispatch_stale_materializations(app, resources, resend_after=0))
    except Exception:
        watch.resend_failed()  # the next pass tries again
        raise
    logger.warning("the broker (BROKER_URL) lost its messages (its marker %s was replaced: "
                   "Redis restarted without persistence, or flushed): sent %d waiting stages, "
                   "parts and materializations again", marker_key(resources.settings), sent)
    return sent


def fail_overdue(resources: WorkerResources) -> list[str]:
    """Fail with code ``timeout`` the jobs a lease length past their time limit (their own, else
    ``JOB_TIME_LIMIT_SECONDS``: those whose worker died or hung; a live worker fails its own job
    at the deadline)."""
    settings = resources.settings
    with resources.session() as session:
        overdue = fail_overdue_jobs(session, limit_seconds=settings.job_time_limit_seconds,
                                    grace_seconds=settings.worker_lease_seconds)
    for job_id in overdue:
        # Its shards or candidates still running: failed once they stopped (fail_job).
        logger.warning("job %s failed (or failing, its running parts asked to stop): past its "
                       "time limit", job_id)
    return overdue
def redispatch_late_webhooks(app: RiftCelery, resources: WorkerResources) -> int:
    """Send again the webhook messages whose task is a lease length (WORKER_LEASE_SECONDS)
    overdue: the broker was down when they were written, or a worker died holding them."""
    with resources.session() as session:
        late = deliveries_to_redispatch(session, late_after=resources.settings.worker_lease_seconds)
    for delivery_id in late:
        enqueue_webhook(app, delivery_id)
    return len(late)


class RecoveryLoop:
    """A daemon thread of the worker process that, at start and then every
    ``WORKER_RECOVERY_INTERVAL_SECONDS`` (no beat process needed), fails the jobs past their time
    limit (:func:`fail_overdue`), re-sends stale stages and parts
    (:func:`redispatch_stale_stages`), materializations (:func:`redispatch_stale_materializations`)
    and webhook messages (:func:`redispatch_late_webhooks`), all waiting work at once when the
    broker lost its messages (:func:`redispatch_after_broker_loss`) and,
    every ``JANITOR_INTERVAL_SECONDS``, runs the janitor (:mod:`persistence.janitor`)."""

    def __init__(self, app: RiftCelery, resources: WorkerResources,
                 children: Callable[[], list[int]] = list) -> None:
        self.app = app
        self.resources = resources
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The prefork pool's children (none for the other pools), and those seen last pass.
        self._children = children
        self._seen: set[int] = set()
        self._broker_watch = BrokerLossWatch(resources.settings)
        self._gone: set[int] = set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rift-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def release_lost_children(self) -> int:
        """Hand over at once the work of this process's pool children that exited since the
        last pass (:func:`persistence.lost_processes.release_dead_process`: a child killed
        mid-task, by the OOM-killer say, left its leases live and its registry row); returns
        how many messages were sent. A pid back in the pool meanwhile is left to its lease."""
        current = set(self._children())
        # Kept until released (a pass that fails, the database down, tries them again next).
        self._gone = (self._gone | (self._seen - current)) - current
        self._seen = current
        sent = 0
        for pid in sorted(self._gone):
            with self.resources.session() as session:
                released = release_dead_process(session, self.resources.owner_prefix(pid))
            self._gone.discard(pid)
            for job_id, stage in released.stages:
                enqueue_stage(self.app, job_id, stage)
            for job_id, shard in released.shards:
                enqueue_shard(self.app, job_id, shard)
            for job_id, index in released.candidates:
                enqueue_candidate(self.app, job_id, index)
            for materialization_id in released.materializations:
                enqueue_materialization(self.app, materialization_id)
            count = (len(released.stages) + len(released.shards) + len(released.candidates)
                     + len(released.materializations))
            if count or released.workers:
                logger.warning("pool process %d exited holding %d leases: sent again now",
                               pid, count)
            sent += count
        return sent

    def _run(self) -> None:
        settings = self.resources.settings
        interval = settings.worker_recovery_interval_seconds
        next_janitor = time.monotonic()
        while True:
            try:
                self.release_lost_children()
                fail_overdue(self.resources)
                redispatch_stale_stages(self.app, self.resources)
                redispatch_stale_materializations(self.app, self.resources)
                redispatch_late_webhooks(self.app, self.resources)
            except DATABASE_DOWN as exc:
                # Expected in an outage, every interval: one line naming the setting, no trace.
                logger.warning("recovery pass: the database (DATABASE_URL) cannot be reached "
                               "(%s); will retry in %g s", error_summary(exc), interval)
            except Exception:
                logger.warning("recovery pass failed; will retry", exc_info=True)
            try:
                redispatch_after_broker_loss(self.app, self.resources, self._broker_watch)
            except Exception as exc:  # Redis down: the pass above did the database's part
                logger.warning("recovery pass: cannot check whether the broker (BROKER_URL) "
                               "lost its messages: %s; will retry", error_summary(exc))
            if time.monotonic() >= next_janitor:
                next_janitor = time.monotonic() + settings.janitor_interval_seconds
                try:
                    with self.resources.session() as session:
                        report = run_janitor(session, self.resources.store, settings)
                    if report.removed:
                        logger.info("janitor: %s", report.summary())
                except DATABASE_DOWN as exc:
                    logger.warning("janitor pass: the database (DATABASE_URL) cannot be reached "
                                   "(%s); will retry", error_summary(exc))
                except Exception:
                    logger.warning("janitor pass failed; will retry", exc_info=True)
            if self._stop.wait(interval):
                return
