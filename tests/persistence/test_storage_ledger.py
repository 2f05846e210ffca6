"""The stored-bytes ledger equals the reference count (``stored_bytes_by_kind``) after every
step of a mixed history, on SQLite and Postgres (``persistence.storage_ledger``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages, storage_ledger
from persistence.api_keys import adopt_unowned
from persistence.janitor import expire_artifact_rows
from persistence.materializations import (
    fail_materialization,
    finish_materialization,
    request_materialization,
    start_materialization,
)
from persistence.models import Checkpoint, Job, JobStage, Project
from persistence.records import (
    StorageQuotaReached,
    create_checkpoint,
    ledger_stored_bytes_by_kind,
    recount_stored_bytes,
    stored_bytes_by_kind,
)
from persistence.stages import ArtifactRecord, StageOutputs
from persistence.transactions import lock_project
from tests.persistence.helpers import SPEC, T0, add_project, claim, finish, race

PROJECT = "ledgered"
T = TypeVar("T")


def _artifact(name: str, size: int) -> ArtifactRecord:
    return ArtifactRecord(name=name, storage_key=f"k/{name}", size=size, sha256="0" * 64,
                          content_type="application/octet-stream")


@contextmanager
def _meanwhile(sessions: sessionmaker[Session], after: Callable[[str], bool],
               action: Callable[[], T]) -> Iterator[Callable[..., T]]:
    """Within the block, once this thread has run a statement ``after`` matches, start
    ``action`` in another thread and go on when it has ended or waits for a lock (Postgres):
    a concurrent writer interleaved at that point. Yields ``result(timeout)``: what it
    returned."""
    engine, here = sessions.kw["bind"], threading.get_ident()
    pool = ThreadPoolExecutor(1)
    started: list[Future[T]] = []

    def interleave(_c: object, _cur: object, statement: str, *_: object) -> None:
        if threading.get_ident() != here or started or not after(statement):
            return
        started.append(pool.submit(action))
        with sessions() as watcher:
            deadline = time.monotonic() + 10
            while not started[0].done() and time.monotonic() < deadline:
                if watcher.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")).scalar_one():
                    return
                watcher.commit()
                time.sleep(0.02)

    def result(timeout: float) -> T:
        assert started, "the statement never ran"
        return started[0].result(timeout)

    event.listen(engine, "after_cursor_execute", interleave)
    try:
        yield result
    finally:
        event.remove(engine, "after_cursor_execute", interleave)
        pool.shutdown()


def _succeeded_job(sessions: sessionmaker[Session], theta_ft: int) -> str:
    """A job of the project (made now, on a new checkpoint of 1,000 bytes) run to its end,
    with a θ_FT of ``theta_ft`` bytes."""
    with sessions() as session:
        checkpoint_id = create_checkpoint(
            session, filename="m.safetensors", size=1000, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=4, num_parameters=10,
            project_id=PROJECT).id
        job_id = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                 project_id=PROJECT, now=T0)[0].id
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, job_id, stage)
        finish(sessions, job_id, stage, outputs=StageOutputs(
            selected_module="fc", artifacts=[_artifact("finetuned.safetensors", theta_ft)]
            if stage == "finetune" else []))
    return job_id


def _check(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        reference = stored_bytes_by_kind(session, PROJECT)
        assert ledger_stored_bytes_by_kind(session, PROJECT) == reference
        return reference.total


def _refused_at_the_same_point(sessions: sessionmaker[Session], used: int) -> None:
    """An upload that fits the limit exactly is stored, one byte more is refused, counting
    what the reference counts (reservations included)."""
    with sessions() as session, pytest.raises(StorageQuotaReached) as refused:
        create_checkpoint(session, filename="n.safetensors", size=10, sha256="0" * 64,
                          format="safetensors", storage_key="checkpoints/n", num_tensors=4,
                          num_parameters=10, project_id=PROJECT, max_stored_bytes=used + 9)
    assert refused.value.used == used
    with sessions() as session:
        fits = create_checkpoint(
            session, filename="n.safetensors", size=10, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/n", num_tensors=4, num_parameters=10, project_id=PROJECT,
            max_stored_bytes=used + 10).id
    _check(sessions)
    with sessions() as session:
        assert storage_ledger.delete_upload(session, Checkpoint, fits)
        session.commit()


def test_the_ledger_equals_the_reference_after_every_step(
        sessions: sessionmaker[Session]) -> None:
    add_project(sessions, PROJECT)
    with sessions() as session:
        checkpoint_id = create_checkpoint(
            session, filename="m.safetensors", size=1000, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=4, num_parameters=10,
            project_id=PROJECT).id
    _check(sessions)
    with sessions() as session, pytest.raises(StorageQuotaReached):
        create_checkpoint(session, filename="n.safetensors", size=10**9, sha256="0" * 64,
                          format="safetensors", storage_key="checkpoints/n", num_tensors=4,
                          num_parameters=10, project_id=PROJECT, max_stored_bytes=10**6)
    _check(sessions)

    def new_job(spec: dict[str, Any] = SPEC) -> str:
        with sessions() as session:
            job, _ = jobs.create_job(session, spec=spec, checkpoint_id=checkpoint_id,
                                     project_id=PROJECT, now=T0)
            return job.id

    done, cancelled, failed, lost = new_job(), new_job(), new_job(), new_job()
    _check(sessions)
    # Its worker lost twice: the claim after the lease expired finds its attempts spent.
    claim(sessions, lost, "mrc", max_attempts=1)
    assert claim(sessions, lost, "mrc", max_attempts=1, now=T0 + timedelta(hours=1)).outcome \
        == stages.ClaimOutcome.EXHAUSTED
    _check(sessions)
    # Succeeds, its θ_FT rewritten larger than the whole reservation on the way.
    claim(sessions, done, "mrc")
    finish(sessions, done, "mrc", outputs=StageOutputs(selected_module="fc"))
    claim(sessions, done, "finetune")
    _check(sessions)
    finish(sessions, done, "finetune", outputs=StageOutputs(
        artifacts=[_artifact("finetuned.safetensors", 700), _artifact("finetuned.safetensors", 5000)]))
    _check(sessions)
    claim(sessions, done, "interpolate")
    finish(sessions, done, "interpolate", outputs=StageOutputs(
        artifacts=[_artifact("tuned.safetensors", 900)]))
    _check(sessions)
    # A sweep (2 modules x 2 rates: 4 θ_FT and the tuned weights reserved), its winner's θ_FT
    # stored, then its tuned weights.
    sweep = new_job({**SPEC, "finetune": {"candidates": 2, "lr_grid": [0.1, 0.01]}})
    with sessions() as session:
        assert session.get_one(Job, sweep).reserved_bytes == 5 * 1000
    _check(sessions)
    for stage, stored in (("mrc", []), ("finetune", [_artifact("finetuned.safetensors", 1000)]),
                          ("interpolate", [_artifact("tuned.safetensors", 1000)])):
        claim(sessions, sweep, stage)
        finish(sessions, sweep, stage, outputs=StageOutputs(selected_module="fc",
                                                            artifacts=stored))
        _check(sessions)
    # Cancelled while queued; failed while running with an artifact stored.
    with sessions() as session:
        jobs.request_cancel(session, cancelled, now=T0)
    _check(sessions)
    claim(sessions, failed, "mrc")
    finish(sessions, failed, "mrc", outputs=StageOutputs(
        selected_module="fc", artifacts=[_artifact("manifest.json", 50)]))
    _check(sessions)
    with sessions() as session:
        stages.fail_job(session, failed, "numerical_error", "loss is NaN", now=T0)
    _check(sessions)
    # A materialization reserves θ_FT's size, then stores its weights.
    with sessions() as session:
        row = request_materialization(session, done, 0.5, evaluate=False, now=T0).row
        materialization_id = row.id
    _check(sessions)
    with sessions() as session:
        assert start_materialization(session, materialization_id, owner="w", lease_seconds=30,
                                     max_attempts=3, now=T0) is not None
    with sessions() as session:
        finish_materialization(session, materialization_id, _artifact(row.artifact_name, 4000),
                               owner="w", clean_accuracy=None, robust_accuracy=None, now=T0)
    _check(sessions)
    with sessions() as session:  # queued again, then expired with its job's artifacts
        request_materialization(session, done, 0.25, evaluate=False, now=T0)
    used = _check(sessions)
    _refused_at_the_same_point(sessions, used)
    with sessions() as session:
        assert sorted(expire_artifact_rows(session, T0 + timedelta(days=400), T0)) == sorted(
            [done, failed, sweep])
    _check(sessions)
    # A job that ended after the expiry, with a materialization queued when it is deleted.
    late = new_job()
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, late, stage)
        finish(sessions, late, stage, outputs=StageOutputs(
            selected_module="fc", artifacts=[_artifact(f"{stage}.bin", 300)]
            + ([_artifact("finetuned.safetensors", 800)] if stage == "finetune" else [])))
    with sessions() as session:
        request_materialization(session, late, 0.5, evaluate=False, now=T0)
    _check(sessions)
    with sessions() as session:
        assert storage_ledger.fold(session, min_rows=1) > 0
    _check(sessions)
    with sessions() as session:
        for job_id in (done, cancelled, failed, lost, late, sweep):
            assert storage_ledger.delete_job_rows(session, job_id)
        session.commit()
    _check(sessions)
    with sessions() as session:
        assert storage_ledger.delete_upload(session, Checkpoint, checkpoint_id)
        session.commit()
    assert _check(sessions) == 0


def test_a_materialization_ends_while_a_quota_check_holds_the_project(
        sessions: sessionmaker[Session]) -> None:
    """The writers append to the ledger without waiting for the project's row: a quota check
    holding it (an upload, a job creation, a materialization request, which then waits for the
    materialization's row) does not hold up the end of a materialization that holds that row.
    With a foreign key from the ledger to ``projects`` the append took a share lock on the
    project's row and waited here: with the request's wait, a deadlock."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite serialises every writing transaction")
    add_project(sessions, PROJECT)
    with sessions() as session:
        checkpoint_id = create_checkpoint(
            session, filename="m.safetensors", size=1000, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=4, num_parameters=10,
            project_id=PROJECT).id
        job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                 project_id=PROJECT, now=T0)
        job_id = job.id
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, job_id, stage)
        finish(sessions, job_id, stage, outputs=StageOutputs(
            selected_module="fc",
            artifacts=[_artifact("finetuned.safetensors", 800)] if stage == "finetune" else []))
    with sessions() as session:
        row = request_materialization(session, job_id, 0.5, evaluate=False, now=T0).row
        assert start_materialization(session, row.id, owner="w", lease_seconds=30,
                                     max_attempts=3, now=T0) is not None
    _check(sessions)

    def end() -> None:
        with sessions() as session:
            finish_materialization(session, row.id, _artifact(row.artifact_name, 900),
                                   owner="w", clean_accuracy=None, robust_accuracy=None, now=T0)

    holder = sessions()
    pool = ThreadPoolExecutor(1)
    try:
        lock_project(holder, PROJECT)  # a quota check under way
        ended = pool.submit(end)
        try:
            ended.result(timeout=10)
        finally:
            holder.rollback()
            holder.close()
    finally:
        pool.shutdown()
    _check(sessions)


