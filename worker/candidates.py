"""A sweep across workers (``finetune.candidates`` > 1 or ``finetune.lr_grid``, ``rift.sweep``):
the fan-out run by the fine-tune stage task, the candidate task ``rift.stage.finetune_candidate``,
the pick, and what the interpolate stage records (see :mod:`persistence.stage_shards` for the
lease protocol, shared with the MRC shards of ``worker/shards.py``).

Fan-out: read the MRC table, list the (module, lr) candidates in the library's order
(:func:`rift.sweep.sweep_candidates`), record them and send one message per candidate. Candidate:
claim it, fine-tune its module at its rate from θ_AT and measure its interpolation curve
(:func:`rift.pipeline.run_candidate`), store its θ_FT under its own key (its attempt's, so a worker
that lost its lease never overwrites the recorded one) and record its outcome and stage records.
Pick: the task that records the last candidate (or, after a crash, a re-sent candidate task that
finds its candidate done) applies :func:`rift.sweep.choose_across` to all outcomes (a candidate
whose fine-tuning diverged in its first epoch is recorded as excluded and left out; the job fails
only if every candidate is), finishes
the fine-tune stage with the winner's records, as a one-candidate job would (and ``mrc.csv``
again with the winner flagged, :func:`worker.stages.record_winner_table`), and deletes the
other candidates' θ_FT and superseded attempts (best effort: a failure is a warning event, and
the janitor removes what is left once the stage is done); the interpolate
stage then records the winner's curve, θ_α* (made again from θ_AT and the winner's θ_FT: the same
tensors the candidate measured), ``result.json`` with ``"sweep"``, and ``curves.json``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from persistence import jobs, stage_shards, stages
from persistence.models import Checkpoint, Dataset, Job, StageName, SweepCandidate
from persistence.object_keys import (
    candidate_object_key,
    candidate_objects_prefix,
)
from persistence.queue import enqueue_stage
from persistence.stage_shards import CANDIDATES, SHARDED_OWNER
from persistence.stages import ArtifactRecord, ClaimOutcome, LeaseLost, StageOutputs
from persistence.storage import ObjectNotFound, ObjectStore, StoredObject
from persistence.time_limits import job_time_limit
from persistence.transactions import EventKind, JobNotFound, load_stages
from reporting.charts import sweep_curves
from rift import stage_outputs
from rift.cancellation import raise_if_cancelled
from rift.errors import NumericalError
from rift.interpolation import interpolate_weights
from rift.pipeline import (
    FinetuneStageResult,
    InterpolationStageResult,
    PipelineCallbacks,
    PreparedRun,
    candidate_outcome,
    excludable,
    excluded_candidate,
    load_mrc,
    run_candidate,
    unchanged_weights_warning,
)
from rift.stage_outputs import FINETUNE_JSON, FINETUNED
from rift.sweep import (
    Candidate,
    CandidateOutcome,
    ExcludedCandidate,
    curves_document,
    fewer_modules_than_asked,
    outcome_from_json,
    sweep_candidates,
)
from worker.epoch_states import ObjectEpochStateStore, discard_epoch_states
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
)
from worker.stages import (
    describe_device,
    job_stage_storage,
    job_weights_metadata,
    prepare,
    record_interpolation,
    record_winner_table,
)

logger = logging.getLogger(__name__)

CANDIDATE_TASK_NAME = "rift.stage.finetune_candidate"

Attempts = Mapping[str, int]  # stage -> its latest claim (see worker.stages.run_stage)


def enqueue_candidate(app: Celery, job_id: str, candidate: int,
                      countdown: float | None = None) -> None:
    """Send the message that runs sweep candidate ``candidate`` of the job."""
    settings = getattr(app, "settings", None)
    app.send_task(CANDIDATE_TASK_NAME, args=[job_id, candidate], countdown=countdown,
                  queue=settings.celery_queue if settings is not None else None)


class CandidateStorage:
    """One candidate attempt's files (``rift.stage_outputs`` names), under the fine-tune stage's
    attempt as ``candidate-<i>.attempt-<n>.<name>`` (:func:`persistence.object_keys.
    candidate_object_key`); remembers what it wrote."""

    def __init__(self, store: ObjectStore, job_id: str, stage_attempt: int, candidate: int,
                 attempt: int) -> None:
        self.store = store
        self.key = partial(candidate_object_key, job_id, stage_attempt, candidate, attempt)
        self.written: dict[str, StoredObject] = {}

    def read_bytes(self, name: str) -> bytes | None:
        key = self.key(name)
        return self.store.get_bytes(key) if self.store.exists(key) else None

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None:
        self.written[name] = self.store.put_bytes(self.key(name), data,
                                                  content_type=content_type)


# --------------------------------------------------------------------------------------------
# Fan-out (run by the fine-tune stage task, which holds the stage's lease)
# --------------------------------------------------------------------------------------------
def start_sweep(app: Celery, resources: WorkerResources, job: Job, run: PreparedRun,
                attempts: Attempts, callbacks: PipelineCallbacks) -> int:
    """Record the job's candidates and send one message each; returns their number. Afterwards
    the candidates hold the fine-tune stage's work. Fewer modules than ``finetune.candidates``
    asks for is a ``warning`` event, as in the library's sweep."""
    mrc = load_mrc(job_stage_storage(resources.store, job.id, attempts))
    if mrc is None:
        raise RuntimeError(f"job {job.id}: mrc.json is missing although the MRC stage is done")
    candidates = sweep_candidates(run.config, mrc.rows)
    fewer = fewer_modules_than_asked(run.config, candidates, mrc.rows)
    if fewer is not None:
        callbacks.event("warning", {"stage": StageName.FINETUNE.value, "message": fewer})
    with resources.session() as session:
        stage_shards.start_candidates(session, job.id, owner=resources.worker_id,
                                      candidates=[(c.module, c.lr) for c in candidates])
    for index in range(len(candidates)):
        enqueue_candidate(app, job.id, index)
    return len(candidates)


