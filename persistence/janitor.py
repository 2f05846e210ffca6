"""The janitor: removes what crashed or finished work left behind, never anything in use.

What it removes, each only once older than ``JANITOR_GRACE_SECONDS`` (so it cannot race an upload
or a stage still running; a scratch folder a live process holds is kept whatever its age,
:mod:`persistence.scratch_folders`):

- scratch files: uploads the API spooled (``WORK_DIR/uploads``), the workers' stage scratch
  folders (``WORK_DIR/scratch``) and half-downloaded inputs (``WORK_DIR/inputs/**/.*``) of
  processes that were killed;
- partial writes of the object store: local ``.part`` files and incomplete S3 multipart uploads
  (``ListMultipartUploads`` then ``AbortMultipartUpload``);
- objects without a row: ``checkpoints/`` and ``datasets/`` objects no row points at (the API died
  between storing and recording, or a row was deleted), and ``jobs/<id>/`` objects of jobs that no
  longer exist;
- stalled attempts' objects: ``jobs/<id>/<stage>/attempt-<n>/`` objects that are neither an
  artifact nor the recorded attempt of a done stage nor the current attempt of an active job (a
  worker that lost its lease, a failed or cancelled stage);
- a sweep's other candidates' objects: ``candidate-<i>.attempt-<n>.*`` objects in the recorded
  attempt of a done fine-tune stage that are not an artifact (the winner's θ_FT is the stage's
  ``finetuned.safetensors``). The pick deletes them at once; this catches what a crash right
  after the pick, a failed delete or a candidate worker that lost its lease left;
- a sharded MRC stage's shared adversarial set (``adversarial.safetensors``) in the recorded
  attempt of a done MRC stage: the merge deletes it at once; this catches what a crash right
  after the merge or a failed delete left (a failed or cancelled job's goes as a stalled
  attempt's);
- fine-tune epoch states (``jobs/<id>/finetune/epoch-state/``, :mod:`rift.finetune_resume`) of
  a done fine-tune stage or an ended job: their workers delete them then; this catches a crash
  or a failed delete;
- with ``ARTIFACT_RETENTION_DAYS`` > 0, the artifact rows and every object of jobs that finished
  longer ago (the job row, its tables and events stay);
- the messages the embedded broker (``sqla+`` ``BROKER_URL``) has delivered, which kombu's
  SQLAlchemy transport keeps for ever (:mod:`persistence.broker_pruning`). No grace period: the
  transport never reads such a row again;
- the registry rows of worker processes not seen for 3 heartbeats (``WORKER_HEARTBEAT_SECONDS``,
  :mod:`persistence.workers`): killed, or cut off from the database. The grace period does not
  apply: such a row already counts as gone, and a worker that comes back registers again.

It runs in the workers' recovery loop every ``JANITOR_INTERVAL_SECONDS`` and on demand with
``python -m persistence.janitor`` (``--dry-run`` lists without removing); on a host where the API
runs apart from the workers, schedule the command there too, for the API's upload scratch folder.
Running it twice at once is harmless: every removal tolerates a missing target.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from persistence import storage_ledger
from persistence.audit import prune_audit_events
from persistence.broker_pruning import prune_delivered_messages
from persistence.command_line import service_parser
from persistence.models import (
    TERMINAL_STATUSES,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobStage,
    Materialization,
    StageStatus,
    utcnow,
)
from persistence.object_keys import (
    CANDIDATES_STAGE,
    CHECKPOINTS_PREFIX,
    DATASETS_PREFIX,
    JOBS_PREFIX,
    epoch_state_job,
    is_candidate_object_key,
    is_shard_inputs_key,
    parse_stage_object_key,
)
from persistence.scratch_folders import claimed_for_removal
from persistence.settings import Settings, settings_or_exit
from persistence.storage import ObjectInfo, ObjectStore, StoreError
from persistence.transactions import log_event, transaction
from persistence.workers import remove_stale_workers

logger = logging.getLogger(__name__)

#: Job ids per query when the janitor looks up the jobs found in the store.
_BATCH = 500
ARTIFACTS_EXPIRED = "artifacts_expired"


@dataclass
class JanitorReport:
    """What one pass removed (or, in a dry run, would remove), by kind."""

    scratch_files: list[str] = field(default_factory=list)
    partial_uploads: list[str] = field(default_factory=list)
    orphan_objects: list[str] = field(default_factory=list)
    stalled_attempt_objects: list[str] = field(default_factory=list)
    other_candidate_objects: list[str] = field(default_factory=list)
    shard_inputs_objects: list[str] = field(default_factory=list)
    epoch_state_objects: list[str] = field(default_factory=list)
    expired_objects: list[str] = field(default_factory=list)
    expired_jobs: list[str] = field(default_factory=list)
    stale_workers: list[str] = field(default_factory=list)
    # Delivered messages deleted from an embedded (sqla+) broker (persistence.broker_pruning).
    delivered_broker_messages: int = 0
    # Stored-bytes ledger rows folded into one per project and kind (persistence.storage_ledger).
    ledger_rows_folded: int = 0
    # Audit events older than AUDIT_RETENTION_DAYS (persistence.audit).
    audit_events_pruned: int = 0

    @property
    def removed(self) -> int:
        return (len(self.scratch_files) + len(self.partial_uploads) + len(self.orphan_objects)
                + len(self.stalled_attempt_objects) + len(self.other_candidate_objects)
                + len(self.shard_inputs_objects) + len(self.epoch_state_objects)
                + len(self.expired_objects) + len(self.stale_workers)
                + self.delivered_broker_messages)

    def summary(self) -> str:
        return ", ".join(f"{name}={len(value) if isinstance(value, list) else value}"
                         for name, value in asdict(self).items())


def run_janitor(session: Session, store: ObjectStore, settings: Settings, *,
                now: datetime | None = None, dry_run: bool = False) -> JanitorReport:
    """One pass over the scratch folders, the store's partial writes and its objects."""
    # Workers' heartbeats are the database's time (persistence/db_clock.py): judged by it too.
    heartbeat_now = now
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.janitor_grace_seconds)
    report = JanitorReport()
    report.scratch_files = sweep_scratch(_scratch_roots(settings), cutoff, dry_run=dry_run)
    report.partial_uploads = abort_partial_uploads(store, cutoff, dry_run=dry_run)
    retention_cutoff = (now - timedelta(days=settings.artifact_retention_days)
                        if settings.artifact_retention_days > 0 else None)
    if retention_cutoff is not None:
        report.expired_jobs = expire_artifact_rows(session, retention_cutoff, now,
                                                   dry_run=dry_run)
    sweep_objects(session, store, cutoff, retention_cutoff, report, dry_run=dry_run)
    report.stale_workers = remove_stale_workers(
        session, heartbeat_seconds=settings.worker_heartbeat_seconds, now=heartbeat_now,
        dry_run=dry_run)
    report.delivered_broker_messages = prune_delivered_messages(settings.broker_url,
                                                                dry_run=dry_run)
    if not dry_run:
        # The quota check sums a project's ledger: folded, it reads a row per kind.
        report.ledger_rows_folded = storage_ledger.fold(session)
    report.audit_events_pruned = prune_audit_events(session, settings.audit_retention_days,
                                                    now, dry_run=dry_run)
    return report