def test_adopted_rows_are_added_to_the_ledger(sessions: sessionmaker[Session]) -> None:
    """``rift-admin projects adopt`` gives a project the rows made before projects existed:
    their bytes, artifacts and remainders count against its quota from then on."""
    add_project(sessions, PROJECT)
    with sessions() as session:
        checkpoint_id = create_checkpoint(
            session, filename="m.safetensors", size=1000, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=4, num_parameters=10).id
        ended, queued = (jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                         now=T0)[0].id for _ in range(2))
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, ended, stage)
        finish(sessions, ended, stage, outputs=StageOutputs(
            selected_module="fc",
            artifacts=[_artifact("finetuned.safetensors", 800)] if stage == "finetune" else []))
    with sessions() as session:
        request_materialization(session, ended, 0.5, evaluate=False, now=T0)
    assert _check(sessions) == 0
    with sessions() as session:
        project = session.get_one(Project, PROJECT)
        assert adopt_unowned(session, project) == {"checkpoints": 1, "datasets": 0, "jobs": 2}
    with sessions() as session:
        stored = stored_bytes_by_kind(session, PROJECT)
        assert stored.reserved_by_active_jobs > 0 and stored.reserved_by_materializations == 800
    assert _check(sessions) == stored.total
    assert queued


def test_a_repaired_ledger_stays_equal_as_the_jobs_go_on(sessions: sessionmaker[Session]) -> None:
    """Rows written by other means than the writers (a bulk load, a restore): the recount
    repairs the ledger and the remainders of the rows, so the ends that follow stay exact
    (a lump correction alone would leave the active job's reservation in the ledger for good
    once it ended)."""
    add_project(sessions, PROJECT)
    with sessions() as session:
        checkpoint_id = create_checkpoint(
            session, filename="m.safetensors", size=1000, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=4, num_parameters=10,
            project_id=PROJECT).id
        job = Job(status="queued", spec=SPEC, checkpoint_id=checkpoint_id, project_id=PROJECT,
                  stages=[JobStage(stage=stage, position=i, status="pending", attempts=0)
                          for i, stage in enumerate(("mrc", "finetune", "interpolate"))])
        session.add(job)
        session.commit()
        job_id = job.id
        assert recount_stored_bytes(session, PROJECT) == {
            "active_jobs": stored_bytes_by_kind(session, PROJECT).reserved_by_active_jobs}
        assert recount_stored_bytes(session, PROJECT, repair=True)
        assert recount_stored_bytes(session, PROJECT) == {}
    _check(sessions)
    claim(sessions, job_id, "mrc")
    finish(sessions, job_id, "mrc", outputs=StageOutputs(
        selected_module="fc", artifacts=[_artifact("manifest.json", 50)]))
    _check(sessions)
    with sessions() as session:
        stages.fail_job(session, job_id, "numerical_error", "loss is NaN", now=T0)
    _check(sessions)