# --------------------------------------------------------------------------------------------
# One candidate
# --------------------------------------------------------------------------------------------
def execute_candidate(app: Celery, resources: WorkerResources, job_id: str, index: int) -> PartRun:
    """Claim and run one candidate; pick the winner if it was the last. Returns what
    happened and the device it ran on (:class:`PartRun`)."""
    settings = resources.settings
    if resources.stopping.is_set():
        # Taken as this worker began to stop: unclaimed, it goes straight back to the queue.
        enqueue_candidate(app, job_id, index)
        return PartRun("resent")
    try:
        with resources.session() as session:
            claim = stage_shards.claim_part(
                session, CANDIDATES, job_id, index, owner=resources.worker_id,
                lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.max_stage_attempts)
            attempts = {str(row.stage): row.attempts for row in load_stages(session, job_id)}
            checkpoint = session.get(Checkpoint, claim.job.checkpoint_id)
            dataset = (session.get(Dataset, claim.job.dataset_id)
                       if claim.job.dataset_id else None)
    except JobNotFound:
        return PartRun("missing")
    except DATABASE_DOWN as exc:
        return PartRun(resend_later(
            f"job {job_id} candidate {index}",
            lambda delay: enqueue_candidate(app, job_id, index, countdown=delay),
            settings.stage_retry_delay_seconds, exc))
    if claim.outcome == ClaimOutcome.DONE:
        # Only the merge of parts that ran elsewhere: no device of this task's to count.
        return PartRun(pick_if_complete(app, resources, job_id))
    if claim.outcome != ClaimOutcome.CLAIMED or checkpoint is None:
        return PartRun(str(claim.outcome))
    part = claim.part
    assert isinstance(part, SweepCandidate)

    reporter = PartReporter(
        resources, job_id, CANDIDATES, index, started_at=claim.job.started_at,
        time_limit=job_time_limit(claim.job, settings.job_time_limit_seconds))
    # Every event of the candidate names it: candidates run side by side, and their epochs,
    # points and warnings could not be told apart in the job's events.
    epoch_state = ObjectEpochStateStore(resources.store, job_id, index)
    callbacks = PipelineCallbacks(on_progress=reporter.on_progress, on_event=reporter.on_event,
                                  should_cancel=reporter.should_cancel,
                                  epoch_state=epoch_state).tagged(candidate=index)
    reporter.start()
    device: str | None = None  # resolved by prepare(); a failure before it ran on none
    try:
        run = prepare(claim.job, checkpoint, dataset, resources.store, settings.work_dir,
                      settings.worker_device, settings.data_root)
        device = describe_device(run.device)
        candidate = Candidate(part.module, part.lr)
        try:
            finetune, interpolation = run_candidate(run, candidate, callbacks)
        except excludable(run.config) as exc:
            # Not the job's failure: the other candidates may finish, and the pick leaves this
            # one out (it fails the job only if every candidate is excluded).
            cancelled = record_excluded(resources, reporter, job_id, index, claim.attempt,
                                        excluded_candidate(candidate, exc, callbacks))
        else:
            cancelled = record_candidate(
                resources, reporter, job_id, index, claim.attempt, attempts[StageName.FINETUNE],
                run, candidate, finetune, interpolation,
                header=job_weights_metadata(claim.job, run.checkpoint_sha256))
    except Exception as exc:
        if isinstance(exc, ShuttingDown):
            # Its last epoch events, as an MRC shard's rows: the stored epoch state holds those
            # epochs, which the next attempt does not train (and so does not report) again.
            with contextlib.suppress(Exception):
                reporter.flush()
        ended = settle_part_error(reporter, CANDIDATES, job_id, index, claim.attempt, exc)
        if ended in ("retry", "handed_back"):
            enqueue_candidate(app, job_id, index, countdown=(
                settings.stage_retry_delay_seconds if ended == "retry" else None))
        elif ended in ("failed", "cancelled") and job_has_ended(resources, job_id):
            # No candidate resumes. While a sibling still runs (the job ends with its last
            # running part) it keeps storing its epoch states: the last one deletes them all.
            discard_epoch_states(resources.store, job_id)
        return PartRun(ended, device)
    finally:
        reporter.stop()
    epoch_state.discard()  # recorded: no attempt of the candidate runs again
    if cancelled:
        # Recorded past its last cancellation poll, the last part to stop: its finish ended
        # the job (reported "done" before). No candidate resumes: the siblings that stopped
        # for the cancellation left their epoch states to the last one, as in the error path.
        discard_epoch_states(resources.store, job_id)
        return PartRun("cancelled", device)
    return PartRun(pick_if_complete(app, resources, job_id), device)


