"""The MRC stage across workers (``mrc.shards`` > 1): the "prepare" step run by the MRC stage
task, the shard task ``rift.stage.mrc_shard``, and the merge (see :mod:`persistence.stage_shards`
for the lease protocol).

Prepare: store the job's ``manifest.json`` and make the adversarial set once, both under the
stage attempt's keys (the set as safetensors), split the modules into shards balanced by
estimated cost (:mod:`rift.mrc_shards`), record the shards and send one message per shard. Shard:
claim it, score its modules on the stored set, record its part. The task that records the last
part (or, after a crash, a re-sent shard task that finds its shard done) merges the parts into one
table, finishes the stage (with the manifest among its artifacts, as a one-task stage records it)
and sends the next one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery

from persistence import stage_shards, stages
from persistence.models import TERMINAL_STATUSES, Checkpoint, Dataset, Job, StageName, utcnow
from persistence.object_keys import SHARD_INPUTS_NAME, shard_inputs_key
from persistence.queue import enqueue_stage
from persistence.scratch_folders import held_scratch_folder
from persistence.stage_shards import SHARDED_OWNER
from persistence.stages import ClaimOutcome, LeaseLost
from persistence.storage import ObjectStore
from persistence.time_limits import job_time_limit
from persistence.transactions import JobNotFound, load_stages
from rift import checkpoints
from rift.config import stored_config
from rift.measured_warnings import mrc_table_warnings
from rift.mrc import select_modules
from rift.mrc_shards import plan_shards
from rift.pipeline import (
    MRCInputs,
    MRCStageResult,
    PipelineCallbacks,
    PreparedRun,
    make_mrc_inputs,
    score_modules,
    warn_unreachable,
)
from worker.finishing import record_finish
from worker.runtime import (
    DATABASE_DOWN,
    PartReporter,
    PartRun,
    ShuttingDown,
    WorkerResources,
    job_has_ended,
    resend_later,
    settle_part_error,
    stored_events_of,
)
from worker.shard_platforms import (
    DEVICE_KEY,
    TORCH_KEY,
    mixed_platforms_warning,
    platform_of,
    shard_platforms,
)
from worker.stages import (
    SAFETENSORS,
    describe_device,
    job_stage_storage,
    load_manifest,
    prepare,
    record_mrc,
    store_manifest,
)

logger = logging.getLogger(__name__)

SHARD_TASK_NAME = "rift.stage.mrc_shard"
# Keys of a recorded part besides the MRCStageResult's own.
_NOT_RESULT = {"module_order", DEVICE_KEY, TORCH_KEY}


def enqueue_shard(app: Celery, job_id: str, shard: int, countdown: float | None = None) -> None:
    """Send the message that runs MRC shard ``shard`` of the job."""
    settings = getattr(app, "settings", None)
    app.send_task(SHARD_TASK_NAME, args=[job_id, shard], countdown=countdown,
                  queue=settings.celery_queue if settings is not None else None)


def start_mrc_shards(app: Celery, resources: WorkerResources, job: Job, run: PreparedRun,
                     callbacks: PipelineCallbacks, attempt: int,
                     manifest: Mapping[str, Any] | None = None,
                     preflight: Mapping[str, Any] | None = None) -> int:
    """The prepare step: adversarial set stored once, shards recorded and sent; returns their
    number. The caller holds the MRC stage's lease; afterwards the shards hold the work.
    ``manifest`` (:func:`worker.stages.job_manifest`, made here where the job's device was
    resolved, as a one-task stage makes it) is stored among the stage attempt's files; the merge
    records it. ``preflight`` (the report the caller's preflight check made) goes into the job's
    metrics with the hand-over, where the merge reads it: the job's ``metrics.preflight`` and
    ``result.json`` then hold it as a one-task stage's do (they were null)."""
    if manifest is not None:
        store_manifest(job_stage_storage(resources.store, job.id, {StageName.MRC: attempt}),
                       manifest)
    inputs = make_mrc_inputs(run, callbacks)
    plan = plan_shards(run.model, run.config.mrc, inputs.adversarial)
    if plan.unreachable:
        warn_unreachable(callbacks, plan.unreachable)  # no shard scores them, so none says so
    groups = plan.groups
    key = shard_inputs_key(job.id, attempt)
    with held_scratch_folder(resources.settings.work_dir / "scratch") as scratch:
        path = scratch / SHARD_INPUTS_NAME
        checkpoints.save_safetensors(path, {"adversarial": inputs.adversarial,
                                            "labels": inputs.labels})
        resources.store.put_file(key, path, content_type=SAFETENSORS)
    with resources.session() as session:
        stage_shards.start_shards(session, job.id, owner=resources.worker_id, groups=groups,
                                  inputs_key=key,
                                  metrics={"preflight": dict(preflight) if preflight else None})
    for index in range(len(groups)):
        enqueue_shard(app, job.id, index)
    return len(groups)


def execute_shard(app: Celery, resources: WorkerResources, job_id: str, shard: int) -> PartRun:
    """Claim and score one MRC shard; merge if it was the last. Returns what
    happened and the device it ran on (:class:`PartRun`)."""
    settings = resources.settings
    if resources.stopping.is_set():
        # Taken as this worker began to stop: unclaimed, it goes straight back to the queue.
        enqueue_shard(app, job_id, shard)
        return PartRun("resent")
    try:
        with resources.session() as session:
            claim = stage_shards.claim_shard(
                session, job_id, shard, owner=resources.worker_id,
                lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.max_stage_attempts)
            checkpoint = session.get(Checkpoint, claim.job.checkpoint_id)
            dataset = (session.get(Dataset, claim.job.dataset_id)
                       if claim.job.dataset_id else None)
    except JobNotFound:
        return PartRun("missing")
    except DATABASE_DOWN as exc:
        return PartRun(resend_later(
            f"job {job_id} MRC shard {shard}",
            lambda delay: enqueue_shard(app, job_id, shard, countdown=delay),
            settings.stage_retry_delay_seconds, exc))
    if claim.outcome == ClaimOutcome.DONE:
        # Only the merge of parts that ran elsewhere: no device of this task's to count.
        return PartRun(merge_if_complete(app, resources, job_id))
    if claim.outcome != ClaimOutcome.CLAIMED or checkpoint is None:
        if claim.job.status in TERMINAL_STATUSES:  # ended (maybe by this claim): set unused
            delete_shard_inputs(resources.store, job_id, [claim.inputs_key])
        return PartRun(str(claim.outcome))

    # A shard keeps to the job's deadline too: the stage's time is the shards' time.
    reporter = PartReporter(
        resources, job_id, stage_shards.MRC_SHARDS, shard, started_at=claim.job.started_at,
        time_limit=job_time_limit(claim.job, settings.job_time_limit_seconds))
    callbacks = PipelineCallbacks(on_progress=reporter.on_progress, on_event=reporter.on_event,
                                  should_cancel=reporter.should_cancel,
                                  stored_events=stored_events_of(resources, job_id))
    reporter.start()
    device: str | None = None  # resolved by prepare(); a failure before it ran on none
    try:
        run = prepare(claim.job, checkpoint, dataset, resources.store, settings.work_dir,
                      settings.worker_device, settings.data_root)
        device = describe_device(run.device)
        inputs = _load_inputs(resources, claim.inputs_key, run)
        # The table's own warnings (settings not used, unscored parameters) once, by shard 0.
        result = score_modules(run, inputs, claim.modules, callbacks,
                               table_warnings=shard == 0)
        # Where its rows were computed, for the merge to compare (worker/shard_platforms.py).
        part: dict[str, Any] = {**result.to_json(),
                                "module_order": select_modules(run.model, run.config.mrc),
                                **platform_of(device)}
        if reporter.lease_lost:
            raise LeaseLost(f"lost the lease on MRC shard {shard} of job {job_id}")
        reporter.flush()
        # Tried again through a database outage while the lease holds (worker.finishing).
        cancelled = record_finish(
            reporter,
            lambda session: stage_shards.finish_shard(session, job_id, shard,
                                                      owner=resources.worker_id, result=part),
            lambda session: stage_shards.recorded_part_finish(
                session, stage_shards.MRC_SHARDS, job_id, shard, attempt=claim.attempt))
    except Exception as exc:
        if isinstance(exc, ShuttingDown):
            # The rows scored so far are kept for the shard's next attempt (stored_events_of).
            with contextlib.suppress(Exception):
                reporter.flush()
        ended = settle_part_error(reporter, stage_shards.MRC_SHARDS, job_id, shard, claim.attempt, exc)
        if ended in ("failed", "cancelled") and job_has_ended(resources, job_id):
            # No shard reads the set again. While a sibling still runs the job waits for it
            # (a failure or cancellation ends the job with its last running part): the set is
            # kept for it (deleted before, a sibling still preparing met a missing object and
            # failed with that instead of stopping), and the last part to stop deletes it.
            delete_shard_inputs(resources.store, job_id, [claim.inputs_key])
        if ended in ("retry", "handed_back"):
            enqueue_shard(app, job_id, shard, countdown=(
                settings.stage_retry_delay_seconds if ended == "retry" else None))
        return PartRun(ended, device)
    finally:
        reporter.stop()
    if cancelled:  # the last shard running of a cancelled job: nothing reads the set again
        delete_shard_inputs(resources.store, job_id, [claim.inputs_key])
        return PartRun("cancelled", device)
    return PartRun(merge_if_complete(app, resources, job_id), device)


def _load_inputs(resources: WorkerResources, key: str, run: PreparedRun) -> MRCInputs:
    with held_scratch_folder(resources.settings.work_dir / "scratch") as scratch:
        path = resources.store.download_to(key, scratch / SHARD_INPUTS_NAME)
        tensors = checkpoints.load_state_dict(path)
    return MRCInputs(tensors["adversarial"].to(run.device), tensors["labels"].to(run.device))


def merge_if_complete(app: Celery, resources: WorkerResources, job_id: str) -> str:
    """If every shard is done and the stage still waits: one table, the stage finished, the next
    stage sent. Returns "merged", or "done" when there was nothing (more) to do."""
    with resources.session() as session:
        parts = stage_shards.completed_parts(session, job_id)
        if parts is None:
            return "done"
        job = session.get(Job, job_id)
        attempts = {str(row.stage): row.attempts for row in load_stages(session, job_id)}
        inputs_keys = list(dict.fromkeys(row.inputs_key
                                         for row in stage_shards.list_shards(session, job_id)))
    assert job is not None
    order = list(parts[0]["module_order"])
    merged = MRCStageResult.merge(
        [MRCStageResult.from_json({k: v for k, v in part.items() if k not in _NOT_RESULT})
         for part in parts], order)

    storage = job_stage_storage(resources.store, job_id, attempts)
    config = stored_config(job.spec)
    outputs = record_mrc(config, merged, storage, preflight=(job.metrics or {}).get("preflight"))
    manifest = load_manifest(storage)
    platforms = shard_platforms(parts)
    warning = mixed_platforms_warning(platforms, manifest)
    # The events' own time (display); the next stage's lease takes the database's clock.
    now = utcnow()
    events: list[tuple[str, dict[str, Any], datetime]] = []
    if warning is not None:
        events.append(("warning", {"stage": StageName.MRC.value, "message": warning}, now))
    # No shard saw the whole table: the table's warnings (θ_AT not robust, a choice decided by a
    # tie) are the merge's.
    events.extend(("warning", found.as_payload(), now) for found in mrc_table_warnings(
        config, merged.rows, baseline_robust_accuracy=merged.baseline_robust_accuracy,
        examples=merged.examples))
    if manifest is not None:
        # The manifest names the prepare step's device; the shards' go beside it.
        manifest = {**manifest, "mrc_shards": platforms}
        if warning is not None:
            manifest["warnings"] = [*manifest.get("warnings", []), warning]
        outputs.artifacts = [*outputs.artifacts, store_manifest(storage, manifest)]
    try:
        with resources.session() as session:
            # The warnings are written with the merge, so once, whichever task records it.
            stages.finish_stage_and_claim_next(session, job_id, StageName.MRC,
                                               owner=SHARDED_OWNER, outputs=outputs,
                                               events=events)
    except LeaseLost:
        return "done"  # another task recorded the merge first
    delete_shard_inputs(resources.store, job_id, inputs_keys)
    following = stages.next_stage(StageName.MRC)
    if following is not None:
        enqueue_stage(app, job_id, following)
    return "merged"


def delete_shard_inputs(store: ObjectStore, job_id: str, keys: list[str]) -> None:
    """Delete the adversarial set the shards shared, once the merge is recorded (no shard runs
    again, the table and the manifest are recorded, later stages never read it) or once a shard
    task finds or leaves the job ended (failed, cancelled). A delete that fails is logged and
    left to the janitor (``persistence/janitor.py``: a done MRC stage's set, an ended job's
    attempt); the job goes on either way."""
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            logger.warning("job %s: could not delete %s (the janitor will)", job_id, key,
                           exc_info=True)


def redispatch_stale_shards(app: Celery, resources: WorkerResources, *,
                            resend_after: float | None = None) -> int:
    """Send again the shards whose worker died, and the merge nobody recorded."""
    with resources.session() as session:
        stale = stage_shards.shards_to_redispatch(
            session, stale_after=resources.settings.worker_lease_seconds,
            pending_after=(resources.settings.queued_resend_after_seconds
                           if resend_after is None else resend_after))
    for job_id, shard in stale:
        logger.warning("job %s: re-sending MRC shard %d", job_id, shard)
        enqueue_shard(app, job_id, shard)
    return len(stale)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
