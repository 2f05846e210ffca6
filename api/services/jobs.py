"""Jobs as the API offers them: creating one (idempotency, a device some live worker has,
dataset and checkpoint checks, ownership, quota and cost, storage, insert, enqueue, cleanup on
failure), its API view, listing, cancelling and deleting.

Creation validates everything before anything is written, so every mistake is a 4xx naming its
field and leaves nothing behind; the checkpoint of a multipart request is stored only once the
job is known to be valid, and removed again if the job is not created.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api import crud
from api.auth import Caller
from api.checkpoint_validation import (
    CheckpointTensors,
    StoredTensorsCache,
    file_reader,
    safetensors_digests,
    store_reader,
    uploaded_safetensors_ranges,
)
from api.dispatch import Dispatcher, DispatchError
from api.earlier_requests import asks_for_recorded_job
from api.errors import ApiError, PayloadTooLarge, ServiceUnavailable, TooManyRequests
from api.idempotency import idempotency_conflict, scoped_idempotency_key
from api.ingest import store_checkpoint, validate_checkpoint_upload
from api.job_requests import (
    CHECKPOINT_ENTRY_FIELD,
    DigestReader,
    check_checkpoint_entry,
    check_job_fits,
    checkpoint_tensors,
    fingerprint,
    resolve_dataset,
    unknown_checkpoint,
    unknown_dataset,
)
from api.schemas import (
    JobError,
    JobLinks,
    JobListItemOut,
    JobOut,
    JobSpec,
    JobWarningOut,
    StageOut,
)
from api.services.ownership import owned_job, owned_job_summary
from api.services.quotas import (
    active_jobs_exceeded,
    check_active_jobs,
    check_compute,
    check_cost,
    check_job_storage,
    check_time_limit,
    job_storage_exceeded,
)
from api.services.workers import check_dataset_available, check_device_available
from api.uploads import UploadedFile, scratch_dir
from api.validation import Validator
from api.validation_shares import ValidationShares
from persistence.cost import estimate_cost
from persistence.eta import estimate_finish
from persistence.job_warnings import JobWarnings, job_warnings, warnings_of
from persistence.jobs import (
    ActiveJobLimitReached,
    JobPage,
    JobSummary,
    StageSummary,
    create_job,
    list_jobs,
    queue_position,
    request_cancel,
)
from persistence.logs import current_request_id
from persistence.models import Checkpoint, Dataset, Job, JobStage, utcnow
from persistence.records import StorageQuotaReached, job_reserved_bytes
from persistence.settings import Settings
from persistence.storage import ObjectStore

CHECKPOINT_FIELD = "checkpoint"


def job_link(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{job_id}{suffix}"


def _summary_fields(job: Job | JobSummary, position: int | None) -> dict[str, Any]:
    error = (JobError(code=job.error_code, message=job.error_message or job.error_code,
                      field=job.error_field) if job.error_code else None)
    return dict(
        id=job.id, status=job.status, stage=job.stage,
        progress=job.stage_progress, progress_message=job.progress_message,
        queue_position=position, cancel_requested=job.cancel_requested,
        checkpoint_id=job.checkpoint_id, dataset_id=job.dataset_id, labels=job.label_dict,
        device=job.device, attempts=job.attempts, selected_module=job.selected_module,
        chosen_alpha=job.chosen_alpha, metrics=job.metrics, error=error,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        updated_at=job.updated_at, cost_estimate=job.cost_estimate, cost_gflop=job.cost_gflop,
        time_limit_seconds=job.time_limit_seconds,
        links=JobLinks(
            self=job_link(job.id), events=job_link(job.id, "/events"),
            mrc=job_link(job.id, "/mrc"), curves=job_link(job.id, "/curves"),
            artifacts=job_link(job.id, "/artifacts"), cancel=job_link(job.id, "/cancel"),
            report=job_link(job.id, "/report"),
            materializations=job_link(job.id, "/materializations")),
    )


def _stages(stages: Sequence[JobStage | StageSummary]) -> list[StageOut]:
    return [StageOut.model_validate(s, from_attributes=True) for s in stages]


def _warnings(found: JobWarnings) -> dict[str, Any]:
    return dict(warnings=[JobWarningOut(stage=w.stage, candidate=w.candidate, message=w.message,
                                        at=w.at, count=w.count) for w in found.items],
                warnings_total=found.total)


def full_job_out(job: Job | JobSummary, position: int | None, warnings: JobWarnings) -> JobOut:
    """The API view of a job (labels and stages loaded) at queue ``position``."""
    assert job.stages is not None and job.spec is not None
    return JobOut(**_summary_fields(job, position), stages=_stages(job.stages), config=job.spec,
                  estimated_finish=estimate_finish(job, job.stages, utcnow()),
                  **_warnings(warnings))


def job_out(session: Session, job: Job) -> JobOut:
    """The API view of a job (labels and stages loaded); reads its queue position and its
    warnings."""
    return full_job_out(job, queue_position(session, job), warnings_of(session, job.id))


def list_item_out(job: JobSummary, warnings: JobWarnings | None = None) -> JobListItemOut:
    """A list item: the summary, plus the config, stages and warnings when they were read."""
    return JobListItemOut(
        **_summary_fields(job, job.queue_position), config=job.spec,
        stages=_stages(job.stages) if job.stages is not None else None,
        **(_warnings(warnings) if warnings is not None else {}))


def read_job_for(session: Session, caller: Caller, job_id: str) -> JobOut:
    """The caller's job by id, read as plain rows (four statements: the job, its labels, its
    stages, its warnings)."""
    summary = owned_job_summary(session, caller.project_id, job_id)
    return full_job_out(summary, summary.queue_position, warnings_of(session, summary.id))


@dataclass(frozen=True)
class JobServices:
    """What creating a job needs, taken by the route through ``Depends``."""

    settings: Settings
    store: ObjectStore
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    validator: Validator
    #: Each project's checks in the validator (VALIDATION_MAX_PENDING_PER_PROJECT).
    validation_shares: ValidationShares
    #: Stored safetensors checkpoints' headers, read once per API process.
    stored_tensors: StoredTensorsCache


def create_job_for(
    services: JobServices,
    caller: Caller,
    spec: JobSpec,
    *,
    checkpoint_id: str | None,
    upload: UploadedFile | None,
    idempotency_key: str | None,
) -> tuple[JobOut, bool]:
    """Validate, check quotas and cost, then record and queue the job; returns (view, created).

    Blocks (database, store, file checks): call it in a worker thread.
    """
    settings, store, factory = services.settings, services.store, services.session_factory
    checkpoint_field = "checkpoint_id" if upload is None else CHECKPOINT_FIELD
    reference = checkpoint_id if upload is None else f"sha256:{upload.sha256}"
    request_hash = fingerprint(spec, reference or "")
    stored_key = (scoped_idempotency_key(caller.project_id, idempotency_key)
                  if idempotency_key is not None else None)
    with factory() as session:
        existing = _replayed_job(session, stored_key, idempotency_key, request_hash, spec,
                                 reference or "")
        if existing is not None:
            return job_out(session, existing), False

        # Before the file checks, which cost a validator run: a job no live worker can run is
        # refused at once (api/services/workers.py).
        runners = check_device_available(session, settings, spec.config.device)
        dataset = resolve_dataset(session, store, spec, caller.project_id)
        # After the dataset rules (a 'root' or 'download' is refused as such), before the checks
        # that cost a validator run.
        unchecked = check_dataset_available(session, settings, runners,
                                            spec.config.dataset.name)
        inspection = None
        entry = spec.config.checkpoint_entry
        digest_reader: DigestReader | None = None
        # The checkpoint's and the fit's validator runs, one project's share of them at a time.
        with services.validation_shares.hold(caller.project_id,
                                             settings.validation_max_pending_per_project):
            if upload is None:
                assert checkpoint_id is not None
                row, tensors = checkpoint_tensors(session, store, checkpoint_id,
                                                  scratch_dir(settings), services.validator,
                                                  caller.project_id, entry, services.stored_tensors)
                num_tensors, checkpoint_size, uploading = row.num_tensors, row.size, 0
                if row.format == "safetensors":
                    read = store_reader(store, row.storage_key)
                    digest_reader = partial(safetensors_digests, read, tensors.ranges)
            else:
                inspection = validate_checkpoint_upload(services.validator, upload, CHECKPOINT_FIELD,
                                                        entry, CHECKPOINT_ENTRY_FIELD, digests=True)
                tensors = CheckpointTensors(inspection.shapes, inspection.dtypes, inspection.entries,
                                            inspection.normalizers, inspection.digests)
                num_tensors, checkpoint_size, uploading = (inspection.num_tensors, upload.size,
                                                           upload.size)
                if inspection.format == "safetensors":
                    digest_reader = partial(_uploaded_digests, upload)
            # Before the fit check, which would otherwise try the first entry's weights.
            check_checkpoint_entry(tensors.entries, entry)
            fit = check_job_fits(services.validator, spec.config, tensors, dataset.geometry,
                                 checkpoint_field, digest_reader, dataset=dataset.row)
        fitted = fit.tensors
        if upload is None and row.format == "safetensors" and fitted.digests != tensors.digests:
            # The next job from this checkpoint asks for them at once, and reads none.
            services.stored_tensors.put(row.id, row.sha256, fitted)

        config_json = spec.config.model_dump(mode="json")
        examples = None
        if dataset.row is not None and dataset.row.num_examples is not None:
            # The row keeps one count, every example of the file (x and x_test of an npz):
            # it bounds both splits.
            examples = (dataset.row.num_examples, dataset.row.num_examples)
        estimate = estimate_cost(config_json, num_modules=num_tensors, dataset_examples=examples,
                                 example_flops=fit.example_flops)
        check_cost(caller, estimate)
        check_compute(caller, estimate)
        check_time_limit(spec.time_limit_seconds, settings.job_time_limit_seconds)
        # What the job may store (its tuned weights, each candidate's θ_FT) counts against the
        # stored-bytes quota from now on, as an upload's bytes would.
        reserved = job_reserved_bytes(checkpoint_size, config_json, num_tensors)
        # The job's own transaction (create_job) checks both limits under the project's lock,
        # with the same answers; checked here too only before storing an upload, which a
        # refusal would otherwise follow. A job on a stored checkpoint saves a transaction of
        # six statements on its way to the queue.
        if upload is not None:
            try:
                check_active_jobs(session, caller)
                check_job_storage(session, caller, uploading, reserved)
            except (TooManyRequests, PayloadTooLarge):
                # The same request sent at the same moment under the same key (a client
                # retrying at once) may have recorded its job since the lookup above: that job,
                # which fills the quota, is this request's answer, not a refusal.
                session.rollback()
                existing = _replayed_job(session, stored_key, idempotency_key, request_hash,
                                         spec, reference or "")
                if existing is None:
                    raise
                return job_out(session, existing), False
        session.commit()

        stored_checkpoint = None
        if upload is not None and inspection is not None:
            stored_checkpoint, _ = store_checkpoint(factory, store, upload, inspection, caller)
            checkpoint_id = stored_checkpoint.id
        try:
            job, created = create_job(
                session, spec=config_json, checkpoint_id=checkpoint_id or "",
                dataset_id=spec.dataset_id, labels=spec.labels, idempotency_key=stored_key,
                request_hash=request_hash, project_id=caller.project_id,
                cost_estimate=estimate.total, cost_gflop=estimate.gflop,
                request_id=current_request_id(),
                max_active_jobs=caller.limits.max_active_jobs,
                time_limit_seconds=spec.time_limit_seconds, reserved_bytes=reserved,
                max_stored_bytes=caller.limits.max_stored_bytes,
                warnings=[unchecked] if unchecked is not None else [], actor=caller.actor)
            if created:
                try:
                    services.dispatcher.enqueue_job(job.id)
                except DispatchError as exc:
                    crud.delete_job(session, job.id)
                    raise ServiceUnavailable(
                        f"{exc}; the job was not created, retry later",
                        code="broker_unavailable") from exc
        except ActiveJobLimitReached as exc:
            # Another request of the project took the last slot since the early check.
            _forget_checkpoint(session, store, stored_checkpoint)
            raise active_jobs_exceeded(caller, exc.active, exc.limit) from exc
        except StorageQuotaReached as exc:
            # Likewise the stored bytes: another job or upload took them since the early check.
            _forget_checkpoint(session, store, stored_checkpoint)
            raise job_storage_exceeded(caller, exc.used, exc.incoming, exc.limit) from exc
        except IntegrityError as exc:
            session.rollback()
            _forget_checkpoint(session, store, stored_checkpoint)
            vanished = _vanished_input(session, checkpoint_id, spec.dataset_id)
            if vanished is None:
                raise
            raise vanished from exc
        except BaseException:
            _forget_checkpoint(session, store, stored_checkpoint)
            raise
        if not created:
            # A concurrent request with the same key won the race; its job is the answer.
            _forget_checkpoint(session, store, stored_checkpoint)
        return job_out(session, job), created


def _uploaded_digests(upload: UploadedFile, keys: list[str]) -> dict[str, str]:
    """The value digests of the tensors ``keys`` of an uploaded safetensors file."""
    return safetensors_digests(file_reader(upload.path), uploaded_safetensors_ranges(upload.path),
                               keys)


def _replayed_job(session: Session, stored_key: str | None, idempotency_key: str | None,
                  request_hash: str, spec: JobSpec, checkpoint_ref: str) -> Job | None:
    """The job recorded under the request's Idempotency-Key, or None (no key, or a new one);
    409 ``idempotency_conflict`` if it was recorded for another request. A job an earlier
    release recorded has another hash for the same request (settings added since): it is
    compared with the request instead (:mod:`api.earlier_requests`)."""
    if stored_key is None or idempotency_key is None:
        return None
    existing = crud.job_by_idempotency_key(session, stored_key)
    if (existing is not None and existing.request_hash != request_hash
            and not asks_for_recorded_job(session, existing, spec, checkpoint_ref)):
        raise idempotency_conflict(idempotency_key, "job", existing.id)
    return existing


def _vanished_input(session: Session, checkpoint_id: str | None,
                    dataset_id: str | None) -> ApiError | None:
    """The 422 for a checkpoint or dataset that was found when the job was checked but deleted
    by a concurrent request before the job's insert (whose foreign key then refused it), as if
    the request had come after the delete; None if both still exist (another conflict)."""
    if checkpoint_id and session.get(Checkpoint, checkpoint_id) is None:
        return unknown_checkpoint(checkpoint_id)
    if dataset_id and session.get(Dataset, dataset_id) is None:
        return unknown_dataset(dataset_id)
    return None


def _forget_checkpoint(session: Session, store: ObjectStore,
                       checkpoint: Checkpoint | None) -> None:
    # The checkpoint of a multipart request that made no job is not kept.
    if checkpoint is None:
        return
    session.rollback()
    crud.delete_checkpoint(session, checkpoint.id)
    store.delete(checkpoint.storage_key)


def list_jobs_for(session: Session, caller: Caller, *, statuses: list[str] | None,
                  labels: dict[str, str], limit: int, cursor: str | None,
                  expand: frozenset[str] = frozenset()) -> tuple[JobPage, list[JobListItemOut]]:
    """A page of the caller's jobs (never another project's), with their list views; ``expand``
    may add ``config``, ``stages`` and ``warnings`` to each item. A constant number of
    statements (the warnings: one for the page)."""
    page = list_jobs(session, status=statuses, labels=labels, limit=limit, cursor=cursor,
                     project_id=caller.project_id, with_spec="config" in expand,
                     with_stages="stages" in expand)
    if "warnings" not in expand:
        return page, [list_item_out(job) for job in page.jobs]
    found = job_warnings(session, [job.id for job in page.jobs])
    return page, [list_item_out(job, found[job.id]) for job in page.jobs]


def cancel_job_for(session: Session, caller: Caller, job_id: str) -> JobOut:
    """Cancel the caller's job (409 once it has finished)."""
    owned_job(session, caller.project_id, job_id)
    return job_out(session, request_cancel(session, job_id, actor=caller.actor))