def record_candidate(resources: WorkerResources, reporter: PartReporter, job_id: str,
                     index: int, attempt: int, stage_attempt: int, run: PreparedRun,
                     candidate: Candidate, finetune: FinetuneStageResult,
                     interpolation: InterpolationStageResult, *,
                     header: Mapping[str, str]) -> bool:
    """Store candidate ``index``'s θ_FT under its attempt's key and record its outcome.
    ``header``: the job's weights header (:func:`worker.stages.job_weights_metadata`), as on
    its other weights files. Returns whether recording it ended the job
    (:func:`persistence.stage_shards.finish_part`: its cancellation was asked and nothing else
    runs)."""
    # A worker that lost its lease meanwhile writes nothing; one shutting down still records
    # the candidate it finished, as a stage does (should_cancel would hand it back).
    raise_if_cancelled(reporter.cancelled_at_end)
    storage = CandidateStorage(resources.store, job_id, stage_attempt, index, attempt)
    stage_outputs.write_weights(storage, FINETUNED, finetune.state_dict, {
        **header, "kind": "finetuned", "module": candidate.module, "lr": repr(candidate.lr)})
    weights = storage.written[FINETUNED]
    outcome = candidate_outcome(candidate, finetune, interpolation)
    result = {"outcome": outcome.to_json(), "finetune": finetune.to_json(),
              "interpolation": interpolation.to_json(), "worker": resources.worker_id,
              "finetuned": {"key": weights.key, "size": weights.size,
                            "sha256": weights.sha256, "content_type": weights.content_type}}
    if reporter.lease_lost:
        raise LeaseLost(f"lost the lease on candidate {index} of job {job_id}")
    reporter.flush()  # the candidate's events come before its part is recorded
    return _finish_candidate(reporter, job_id, index, attempt, result, {
        "module": candidate.module, "lr": candidate.lr, "chosen_alpha": outcome.chosen_alpha,
        "clean_accuracy": outcome.clean_accuracy, "robust_accuracy": outcome.robust_accuracy})