# --------------------------------------------------------------------------------------------
# Scratch folders and partial writes
# --------------------------------------------------------------------------------------------
def _scratch_roots(settings: Settings) -> list[tuple[Path, bool]]:
    """(folder, hidden_only): every entry of the upload and stage scratch folders, and the
    hidden (in-progress) entries of the input cache, whose visible entries are live inputs."""
    return [(settings.upload_scratch_dir, False), (settings.work_dir / "scratch", False),
            (settings.work_dir / "inputs" / "checkpoints", True),
            (settings.work_dir / "inputs" / "datasets", True)]


def _modified(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.lstat().st_mtime, UTC)
    except FileNotFoundError:
        return None


def sweep_scratch(roots: Iterable[tuple[Path, bool]], cutoff: datetime, *,
                  dry_run: bool = False) -> list[str]:
    """Remove the entries of each folder last modified before ``cutoff``; returns their paths.
    A folder counts as modified when any file in it was (a stage still writing keeps it); one
    whose process holds it (:func:`persistence.scratch_folders.held_scratch_folder`) is kept
    whatever its age."""
    removed = []
    for root, hidden_only in roots:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if hidden_only and not entry.name.startswith("."):
                continue
            newest = _newest(entry)
            if newest is None or newest >= cutoff:
                continue
            with claimed_for_removal(entry) as free:
                if not free:
                    continue  # a live process holds it (persistence.scratch_folders), however old
                removed.append(str(entry))
                if dry_run:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    return removed


