"""The janitor's rules on real Postgres and a local store: which stage objects are in use, which
are stalled or orphaned, the grace period, retention, and the dry run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.db import session_factory_from_settings
from persistence.janitor import ARTIFACTS_EXPIRED, expire_artifact_rows, run_janitor
from persistence.models import Artifact, Checkpoint, Job, JobStage, utcnow
from persistence.object_keys import (
    candidate_object_key,
    epoch_state_key,
    shard_inputs_key,
    stage_object_key,
)
from persistence.records import create_checkpoint
from persistence.settings import Settings
from persistence.storage import LocalObjectStore
from persistence.transactions import log_event
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = pytest.mark.service


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> Settings:
    return settings_from_env({"DATABASE_URL": postgres_url, "STORE_KIND": "local",
                              "STORE_ROOT": str(tmp_path / "objects"),
                              "WORK_DIR": str(tmp_path / "work"), "JANITOR_GRACE_SECONDS": "0"})


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    factory = session_factory_from_settings(settings)
    yield factory
    factory.kw["bind"].dispose()


def _job(session: Session, checkpoint_id: str, status: str,
         stages: dict[str, tuple[str, int]]) -> str:
    job, _ = jobs.create_job(session, spec={}, checkpoint_id=checkpoint_id)
    finished = utcnow() if status in ("succeeded", "failed", "cancelled") else None
    session.execute(update(Job).where(Job.id == job.id)
                    .values(status=status, started_at=utcnow(), finished_at=finished))
    for stage, (stage_status, attempts) in stages.items():
        session.execute(update(JobStage)
                        .where(JobStage.job_id == job.id, JobStage.stage == stage)
                        .values(status=stage_status, attempts=attempts))
    session.commit()
    return job.id


def test_the_janitor_removes_exactly_what_nothing_uses(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    store = LocalObjectStore(settings.store_root)
    kept, removed = set(), set()

    def put(key: str, keep: bool) -> str:
        store.put_bytes(key, b"x")
        (kept if keep else removed).add(key)
        return key

    checkpoint_key = put("checkpoints/c1.safetensors", keep=True)
    put("checkpoints/no-row.safetensors", keep=False)
    put("datasets/no-row.npz", keep=False)
    put("elsewhere/unknown-layout.bin", keep=True)
    with sessions() as session:
        checkpoint = create_checkpoint(session, filename="c.safetensors", size=1, sha256="0" * 64,
                                       format="safetensors", storage_key=checkpoint_key,
                                       num_tensors=1, num_parameters=1)
        done = _job(session, checkpoint.id, "succeeded", {
            "mrc": ("done", 2), "finetune": ("done", 1), "interpolate": ("done", 1)})
        running = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 1), "finetune": ("running", 2)})
        failed = _job(session, checkpoint.id, "failed", {"mrc": ("failed", 1)})
        tuned = put(stage_object_key(done, "interpolate", 1, "tuned.safetensors"), keep=True)
        session.add(Artifact(job_id=done, name="tuned.safetensors", storage_key=tuned, size=1,
                             sha256="0" * 64, content_type="application/octet-stream"))
        session.commit()
    put(stage_object_key(done, "mrc", 1, "mrc.json"), keep=False)  # stalled attempt
    put(stage_object_key(done, "mrc", 2, "mrc.json"), keep=True)  # recorded, read later
    put(stage_object_key(running, "mrc", 1, "mrc.json"), keep=True)
    put(stage_object_key(running, "finetune", 1, "finetuned.safetensors"), keep=False)
    put(stage_object_key(running, "finetune", 2, "finetuned.safetensors"), keep=True)  # live
    put(stage_object_key(failed, "mrc", 1, "mrc.json"), keep=False)
    put(stage_object_key("0" * 32, "mrc", 1, "mrc.json"), keep=False)  # its job is gone
    scratch = settings.upload_scratch_dir
    scratch.mkdir(parents=True)
    (scratch / "upload-1.part").write_bytes(b"x")
    stage_scratch = settings.work_dir / "scratch" / "job-x"
    stage_scratch.mkdir(parents=True)
    (stage_scratch / "finetuned.safetensors").write_bytes(b"x")
    half_written = store.root / "checkpoints" / ".c2.safetensors.abc123.part"
    half_written.write_bytes(b"x")

    def everything() -> set[str]:
        return {o.key for o in store.list_objects()}

    assert everything() == kept | removed
    with sessions() as session:
        young = run_janitor(session, store, settings.model_copy(
            update={"janitor_grace_seconds": 3600.0}))
        dry = run_janitor(session, store, settings, dry_run=True)
    assert young.removed == 0
    assert set(dry.orphan_objects) | set(dry.stalled_attempt_objects) == removed
    assert everything() == kept | removed and half_written.exists()

    with sessions() as session:
        report = run_janitor(session, store, settings)
    assert everything() == kept
    assert set(report.orphan_objects) == {"checkpoints/no-row.safetensors", "datasets/no-row.npz",
                                          stage_object_key("0" * 32, "mrc", 1, "mrc.json")}
    assert len(report.stalled_attempt_objects) == 3
    assert report.partial_uploads == [f"checkpoints/c2.safetensors ({half_written})"]
    assert not half_written.exists()
    assert sorted(report.scratch_files) == sorted([str(scratch / "upload-1.part"),
                                                  str(stage_scratch)])
    assert list(scratch.iterdir()) == [] and not stage_scratch.exists()


def _stored_checkpoint(session: Session, store: LocalObjectStore) -> Checkpoint:
    """A one-byte checkpoint in the store and its row (what the jobs below point at)."""
    store.put_bytes("checkpoints/c1.safetensors", b"x")
    return create_checkpoint(session, filename="c.safetensors", size=1, sha256="0" * 64,
                             format="safetensors", storage_key="checkpoints/c1.safetensors",
                             num_tensors=1, num_parameters=1)


def test_the_janitor_removes_a_finished_sweeps_other_candidates_only(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    store = LocalObjectStore(settings.store_root)
    with sessions() as session:
        checkpoint = _stored_checkpoint(session, store)
        picked = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 1), "finetune": ("done", 1), "interpolate": ("running", 1)})
        sweeping = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 1), "finetune": ("running", 1)})
        winner = candidate_object_key(picked, 1, 1, 2, "finetuned.safetensors")
        session.add(Artifact(job_id=picked, name="finetuned.safetensors", storage_key=winner,
                             size=1, sha256="0" * 64, content_type="application/octet-stream"))
        session.commit()
    # Left by a crash right after the pick, or written by a candidate worker past its lease.
    others = {candidate_object_key(picked, 1, 0, 1, "finetuned.safetensors"),
              candidate_object_key(picked, 1, 1, 1, "finetuned.safetensors")}
    kept = {winner, stage_object_key(picked, "finetune", 1, "finetune.json"),
            # A sweep still running: every candidate's file may still be picked.
            candidate_object_key(sweeping, 1, 0, 1, "finetuned.safetensors"),
            candidate_object_key(sweeping, 1, 1, 1, "finetuned.safetensors")}
    for key in others | kept:
        store.put_bytes(key, b"x")

    with sessions() as session:
        report = run_janitor(session, store, settings)
    assert set(report.other_candidate_objects) == others
    assert report.removed == len(others)
    assert {o.key for o in store.list_objects("jobs/")} == kept


def test_the_janitor_removes_a_merged_mrc_stages_shared_adversarial_set_only(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    """The merge deletes the set its shards shared; a crash right after it (or a failed delete)
    left it in the done stage's recorded attempt, which the janitor keeps, for good. A stage
    whose shards still run keeps its set (a re-run shard reads it); a failed job's goes as a
    stalled attempt's."""
    store = LocalObjectStore(settings.store_root)
    with sessions() as session:
        checkpoint = _stored_checkpoint(session, store)
        merged = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 2), "finetune": ("running", 1)})
        sharding = _job(session, checkpoint.id, "running", {"mrc": ("running", 1)})
        failed = _job(session, checkpoint.id, "failed", {"mrc": ("failed", 1)})
    left = shard_inputs_key(merged, 2)
    kept = {stage_object_key(merged, "mrc", 2, "mrc.json"), shard_inputs_key(sharding, 1)}
    for key in {left, shard_inputs_key(failed, 1)} | kept:
        store.put_bytes(key, b"x")

    with sessions() as session:
        report = run_janitor(session, store, settings)
    assert report.shard_inputs_objects == [left]
    assert report.stalled_attempt_objects == [shard_inputs_key(failed, 1)]
    assert {o.key for o in store.list_objects("jobs/")} == kept