def record_excluded(resources: WorkerResources, reporter: PartReporter, job_id: str,
                    index: int, attempt: int, excluded: ExcludedCandidate) -> bool:
    """Record candidate ``index`` as done but excluded from the pick (no θ_FT, no curve): its
    result holds ``"excluded"`` with the reason, which ``/curves`` reports as a failed
    candidate. Returns whether recording it ended the job (as :func:`record_candidate`)."""
    if reporter.lease_lost:
        raise LeaseLost(f"lost the lease on candidate {index} of job {job_id}")
    reporter.flush()  # the warning event comes before the part is recorded
    return _finish_candidate(
        reporter, job_id, index, attempt,
        {"outcome": excluded.to_json(),
         "excluded": {"reason": excluded.reason, "field": excluded.field},
         "worker": resources.worker_id},
        {"module": excluded.candidate.module, "lr": excluded.candidate.lr,
         "excluded": excluded.reason})


def _finish_candidate(reporter: PartReporter, job_id: str, index: int, attempt: int,
                      result: dict[str, Any], summary: dict[str, Any]) -> bool:
    """Record the candidate's part (:func:`persistence.stage_shards.finish_part`), tried again
    through a database outage while the lease holds (worker.finishing)."""
    return record_finish(
        reporter,
        lambda session: stage_shards.finish_part(
            session, CANDIDATES, job_id, index, owner=reporter.owner, result=result,
            summary=summary),
        lambda session: stage_shards.recorded_part_finish(session, CANDIDATES, job_id, index,
                                                          attempt=attempt))


# --------------------------------------------------------------------------------------------
# The pick (finishes the fine-tune stage) and the interpolate stage of a sweep
# --------------------------------------------------------------------------------------------
def outcomes_of(results: list[dict[str, Any]]) -> list[CandidateOutcome | ExcludedCandidate]:
    """The recorded candidates' outcomes (excluded ones included), in the sweep's order."""
    return [outcome_from_json(result["outcome"]) for result in results]