def _newest(entry: Path) -> datetime | None:
    newest = _modified(entry)
    if newest is not None and entry.is_dir() and not entry.is_symlink():
        for child in entry.rglob("*"):
            modified = _modified(child)
            if modified is not None and modified > newest:
                newest = modified
    return newest


def abort_partial_uploads(store: ObjectStore, cutoff: datetime, *,
                          dry_run: bool = False) -> list[str]:
    """Abort the store's writes started before ``cutoff`` and never finished."""
    removed = []
    for upload in store.list_partial_uploads():
        if upload.started < cutoff:
            removed.append(f"{upload.key} ({upload.handle})")
            if not dry_run:
                store.abort_partial_upload(upload)
    return removed


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _JobView:
    status: str
    finished_at: datetime | None
    stages: dict[str, tuple[str, int]]  # stage -> (status, attempts)


def sweep_objects(session: Session, store: ObjectStore, cutoff: datetime,
                  retention_cutoff: datetime | None, report: JanitorReport, *,
                  dry_run: bool = False) -> None:
    """Delete the objects of ``checkpoints/``, ``datasets/`` and ``jobs/`` that nothing records
    (see the module docstring), each only if written before ``cutoff``. Keys under any other
    prefix are left alone: the janitor removes only what it knows the layout of. The doomed
    keys go in one ``delete_many`` at the end (1,000 per request on S3: a retention sweep can
    remove thousands); a key the store could not remove is logged and tried on the next pass."""
    doomed: list[str] = []
    for prefix, model in ((CHECKPOINTS_PREFIX, Checkpoint), (DATASETS_PREFIX, Dataset)):
        old = [item for item in store.list_objects(prefix) if item.modified < cutoff]
        recorded = _recorded_keys(session, model.storage_key, [item.key for item in old])
        for item in old:
            if item.key not in recorded:
                _remove(item, report.orphan_objects, doomed)

    old_job_objects = [item for item in store.list_objects(JOBS_PREFIX) if item.modified < cutoff]
    parsed = {item.key: parse_stage_object_key(item.key) for item in old_job_objects}
    epoch_states = {item.key: owner for item in old_job_objects
                    if (owner := epoch_state_job(item.key)) is not None}
    job_ids = sorted({part.job_id for part in parsed.values() if part is not None}
                     | set(epoch_states.values()))
    jobs = _job_views(session, job_ids)
    artifacts = _recorded_keys(session, Artifact.storage_key, list(parsed))
    for item in old_job_objects:
        if item.key in epoch_states:
            _sweep_epoch_state(item, jobs.get(epoch_states[item.key]), report, doomed)
            continue
        part = parsed[item.key]
        if part is None or (item.key in artifacts and not _expired(jobs.get(part.job_id),
                                                                   retention_cutoff)):
            continue  # not a stage object (unknown layout), or a recorded artifact
        job = jobs.get(part.job_id)
        if job is None:
            _remove(item, report.orphan_objects, doomed)
        elif _expired(job, retention_cutoff):
            _remove(item, report.expired_objects, doomed)
        elif not _attempt_in_use(job, part.stage, part.attempt):
            _remove(item, report.stalled_attempt_objects, doomed)
        elif is_candidate_object_key(item.key) and _stage_done(job, part.stage):
            # Not the winner's θ_FT (an artifact, kept above): nothing reads it again.
            _remove(item, report.other_candidate_objects, doomed)
        elif is_shard_inputs_key(item.key) and _stage_done(job, part.stage):
            # The merge is recorded: no shard reads the set again.
            _remove(item, report.shard_inputs_objects, doomed)
    if not dry_run:
        for key, reason in store.delete_many(doomed).items():
            logger.warning("janitor: could not delete %s (next pass retries): %s", key, reason)


