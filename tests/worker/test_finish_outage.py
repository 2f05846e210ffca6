"""A stage's finishing transaction whose commit landed but whose answer the database outage took
(the connection lost after the server committed): the worker reads that the finish landed and
goes on from it, instead of taking it as refused. Real database, store and library run, in
process (worker/finishing.py); the answer is lost by a listener of the test on the worker's
real sessions, which raises the driver's connection error after the commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, delete, event, text
from sqlalchemy import exc as database_errors
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from persistence import jobs, stage_shards, stages
from persistence.materializations import get_materialization, request_materialization
from persistence.models import Artifact, JobEvent, Materialization, MRCShard, utcnow
from persistence.queue import RiftCelery
from persistence.settings import Settings
from persistence.stage_shards import MRC_SHARDS
from persistence.storage import ObjectNotFound
from rift.stage_outputs import FINETUNED
from tests.persistence.helpers import MRC_ROWS
from tests.sweep_configs import alpha_zero_loser
from worker.candidates import execute_candidate
from worker.finishing import record_finish
from worker.metrics import WorkerMetrics
from worker.runtime import (
    PartReporter,
    ShuttingDown,
    StageReporter,
    WorkerResources,
    settle_part_error,
)
from worker.shards import execute_shard
from worker.tasks import _fail, _hand_back, _retry_or_fail, execute_materialization, execute_stage

pytestmark = pytest.mark.service


def event_added(kind: str, **payload: Any) -> Callable[[Session], bool]:
    """Whether the session's transaction adds a ``kind`` event whose payload holds ``payload``."""
    return lambda session: any(
        isinstance(obj, JobEvent) and obj.kind == kind
        and all(obj.payload.get(key) == value for key, value in payload.items())
        for obj in session.new)


def materialization_becomes(status: str) -> Callable[[Session], bool]:
    """Whether the session's transaction marks a materialization ``status``."""
    return lambda session: any(isinstance(obj, Materialization) and obj.status == status
                               for obj in session.dirty)


materialization_succeeds = materialization_becomes("succeeded")


@contextmanager
def answer_lost_after_commit(name: str,
                             records: Callable[[Session], bool] | None = None, *,
                             updating: type | None = None) -> Iterator[list[str]]:
    """The first transaction that ``records`` (default: records stage ``name`` as finished) or,
    with ``updating`` (a model), that runs an UPDATE statement on its rows (written without
    the session's objects: ``records`` cannot see them) is committed on the server, then its
    caller gets the driver's connection error instead of the answer, as when the connection
    drops before the answer arrives. Yields the names whose answer was lost."""
    lost: list[str] = []
    records = records or event_added("stage_finished", stage=name)

    def mark(session: Session, _: object) -> None:
        # After each flush (new and dirty still hold what it wrote): a query in the
        # transaction may have flushed its rows before the commit.
        if not lost and updating is None and records(session):
            session.connection().info["lose_answer"] = True

    def mark_update(state: ORMExecuteState) -> None:
        if (not lost and updating is not None and state.is_update
                and state.bind_mapper is not None and state.bind_mapper.class_ is updating):
            state.session.connection().info["lose_answer"] = True

    def commit_then_lose(connection: Connection) -> None:
        if connection.info.pop("lose_answer", False):
            driver_connection = connection.connection.dbapi_connection
            assert driver_connection is not None
            driver_connection.commit()  # the server commits; its answer is "lost" below
            lost.append(name)
            raise database_errors.OperationalError(
                "COMMIT", None, psycopg.OperationalError("server closed the connection "
                                                         "unexpectedly"))

    event.listen(Session, "after_flush", mark)
    event.listen(Session, "do_orm_execute", mark_update)
    event.listen(Engine, "commit", commit_then_lose)
    try:
        yield lost
    finally:
        event.remove(Session, "after_flush", mark)
        event.remove(Session, "do_orm_execute", mark_update)
        event.remove(Engine, "commit", commit_then_lose)