def pick_if_complete(app: Celery, resources: WorkerResources, job_id: str) -> str:
    """If every candidate is done and the fine-tune stage still waits: the rule picks across
    all, the stage is finished with the winner's records, the interpolate stage sent. Returns
    "picked", or "done" when there was nothing (more) to do."""
    with resources.session() as session:
        results = stage_shards.completed_results(session, CANDIDATES, job_id)
        if results is None:
            return "done"
        attempts = {str(row.stage): row.attempts for row in load_stages(session, job_id)}
    try:
        curves = curves_document(outcomes_of(results))
    except NumericalError as exc:  # every candidate excluded: nothing to pick
        with resources.session() as session:
            stages.fail_job(session, job_id, exc.code, exc.message, stage=StageName.FINETUNE)
        return "failed"
    winner = results[curves["chosen"]]
    outcome = curves["candidates"][curves["chosen"]]
    finetune = winner["finetune"]
    # finetune.json as a one-candidate job leaves it: the interpolate stage reads it.
    storage = job_stage_storage(resources.store, job_id, attempts)
    stage_outputs.write_json(storage, FINETUNE_JSON, finetune)
    weights = winner["finetuned"]
    # The stored mrc.csv flags the winner, as GET /mrc and the library's run_sweep do.
    table = record_winner_table(storage, finetune["module"])
    outputs = StageOutputs(
        epochs=finetune["epochs"],
        artifacts=[ArtifactRecord(name=FINETUNED, storage_key=weights["key"],
                                  size=int(weights["size"]), sha256=weights["sha256"],
                                  content_type=weights["content_type"]), table],
        selected_module=finetune["module"],
        metrics={"best_epoch": finetune["best_epoch"], "finetune_seconds": finetune["seconds"],
                 "sweep": {"chosen": curves["chosen"], "candidates": len(results),
                           "module": outcome["module"], "lr": outcome["lr"],
                           "excluded": curves["excluded"]},
                 **({"finetune_diverged": finetune["diverged"]}
                    if finetune.get("diverged") else {})},
        summary={"module": finetune["module"], "lr": outcome["lr"],
                 "epochs": len(finetune["epochs"]), "best_epoch": finetune["best_epoch"],
                 "seconds": sum(r["finetune"]["seconds"] for r in results if "finetune" in r),
                 "candidates": len(results), "chosen": curves["chosen"],
                 "excluded": curves["excluded"]})
    try:
        with resources.session() as session:
            stages.finish_stage(session, job_id, StageName.FINETUNE, owner=SHARDED_OWNER,
                                outputs=outputs)
    except LeaseLost:
        return "done"  # another task recorded the pick first
    # The other candidates' results stop naming the keys about to be deleted (a crash right
    # here leaves them named: the API reads the pick, not the keys, to say a file is gone).
    try:
        with resources.session() as session:
            stage_shards.forget_discarded_weights(session, job_id, winner=curves["chosen"])
    except Exception:
        logger.warning("job %s: could not mark the other candidates' weights deleted", job_id,
                       exc_info=True)
    # Before the next stage is sent, so that a finished job has nothing left over: a few deletes
    # (at most 16 candidates, each with its attempts).
    discard_other_candidates(resources.store, resources.session, job_id,
                             attempts[StageName.FINETUNE], keep=weights["key"])
    following = stages.next_stage(StageName.FINETUNE)
    if following is not None:
        enqueue_stage(app, job_id, following)
    return "picked"


def discard_other_candidates(store: ObjectStore, sessions: Callable[[], Session], job_id: str,
                             stage_attempt: int, *, keep: str) -> None:
    """Delete the sweep's candidate files except ``keep``, the winner's θ_FT, once the pick is
    recorded with ``keep`` as the fine-tune stage's ``finetuned.safetensors``. Never raises: the
    job goes on whatever happens here; a failure is logged and becomes a warning event (the
    janitor removes what is left, :mod:`persistence.janitor`)."""
    try:
        failed = delete_candidate_objects(store, job_id, stage_attempt, keep=keep)
        message = (None if not failed else
                   f"{len(failed)} files of the sweep's other candidates could not be deleted "
                   f"(the janitor retries): {', '.join(failed[:3])}"
                   f"{' ...' if len(failed) > 3 else ''}")
    except Exception as exc:
        logger.warning("job %s: could not list the sweep's candidate files", job_id,
                       exc_info=True)
        first_line = (str(exc).splitlines() or [""])[0][:300]
        message = (f"the sweep's other candidates' files could not be deleted (the janitor "
                   f"retries): {type(exc).__name__}: {first_line}")
    if message is None:
        return
    try:
        with sessions() as session:
            jobs.append_event(session, job_id, EventKind.WARNING,
                              {"stage": StageName.FINETUNE.value, "message": message})
    except Exception:
        logger.warning("job %s: could not record the warning event", job_id, exc_info=True)