def _sweep_epoch_state(item: ObjectInfo, job: _JobView | None, report: JanitorReport,
                       doomed: list[str]) -> None:
    """A fine-tune's epoch state (``persistence.object_keys.epoch_state_key``) is read only while
    the stage runs: removed once the job is gone or has ended or the stage is done (its worker
    deletes it then; this catches a crash or a failed delete)."""
    if job is None:
        _remove(item, report.orphan_objects, doomed)
    elif job.status in TERMINAL_STATUSES or _stage_done(job, CANDIDATES_STAGE):
        _remove(item, report.epoch_state_objects, doomed)


def _remove(item: ObjectInfo, into: list[str], doomed: list[str]) -> None:
    into.append(item.key)
    doomed.append(item.key)


def _recorded_keys(session: Session, column: InstrumentedAttribute[str], keys: list[str]
                   ) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), _BATCH):
        batch = keys[start:start + _BATCH]
        found.update(session.execute(select(column).where(column.in_(batch))).scalars())
    session.commit()
    return found


def _job_views(session: Session, job_ids: list[str]) -> dict[str, _JobView]:
    views: dict[str, _JobView] = {}
    for start in range(0, len(job_ids), _BATCH):
        batch = job_ids[start:start + _BATCH]
        for job_id, status, finished_at in session.execute(
                select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(batch))):
            views[job_id] = _JobView(status, finished_at, {})
        for job_id, stage, status, attempts in session.execute(
                select(JobStage.job_id, JobStage.stage, JobStage.status, JobStage.attempts)
                .where(JobStage.job_id.in_(batch))):
            views[job_id].stages[stage] = (status, attempts)
    session.commit()
    return views


def _expired(job: _JobView | None, retention_cutoff: datetime | None) -> bool:
    return (job is not None and retention_cutoff is not None and job.status in TERMINAL_STATUSES
            and job.finished_at is not None and job.finished_at < retention_cutoff)


def _attempt_in_use(job: _JobView, stage: str, attempt: int) -> bool:
    """The recorded attempt of a done stage (later stages read its records), or the latest
    attempt of a stage of an active job (it may be writing now)."""
    status, latest = job.stages.get(stage, ("", -1))
    if attempt != latest:
        return False
    return status == StageStatus.DONE or job.status not in TERMINAL_STATUSES


def _stage_done(job: _JobView, stage: str) -> bool:
    return job.stages.get(stage, ("", -1))[0] == StageStatus.DONE