def test_retention_removes_the_files_of_old_finished_jobs_only(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    store = LocalObjectStore(settings.store_root)
    with sessions() as session:
        checkpoint = _stored_checkpoint(session, store)
        all_done = {"mrc": ("done", 1), "finetune": ("done", 1), "interpolate": ("done", 1)}
        old = _job(session, checkpoint.id, "succeeded", all_done)
        recent = _job(session, checkpoint.id, "succeeded", all_done)
        session.execute(update(Job).where(Job.id == old)
                        .values(finished_at=utcnow() - timedelta(days=10)))
        for job_id in (old, recent):
            key = stage_object_key(job_id, "interpolate", 1, "tuned.safetensors")
            store.put_bytes(key, b"x")
            store.put_bytes(stage_object_key(job_id, "mrc", 1, "mrc.json"), b"x")
            session.add(Artifact(job_id=job_id, name="tuned.safetensors", storage_key=key,
                                 size=1, sha256="0" * 64, content_type="application/x"))
        session.commit()

    with sessions() as session:
        kept_forever = run_janitor(session, store, settings)  # ARTIFACT_RETENTION_DAYS=0
        assert kept_forever.removed == 0
        report = run_janitor(session, store, settings.model_copy(
            update={"artifact_retention_days": 7.0}))
    assert report.expired_jobs == [old]
    assert {o.key for o in store.list_objects(f"jobs/{old}/")} == set()
    assert len({o.key for o in store.list_objects(f"jobs/{recent}/")}) == 2
    with sessions() as session:
        assert session.execute(select(Artifact.job_id)).scalars().all() == [recent]
        assert jobs.get_job(session, old).status == "succeeded"  # the job row stays
        kinds = [e.kind for e in jobs.list_events(session, old)]
    assert ARTIFACTS_EXPIRED in kinds


def test_two_janitors_at_once_log_one_expiry_per_job(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    # Every worker runs the janitor. Before: a pass that found a job's artifact rows, then
    # waited for another pass deleting them, deleted nothing and logged artifacts_expired again.
    store = LocalObjectStore(settings.store_root)
    with sessions() as session:
        checkpoint = _stored_checkpoint(session, store)
        old = _job(session, checkpoint.id, "succeeded", {})
        session.execute(update(Job).where(Job.id == old)
                        .values(finished_at=utcnow() - timedelta(days=10)))
        session.add(Artifact(job_id=old, name="tuned.safetensors", storage_key="jobs/k",
                             size=1, sha256="0" * 64, content_type="application/x"))
        session.commit()
    cutoff, passes = utcnow() - timedelta(days=7), []
    with sessions() as first, sessions() as watcher:
        # The first pass has deleted the rows and not committed yet (holding the job's row
        # first, as a pass does since the stored-bytes ledger: persistence.janitor).
        first.execute(select(Job.id).where(Job.id == old).with_for_update())
        first.execute(delete(Artifact).where(Artifact.job_id == old))
        second = threading.Thread(target=lambda: passes.append(_expire(sessions, cutoff)))
        second.start()
        deadline = time.monotonic() + 20
        while not watcher.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar_one():
            assert time.monotonic() < deadline, "the second pass never waited for the first"
            watcher.commit()
            time.sleep(0.02)
        log_event(first, old, ARTIFACTS_EXPIRED, {}, utcnow())
        first.commit()
        second.join()
    assert passes == [[]]
    with sessions() as session:
        kinds = [e.kind for e in jobs.list_events(session, old)]
    assert kinds.count(ARTIFACTS_EXPIRED) == 1


def _expire(sessions: sessionmaker[Session], cutoff: datetime) -> list[str]:
    with sessions() as session:
        return expire_artifact_rows(session, cutoff, utcnow())


def test_the_workers_recovery_loop_runs_the_janitor(
        service_settings: Settings, start_worker: Callable[..., WorkerProcess]) -> None:
    store = service_settings.build_object_store()
    store.put_bytes("checkpoints/left-by-a-crash.safetensors", b"x")
    worker = start_worker(JANITOR_GRACE_SECONDS="0")
    deadline = time.monotonic() + 30
    # The report line is logged after the deletion: wait for both.
    while store.exists("checkpoints/left-by-a-crash.safetensors") or (
            "janitor: " not in worker.log()):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)


def test_the_janitor_passes_over_keys_the_store_would_refuse(
        settings: Settings, moto_s3_endpoint: str) -> None:
    """A bucket holds what other tools put there: the 'folder' markers of the MinIO and AWS
    consoles (``checkpoints/``), a key with an empty segment. The janitor removes the orphans it
    knows and finishes its pass instead of stopping on InvalidKey at the first such key."""
    import uuid

    from persistence.storage_s3 import S3ObjectStore

    store = S3ObjectStore(f"janitor-{uuid.uuid4().hex[:12]}", endpoint_url=moto_s3_endpoint,
                          access_key="testing", secret_key="testing", create_bucket=True)
    for odd in ("checkpoints/", "jobs/", "datasets//twice.npz"):
        store._client.put_object(Bucket=store.bucket, Key=odd, Body=b"")
    store.put_bytes("checkpoints/no-row.safetensors", b"x")
    with session_factory_from_settings(settings)() as session:
        report = run_janitor(session, store, settings)
    assert report.orphan_objects == ["checkpoints/no-row.safetensors"]
    left = {item["Key"] for item in
            store._client.list_objects_v2(Bucket=store.bucket).get("Contents", [])}
    assert left == {"checkpoints/", "jobs/", "datasets//twice.npz"}


def test_a_retention_sized_sweep_on_s3_deletes_a_thousand_keys_per_request(
        settings: Settings, moto_s3_endpoint: str) -> None:
    """Thousands of orphans (a retention sweep's usual size) go in DeleteObjects requests of
    1,000 keys, not one DELETE each."""
    import uuid

    from persistence.storage_s3 import S3ObjectStore
    from tests.s3_fault_proxy import FaultProxy

    bucket = f"janitor-{uuid.uuid4().hex[:12]}"
    direct = S3ObjectStore(bucket, endpoint_url=moto_s3_endpoint, access_key="testing",
                           secret_key="testing", create_bucket=True)
    orphans = [f"datasets/{i:05d}.npz" for i in range(1001)]
    for key in orphans:
        direct._client.put_object(Bucket=bucket, Key=key, Body=b"")
    with FaultProxy(moto_s3_endpoint) as proxy:
        store = S3ObjectStore(bucket, endpoint_url=proxy.url, access_key="testing",
                              secret_key="testing")
        with session_factory_from_settings(settings)() as session:
            report = run_janitor(session, store, settings)
        assert sorted(report.orphan_objects) == orphans
        assert proxy.requests.get("DELETE", 0) == 0 and proxy.requests["POST"] == 2
    assert list(direct.list_objects()) == []


def test_the_janitor_removes_fine_tune_epoch_states_once_nothing_resumes_from_them(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    store = LocalObjectStore(settings.store_root)
    with sessions() as session:
        checkpoint = _stored_checkpoint(session, store)
        tuning = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 1), "finetune": ("pending", 0)})  # handed back: resumes from it
        tuned = _job(session, checkpoint.id, "running", {
            "mrc": ("done", 1), "finetune": ("done", 1), "interpolate": ("running", 1)})
        cancelled = _job(session, checkpoint.id, "cancelled", {
            "mrc": ("done", 1), "finetune": ("cancelled", 1)})
    # Left by a worker that crashed after recording the stage, or as the job was cancelled.
    left = {epoch_state_key(tuned), epoch_state_key(tuned, 2), epoch_state_key(cancelled),
            epoch_state_key("job-that-is-gone")}
    kept = {epoch_state_key(tuning), epoch_state_key(tuning, 1)}
    for key in left | kept:
        store.put_bytes(key, b"x")

    with sessions() as session:
        report = run_janitor(session, store, settings)
    assert set(report.epoch_state_objects) | set(report.orphan_objects) == left
    assert report.orphan_objects == [epoch_state_key("job-that-is-gone")]
    assert report.removed == len(left)
    assert {o.key for o in store.list_objects("jobs/")} == kept