def test_a_recount_during_an_upload_finds_no_difference(sessions: sessionmaker[Session]) -> None:
    """An upload committed between the recount's reading of the rows and of the ledger: read
    from one snapshot, both lack it (or both hold it). Read one statement after another (READ
    COMMITTED), the ledger held it and the rows not: a difference of minus its size, which
    the repair then wrote into the ledger, for good."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("a SQLite transaction reads one snapshot; its writers wait for each other")
    add_project(sessions, PROJECT)
    engine = sessions.kw["bind"]
    uploaded: list[str] = []

    def upload_meanwhile(_c: object, _cur: object, statement: str, *_: object) -> None:
        if "FROM stored_bytes_ledger" in statement and not uploaded:
            uploaded.append("started")
            with sessions() as other:
                uploaded.append(create_checkpoint(
                    other, filename="m.safetensors", size=1000, sha256="0" * 64,
                    format="safetensors", storage_key="checkpoints/m", num_tensors=4,
                    num_parameters=10, project_id=PROJECT).id)

    event.listen(engine, "before_cursor_execute", upload_meanwhile)
    try:
        with sessions() as session:
            assert recount_stored_bytes(session, PROJECT, repair=True) == {}
    finally:
        event.remove(engine, "before_cursor_execute", upload_meanwhile)
    assert len(uploaded) == 2
    assert _check(sessions) == 1000


def test_workers_ending_a_materialization_out_of_attempts_at_once_release_it_once(
        sessions: sessionmaker[Session]) -> None:
    """Its worker died on the last attempt; several workers given its message again find it
    out of attempts at the same moment and each ends it failed: its reservation leaves the
    ledger once (each read the row unlocked before, and each took it off)."""
    add_project(sessions, PROJECT)
    job_id = _succeeded_job(sessions, theta_ft=800)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=False, now=T0).row.id
        assert start_materialization(session, row_id, owner="dead", lease_seconds=30,
                                     max_attempts=1, now=T0) is not None
    _check(sessions)
    later = T0 + timedelta(hours=1)

    def take_over(start: Callable[[], None]) -> None:
        with sessions() as session:
            start()
            assert start_materialization(session, row_id, owner="late", lease_seconds=30,
                                         max_attempts=1, now=later) is None

    seen = race(4, take_over, StorageQuotaReached)
    assert seen.errors == [] and len(seen.values) == 4
    assert _check(sessions) == 1000 + 800


def test_an_expiry_while_a_materialization_is_requested_counts_it_once(
        sessions: sessionmaker[Session]) -> None:
    """The janitor expires a job's artifacts while a request for a new α of it has read θ_FT's
    size to reserve it: the expiry waits for the request (the job's row), then settles the new
    row to nothing. Holding the job as the request does (FOR KEY SHARE), it went first and did
    not see the request's row: the reservation of a θ_FT gone stayed in the ledger."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite serialises every writing transaction")
    add_project(sessions, PROJECT)
    job_id = _succeeded_job(sessions, 800)

    def expire() -> list[str]:
        with sessions() as session:
            return expire_artifact_rows(session, T0 + timedelta(days=400), T0)

    # Once the request has read θ_FT's size for its reservation, before it commits.
    with _meanwhile(sessions, lambda statement: "FROM artifacts" in statement
                    and "EXISTS" in statement, expire) as expiring, sessions() as session:
        request_materialization(session, job_id, 0.5, evaluate=False, now=T0)
    assert expiring(timeout=20) == [job_id]
    assert _check(sessions) == 1000


def test_a_job_deleted_while_its_materialization_fails_counts_it_once(
        sessions: sessionmaker[Session]) -> None:
    """A job's DELETE sums its materializations' reservations while a worker fails one (its
    row alone held): the DELETE holds them first, so the failure waits and finds it gone.
    Read unlocked, both took the reservation off the ledger."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite serialises every writing transaction")
    add_project(sessions, PROJECT)
    job_id = _succeeded_job(sessions, 800)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=False, now=T0).row.id
    assert _check(sessions) == 1000 + 800 + 800

    def fail() -> None:
        with sessions() as session:
            fail_materialization(session, row_id, "out of memory", now=T0)

    with _meanwhile(sessions, lambda statement: "FROM materializations" in statement,
                    fail) as failing, sessions() as session:
        assert storage_ledger.delete_job_rows(session, job_id)
        session.commit()
    failing(timeout=20)
    assert _check(sessions) == 1000