def expire_artifact_rows(session: Session, retention_cutoff: datetime, now: datetime, *,
                         dry_run: bool = False) -> list[str]:
    """Delete the artifact rows of jobs that finished before ``retention_cutoff`` (logging an
    ``artifacts_expired`` event on each); their objects go in the same pass. Rows first, so the
    API never lists an artifact whose bytes are gone."""
    with transaction(session):
        expired = list(session.execute(
            select(Job.id).where(Job.status.in_(TERMINAL_STATUSES),
                                 Job.finished_at < retention_cutoff,
                                 select(Artifact.job_id).where(Artifact.job_id == Job.id)
                                 .exists())
            # One order for every pass: each locks the jobs one after another.
            .order_by(Job.id)).scalars())
        if dry_run:
            return expired
        deleted = []
        for job_id in expired:
            # Every worker runs the janitor (a fleet started together, at the same moments):
            # another pass that deleted these rows first is the one that logs their expiry.
            if _expire_job_artifacts(session, job_id):
                log_event(session, job_id, ARTIFACTS_EXPIRED,
                          {"retention_days_cutoff": retention_cutoff.isoformat()}, now)
                deleted.append(job_id)
    return deleted


def _expire_job_artifacts(session: Session, job_id: str) -> bool:
    """Delete the job's artifact rows, their bytes off its project's stored-bytes ledger, and
    settle its materializations (one queued or running reserved its θ_FT's size, gone now);
    False if none was left. The job's row is locked first (FOR UPDATE, as a DELETE of it), the
    order of every writer of its materializations: a request for one, which holds the job (FOR
    KEY SHARE) while it reserves θ_FT's size, is then counted before this (and settled here)
    or after it (finding θ_FT gone), never with the size this removes; a DELETE of the job
    sums what this leaves."""
    project_id = session.execute(
        select(Job.project_id).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    materializations = list(session.execute(
        select(Materialization).where(Materialization.job_id == job_id)
        .order_by(Materialization.id).with_for_update()
        .execution_options(populate_existing=True)).scalars())
    sizes = session.execute(delete(Artifact).where(Artifact.job_id == job_id)
                            .returning(Artifact.size)).scalars().all()
    storage_ledger.artifact_written(session, project_id, sum(sizes), 0)
    for row in materializations:
        storage_ledger.settle_materialization(session, row, project_id)
    return bool(sizes)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m persistence.janitor [--dry-run]``: one pass with the settings from the
    environment; prints what was removed as JSON."""
    parser = service_parser("python -m persistence.janitor", (
        "Remove scratch files, partial uploads, objects without a row, stalled attempts' "
        "objects, a finished sweep's other candidates' objects and a merged MRC stage's "
        "shared adversarial set older than "
        "JANITOR_GRACE_SECONDS, expired artifacts (ARTIFACT_RETENTION_DAYS), the messages an "
        "embedded (sqla+) broker has delivered, the registry rows of workers not seen for 3 "
        "heartbeats (WORKER_HEARTBEAT_SECONDS), and audit events older than "
        "AUDIT_RETENTION_DAYS."),
        "Exit codes: 0 done, 1 invalid settings, a database or object store that cannot be "
        "used (one line naming the setting), 2 a usage error.")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be removed, remove nothing")
    args = parser.parse_args(argv)
    from persistence.db import session_factory_from_settings
    from persistence.schema import require_usable_database

    settings = settings_or_exit()
    factory = session_factory_from_settings(settings)
    try:
        require_usable_database(factory.kw["bind"], then="then run the janitor again")
        store = settings.build_object_store()
        # As the services' start checks it (a one-shot run has no later to wait for): a
        # STORE_ROOT that is a file, a bucket missing or keys refused, a server not answering
        # stop here with one line; before, a STORE_ROOT that is a file found nothing to remove
        # and said so, status 0.
        store.check()
        with factory() as session:
            report = run_janitor(session, store, settings, dry_run=args.dry_run)
    except StoreError as exc:
        # One line naming the bucket and the setting to check, as the services' start says it
        # (persistence.startup); was a 40-line traceback ending in the same words.
        raise SystemExit(f"rift: object store: {' '.join(str(exc).split())}") from None
    finally:
        bind = factory.kw.get("bind")
        if bind is not None:
            bind.dispose()
    json.dump({"dry_run": args.dry_run, **asdict(report)}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