def delete_candidate_objects(store: ObjectStore, job_id: str, stage_attempt: int, *,
                             keep: str) -> list[str]:
    """Delete every object the candidates of the sweep started by fine-tune stage attempt
    ``stage_attempt`` wrote, except ``keep``: the losing candidates' θ_FT and every superseded
    attempt (a lost candidate's earlier one, the winner's included). Nothing reads them again:
    the interpolate stage (and its re-runs) and materializations read the winner's file alone,
    and the candidates' recorded results keep their figures (their θ_FT marked deleted first,
    :func:`persistence.stage_shards.forget_discarded_weights`). Returns the keys whose delete
    failed (each logged); a failed listing raises."""
    failed = []
    for item in list(store.list_objects(candidate_objects_prefix(job_id, stage_attempt))):
        if item.key == keep:
            continue
        try:
            store.delete(item.key)
        except Exception:
            logger.warning("job %s: could not delete %s", job_id, item.key, exc_info=True)
            failed.append(item.key)
    return failed


def record_sweep_interpolation(resources: WorkerResources, job: Job, run: PreparedRun,
                               attempts: Attempts, callbacks: PipelineCallbacks) -> StageOutputs:
    """The interpolate stage of a sweep: the winner's curve was measured by its candidate task,
    so this records it (θ_α* made again from θ_AT and the winner's θ_FT), with every curve; a
    winner at α = 0 is the job's ``warning`` (a candidate's own curve choosing θ_AT is not)."""
    with resources.session() as session:
        rows = stage_shards.list_candidates(session, job.id)
    results = [dict(row.result) for row in rows if row.result is not None]
    if not rows or len(results) != len(rows):
        raise RuntimeError(f"job {job.id}: a candidate has no result although the fine-tune "
                           "stage is done")
    curves = curves_document(outcomes_of(results))
    winner = results[curves["chosen"]]
    weights = stage_outputs.read_weights(_KeyStorage(resources.store, winner["finetuned"]["key"]),
                                         FINETUNED)
    if weights is None:
        raise ObjectNotFound(f"the chosen candidate's weights {winner['finetuned']['key']}")
    recorded = dict(winner["interpolation"])
    interpolation = InterpolationStageResult(
        **recorded, state_dict=interpolate_weights(run.original_state, weights,
                                                   float(recorded["chosen_alpha"])))
    if interpolation.chosen_alpha == 0.0:
        callbacks.event("warning", unchanged_weights_warning(run.config).as_payload())
    return record_interpolation(
        job, run, job_stage_storage(resources.store, job.id, attempts), interpolation,
        sweep_curves(curves["candidates"], curves["chosen"]), sweep=curves,
        metadata={"lr": repr(float(curves["candidates"][curves["chosen"]]["lr"]))})


class _KeyStorage:
    """Read-only :class:`rift.stage_outputs.StageStorage` whose one file is the object ``key``."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.key = store, key

    def read_bytes(self, name: str) -> bytes | None:
        return self.store.get_bytes(self.key) if self.store.exists(self.key) else None

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None:
        raise RuntimeError("read-only")


def redispatch_stale_candidates(app: Celery, resources: WorkerResources, *,
                                resend_after: float | None = None) -> int:
    """Send again the candidates whose worker died, and the pick nobody recorded."""
    with resources.session() as session:
        stale = stage_shards.parts_to_redispatch(
            session, CANDIDATES, stale_after=resources.settings.worker_lease_seconds,
            pending_after=(resources.settings.queued_resend_after_seconds
                           if resend_after is None else resend_after))
    for job_id, index in stale:
        logger.warning("job %s: re-sending sweep candidate %d", job_id, index)
        enqueue_candidate(app, job_id, index)
    return len(stale)
