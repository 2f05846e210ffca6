"""The Celery tasks: one per stage (``rift.stage.mrc``, ``.finetune``, ``.interpolate``), plus
the recovery of stages whose worker died.

A stage task gets only the job id. It claims the stage's lease in the database (a duplicate
message, or a stage another worker holds, returns at once; a stage already done only sends the
next message), runs the stage with the library, stores its outputs and marks it done in one
transaction, then sends the next stage's message. Outcomes:

- a library error (:class:`rift.errors.RiftError`): the job fails with the error's code and message;
- cancellation (:class:`rift.errors.JobCancelled`): the job ends ``cancelled``;
- any other exception: the stage is given back and retried, at most ``MAX_STAGE_ATTEMPTS`` claims
  (counted in the database, so crashes count too), then the job fails with
  ``stage_failed_repeatedly``.

Recovery: a worker re-sends, on start and every ``WORKER_RECOVERY_INTERVAL_SECONDS``, the stages
whose lease expired (the worker running them was killed) and, after
``STAGE_REDISPATCH_SECONDS``, the stages nobody took (a message lost in a crash).
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from persistence import stages
from persistence.models import STAGE_ORDER, Checkpoint, Dataset, JobStatus, StageName
from persistence.stages import ClaimOutcome, LeaseLost
from persistence.storage import ObjectNotFound
from persistence.transactions import JobNotFound, load_stages
from rift.errors import JobCancelled, RiftError
from rift.pipeline import PipelineCallbacks
from worker.factory import STAGE_TASK_NAMES, RiftCelery, enqueue_stage
from worker.runtime import StageReporter, WorkerResources
from worker.shards import SHARD_TASK_NAME, execute_shard, redispatch_stale_shards, start_mrc_shards
from worker.stages import describe_device, prepare, run_stage

logger = logging.getLogger(__name__)

RECOVER_TASK_NAME = "rift.recover_stale_jobs"


def register_tasks(app: RiftCelery) -> WorkerResources:
    """Register the stage tasks and the recovery loop on ``app``; returns the process handles."""
    resources = WorkerResources(app.settings)

    for stage in STAGE_ORDER:
        _register_stage_task(app, resources, stage.value)

    @app.task(name=SHARD_TASK_NAME, ignore_result=True)
    def run_mrc_shard(job_id: str, shard: int) -> str:
        """Score one shard of the job's MRC modules; returns the outcome."""
        return execute_shard(app, resources, job_id, shard)

    @app.task(name=RECOVER_TASK_NAME, ignore_result=True)
    def recover_stale_jobs() -> int:
        """Re-send the messages of stages whose worker died; returns how many were sent."""
        return redispatch_stale_stages(app, resources)

    loop = RecoveryLoop(app, resources)

    def start_recovery(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            loop.start()

    def stop_recovery(sender: Any = None, **_: Any) -> None:
        loop.stop()

    # weak=False: the handlers are closures that would otherwise be garbage-collected.
    worker_ready.connect(start_recovery, weak=False)
    worker_shutdown.connect(stop_recovery, weak=False)
    return resources


def _register_stage_task(app: RiftCelery, resources: WorkerResources, stage: str) -> None:
    def run(job_id: str) -> str:
        return execute_stage(app, resources, job_id, stage)

    run.__name__ = f"run_{stage}_stage"
    run.__doc__ = f"Run the '{stage}' stage of the job ``job_id``; returns the outcome."
    app.task(name=STAGE_TASK_NAMES[stage], ignore_result=True)(run)


def execute_stage(app: RiftCelery, resources: WorkerResources, job_id: str, stage: str) -> str:
    """Claim and run one stage of a job; returns what happened (for logs and tests)."""
    settings = resources.settings
    owner = resources.worker_id
    try:
        with resources.session() as session:
            claim = stages.claim_stage(
                session, job_id, stage, owner=owner, lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.max_stage_attempts)
            # Each stage's latest claim: this attempt, and the recorded one of stages done.
            attempts = {str(row.stage): row.attempts for row in load_stages(session, job_id)}
            checkpoint = session.get(Checkpoint, claim.job.checkpoint_id)
            dataset = (session.get(Dataset, claim.job.dataset_id)
                       if claim.job.dataset_id else None)
    except JobNotFound:
        logger.warning("stage %s of unknown job %s: message dropped", stage, job_id)
        return "missing"

    if claim.outcome == ClaimOutcome.DONE:
        # A duplicate message, or the worker died between recording the stage and sending the
        # next message: send it (again); the next claim sorts out duplicates.
        following = stages.next_stage(stage)
        if following is not None and claim.job.status == JobStatus.RUNNING:
            enqueue_stage(app, job_id, following)
        return str(claim.outcome)
    if claim.outcome != ClaimOutcome.CLAIMED:
        logger.info("job %s stage %s: %s", job_id, stage, claim.outcome)
        return str(claim.outcome)
    if checkpoint is None:
        with resources.session() as session:
            stages.fail_job(session, job_id, "checkpoint_missing",
                            f"the job's checkpoint {claim.job.checkpoint_id} no longer exists")
        return "failed"

    logger.info("job %s stage %s: attempt %d on %s", job_id, stage, claim.attempt, owner)
    reporter = StageReporter(resources, job_id, stage)
    callbacks = PipelineCallbacks(on_progress=reporter.on_progress, on_event=reporter.on_event,
                                  should_cancel=reporter.should_cancel)
    reporter.start()
    try:
        run = prepare(claim.job, checkpoint, dataset, resources.store, settings.work_dir,
                      settings.worker_device, settings.data_root)
        with resources.session() as session:
            stages.set_job_device(session, job_id, describe_device(run.device))
        callbacks.check_cancel()
        if stage == StageName.MRC and run.config.mrc.shards > 1:
            # The shards hold the work from here; the last one finishes the stage.
            start_mrc_shards(app, resources, claim.job, run, callbacks, claim.attempt)
            return "sharded"
        outputs = run_stage(stage, claim.job, run, resources.store, settings.work_dir, callbacks,
                            attempts)
        if reporter.lease_lost:
            raise LeaseLost(f"lost the lease on stage '{stage}' of job {job_id}")
        with resources.session() as session:
            stages.finish_stage(session, job_id, stage, owner=owner, outputs=outputs)
    except JobCancelled:
        with resources.session() as session:
            stages.mark_cancelled(session, job_id)
        logger.info("job %s cancelled during stage %s", job_id, stage)
        return "cancelled"
    except LeaseLost as exc:
        # Another worker took the stage over (this one stalled past its lease): it owns it now.
        logger.warning("job %s stage %s: %s", job_id, stage, exc)
        return "lease_lost"
    except RiftError as exc:
        return _fail(resources, job_id, stage, exc.code, exc.message)
    except ObjectNotFound as exc:
        return _fail(resources, job_id, stage, "missing_object",
                     f"an input of the job is missing from the object store: {exc.message}")
    except Exception as exc:
        try:
            return _retry_or_fail(app, resources, job_id, stage, claim.attempt, exc)
        except LeaseLost as lost:
            logger.warning("job %s stage %s: %s", job_id, stage, lost)
            return "lease_lost"
    finally:
        reporter.stop()

    following = stages.next_stage(stage)
    if following is not None:
        enqueue_stage(app, job_id, following)
    return "done"


def _fail(resources: WorkerResources, job_id: str, stage: str, code: str, message: str) -> str:
    try:
        with resources.session() as session:
            stages.fail_job(session, job_id, code, message, stage=stage,
                            owner=resources.worker_id)
    except LeaseLost as exc:
        logger.warning("job %s stage %s: %s", job_id, stage, exc)
        return "lease_lost"
    logger.info("job %s failed in stage %s: %s", job_id, stage, code)
    return "failed"


def _retry_or_fail(app: RiftCelery, resources: WorkerResources, job_id: str, stage: str,
                   attempt: int, exc: Exception) -> str:
    """After an unexpected error: give the stage back for another attempt, or, on the last
    allowed attempt, fail the job (while still holding the lease, so no other worker is racing)."""
    settings = resources.settings
    logger.exception("job %s stage %s: unexpected error on attempt %d", job_id, stage, attempt)
    # The job's message gets the first line only: driver errors carry whole SQL statements after it.
    first_line = (str(exc).splitlines() or [""])[0][:300]
    error = f"{type(exc).__name__}: {first_line}"
    with resources.session() as session:
        if attempt >= settings.max_stage_attempts:
            stages.fail_job(
                session, job_id, "stage_failed_repeatedly",
                f"stage '{stage}' failed {attempt} times (MAX_STAGE_ATTEMPTS="
                f"{settings.max_stage_attempts}); last error: {error}",
                stage=stage, owner=resources.worker_id)
            return "failed"
        stages.release_stage(session, job_id, stage, owner=resources.worker_id,
                             error=traceback.format_exc(limit=5))
    enqueue_stage(app, job_id, stage, countdown=settings.stage_retry_delay_seconds)
    return "retry"


def redispatch_stale_stages(app: RiftCelery, resources: WorkerResources) -> int:
    """Send again the stages whose worker died or whose next message was lost."""
    with resources.session() as session:
        stale = stages.stages_to_redispatch(
            session, stale_after=resources.settings.worker_lease_seconds,
            pending_after=resources.settings.stage_redispatch_seconds)
    for job_id, stage in stale:
        logger.warning("job %s: re-sending stage %s (its lease expired or its message is late)",
                       job_id, stage)
        enqueue_stage(app, job_id, stage)
    return len(stale) + redispatch_stale_shards(app, resources)


class RecoveryLoop:
    """A daemon thread of the worker process that runs :func:`redispatch_stale_stages` at start
    and then periodically (no beat process needed)."""

    def __init__(self, app: RiftCelery, resources: WorkerResources) -> None:
        self.app = app
        self.resources = resources
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rift-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.resources.settings.worker_recovery_interval_seconds
        while True:
            try:
                redispatch_stale_stages(self.app, self.resources)
            except Exception:
                logger.warning("recovery pass failed; will retry", exc_info=True)
            if self._stop.wait(interval):
                return