def test_a_finish_whose_answer_was_lost_is_not_taken_as_refused(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, the worker took the error as the stage's own: it gave the stage back, which
    found it done (``lease_lost``), and the next stage, which the lost commit had claimed for
    this worker, waited for its lease to expire."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    resources.metrics = WorkerMetrics(resources, lambda queue: 0)
    with answer_lost_after_commit("finetune") as lost, \
            caplog.at_level(logging.INFO, logger="worker"):
        # mrc, then finetune and interpolate chained on the same worker.
        outcome = execute_stage(sender, resources, job_id, "mrc")
    assert lost == ["finetune"]
    assert outcome == "done"
    assert "its end had been recorded" in caplog.text
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert job.status == "succeeded", job.error_message
    assert {s.stage: s.attempts for s in job.stages} == {"mrc": 1, "finetune": 1,
                                                          "interpolate": 1}
    assert events.count("stage_finished") == 3  # recorded once
    assert "stage_retry" not in events


def test_a_finish_is_tried_again_for_at_most_a_lease_length(service_settings: Settings) -> None:
    """A database that does not come back (here: nothing listens on its port) ends the tries a
    lease length after the first, with the last connection error (the stage is then left to its
    lease, as before); the waits double up to their cap. The clock and the waits are the test's:
    the tries and reads are real."""
    settings = service_settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/absent",
        "worker_lease_seconds": 5.0})
    reporter = StageReporter(WorkerResources(settings), "job-1", "finetune")
    now = [0.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    with pytest.raises(database_errors.OperationalError):
        record_finish(reporter, lambda session: session.execute(text("SELECT 1")).one(),
                      lambda session: stages.recorded_finish(session, "job-1", "finetune",
                                                             owner=reporter.owner, attempt=1),
                      clock=lambda: now[0], sleep=wait)
    assert waits == [0.2, 0.4, 0.8, 1.6, 2.0]  # 5.0 s: the lease; one more would pass it


def test_an_mrc_shard_whose_finish_answer_was_lost_is_recorded_once(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """Before, the shard's finish error went to its error handling: the shard, recorded done by
    the lost commit, was no longer this worker's to release (``lease_lost``), and the task that
    recorded the last part never tried the merge."""
    quick_config["mrc"]["shards"] = 2
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    resources.metrics = WorkerMetrics(resources, lambda queue: 0)
    assert execute_stage(sender, resources, job_id, "mrc") == "sharded"
    assert execute_shard(sender, resources, job_id, 0).outcome == "done"  # shard 1 still waits
    with answer_lost_after_commit("shard 1", event_added("shard_finished", shard=1)) as lost:
        outcome = execute_shard(sender, resources, job_id, 1).outcome
    assert lost == ["shard 1"]
    assert outcome == "merged"  # it went on from its recorded part to the merge
    with sessions() as session:
        shards = {row.shard: (row.status, row.attempts)
                  for row in stage_shards.list_shards(session, job_id)}
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
        job = jobs.get_job(session, job_id)
    assert shards == {0: ("done", 1), 1: ("done", 1)}
    assert events.count("shard_finished") == 2  # recorded once each
    assert job.stage == "finetune", job.error_message


def test_a_materialization_whose_finish_answer_was_lost_succeeds(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """Before, the driver's error left the task (the request stayed running until its lease
    expired, then was made again); now the worker reads that its finish landed."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    resources.metrics = WorkerMetrics(resources, lambda queue: 0)
    assert execute_stage(sender, resources, job_id, "mrc") == "done"
    with sessions() as session:
        assert jobs.get_job(session, job_id).status == "succeeded"
    with sessions() as session:
        materialization_id = request_materialization(session, job_id, 0.5,
                                                     evaluate=False).row.id
    with answer_lost_after_commit("materialization", materialization_succeeds) as lost:
        outcome = execute_materialization(resources, materialization_id)
    assert lost == ["materialization"]
    assert outcome == "succeeded"
    with sessions() as session:
        row = get_materialization(session, job_id, materialization_id)
        assert (row.status, row.attempts) == ("succeeded", 1)


def test_a_sweep_candidate_whose_finish_answer_was_lost_is_recorded_once(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """As an MRC shard's: before, the candidate, recorded done by the lost commit, was no longer
    this worker's to release (``lease_lost``)."""
    grid = [0.01, 0.05]
    job_id = submit(alpha_zero_loser(quick_config, grid), send=False)
    resources = WorkerResources(service_settings)
    owner, now = resources.worker_id, utcnow()
    with sessions() as session:  # MRC recorded, the sweep started: its candidates wait
        stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stages.finish_stage(session, job_id, "mrc", owner=owner,
                            outputs=stages.StageOutputs(mrc_rows=MRC_ROWS), now=now)
        stages.claim_stage(session, job_id, "finetune", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stage_shards.start_candidates(session, job_id, owner=owner,
                                      candidates=[("fc", lr) for lr in grid], now=now)
    with answer_lost_after_commit("candidate 0",
                                  event_added("candidate_finished", candidate=0)) as lost:
        outcome = execute_candidate(sender, resources, job_id, 0).outcome
    assert lost == ["candidate 0"]
    assert outcome == "done"  # candidate 1 still waits: no pick yet
    with sessions() as session:
        rows = [(c.status, c.attempts) for c in stage_shards.list_candidates(session, job_id)]
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert rows == [("done", 1), ("pending", 0)]
    assert events.count("candidate_finished") == 1


def _claimed(submit: Callable[..., str], sessions: sessionmaker[Session],
             resources: WorkerResources, config: dict[str, Any]) -> StageReporter:
    """A job whose MRC stage ``resources``' worker claimed (attempt 1), and its reporter."""
    job_id = submit(config, send=False)
    with sessions() as session:
        claim = stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id,
                                   lease_seconds=600, max_attempts=3)
    assert claim.attempt == 1
    return StageReporter(resources, job_id, "mrc")


def _stage_row(sessions: sessionmaker[Session], job_id: str) -> tuple[str, int, str | None]:
    with sessions() as session:
        row = next(s for s in jobs.get_job(session, job_id).stages if s.stage == "mrc")
        return row.status, row.attempts, row.lease_owner


@pytest.mark.parametrize("end", ["retry", "hand_back", "fail"])
def test_a_stage_given_up_whose_answer_was_lost_is_not_taken_as_refused(
        end: str, submit: Callable[..., str], sessions: sessionmaker[Session],
        sender: RiftCelery, service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """The release after an unexpected error, the hand-back of a warm shutdown and a failure:
    before, the driver's error left the task, and the stage (released, handed back or failed
    by the lost commit) was reported as the task's error."""
    resources = WorkerResources(service_settings)
    reporter = _claimed(submit, sessions, resources, quick_config)
    job_id = reporter.job_id
    written = {"retry": "stage_retry", "hand_back": "stage_handed_back",
               "fail": "job_failed"}[end]
    with answer_lost_after_commit(end, event_added(written, stage="mrc")) as lost:
        if end == "retry":
            try:
                raise RuntimeError("an unexpected error")
            except RuntimeError as exc:
                outcome = _retry_or_fail(sender, reporter, 1, exc)
        elif end == "hand_back":
            outcome = _hand_back(sender, reporter, 1, None)
        else:
            outcome = _fail(reporter, 1, "model_error", "the model is broken")
    assert lost == [end]
    assert outcome == {"retry": "retry", "hand_back": "handed_back", "fail": "failed"}[end]
    with sessions() as session:
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert events.count(written) == 1  # recorded once
    assert _stage_row(sessions, job_id) == {"retry": ("pending", 1, None),
                                            "hand_back": ("pending", 0, None),
                                            "fail": ("failed", 1, None)}[end]


@pytest.mark.parametrize("end", ["retry", "hand_back", "fail"])
def test_a_part_given_up_whose_answer_was_lost_is_not_taken_as_refused(
        end: str, submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """An MRC shard's release after an unexpected error, hand-back in a warm shutdown and
    failure (``settle_part_error``), as a stage's: before, the driver's error left the task,
    and the shard (released, handed back or failed by the lost commit) waited for its lease."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    owner = resources.worker_id
    with sessions() as session:  # MRC split in two shards, shard 1 claimed (attempt 1)
        stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                           max_attempts=3)
        stage_shards.start_shards(session, job_id, owner=owner, groups=[["fc"], ["conv"]],
                                  inputs_key="unused")
        assert stage_shards.claim_part(session, MRC_SHARDS, job_id, 1, owner=owner,
                                       lease_seconds=600, max_attempts=3).attempt == 1
    errors: dict[str, Exception] = {"retry": RuntimeError("an unexpected error"),
                                    "hand_back": ShuttingDown("the worker is shutting down"),
                                    "fail": ObjectNotFound("inputs/shard-1")}
    with answer_lost_after_commit(end, updating=MRCShard) as lost:
        try:
            raise errors[end]
        except Exception as exc:
            outcome = settle_part_error(PartReporter(resources, job_id, MRC_SHARDS, 1),
                                        MRC_SHARDS, job_id, 1, 1, exc)
    assert lost == [end]
    assert outcome == {"retry": "retry", "hand_back": "handed_back", "fail": "failed"}[end]
    with sessions() as session:
        shards = {row.shard: (row.status, row.attempts, row.lease_owner)
                  for row in stage_shards.list_shards(session, job_id)}
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert shards[1] == {"retry": ("pending", 1, None), "hand_back": ("pending", 0, None),
                         "fail": ("failed", 1, None)}[end]
    assert events.count("stage_handed_back") == (end == "hand_back")  # recorded once


@pytest.mark.parametrize("end", ["hand_back", "fail"])
def test_a_materialization_given_up_whose_answer_was_lost_is_not_taken_as_refused(
        end: str, submit: Callable[..., str], sessions: sessionmaker[Session],
        sender: RiftCelery, service_settings: Settings, quick_config: dict[str, Any]) -> None:
    """Its hand-back in a warm shutdown and its failure, as its finish: before, the driver's
    error left the task, and the request (queued again or failed by the lost commit) was
    reported as the task's error."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    resources.metrics = WorkerMetrics(resources, lambda queue: 0)
    assert execute_stage(sender, resources, job_id, "mrc") == "done"
    with sessions() as session:
        materialization_id = request_materialization(session, job_id, 0.5,
                                                     evaluate=False).row.id
        if end == "fail":  # its weights gone: the request fails
            session.execute(delete(Artifact).where(Artifact.job_id == job_id,
                                                   Artifact.name == FINETUNED))
        session.commit()
    if end == "hand_back":
        resources.stopping.set()  # claimed, then stopped at its first cancellation poll
    status = {"hand_back": "queued", "fail": "failed"}[end]
    with answer_lost_after_commit(end, materialization_becomes(status)) as lost:
        outcome = execute_materialization(resources, materialization_id)
    assert (lost, outcome) == ([end], {"hand_back": "handed_back", "fail": "failed"}[end])
    with sessions() as session:
        row = get_materialization(session, job_id, materialization_id)
        assert (row.status, row.attempts) == {"hand_back": ("queued", 0),
                                              "fail": ("failed", 1)}[end]
