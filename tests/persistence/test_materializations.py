"""Materialization requests: one row per α of a job, asked again → the same row, failed or
lacking the evaluation asked now → queued again; finishing records the artifact too."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, materializations
from persistence.stages import ArtifactRecord
from tests.persistence.helpers import claim, finish


def _succeeded(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> str:
    job_id = new_job()
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, job_id, stage)
        finish(sessions, job_id, stage)
    return job_id


def test_requests_are_made_once_per_alpha(sessions: sessionmaker[Session],
                                          new_job: Callable[..., str]) -> None:
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        first = materializations.request_materialization(session, job_id, 0.35, evaluate=False,
                                                         request_id="r1")
        assert first.must_dispatch and first.row.artifact_name == "tuned@0.35.safetensors"
        again = materializations.request_materialization(session, job_id, 0.35, evaluate=False)
        assert not again.must_dispatch and again.row.id == first.row.id
        other = materializations.request_materialization(session, job_id, 1.0, evaluate=False)
        assert other.must_dispatch and other.row.artifact_name == "tuned@1.safetensors"
        row_id = first.row.id

    with sessions() as session:
        assert materializations.start_materialization(session, row_id) is not None
        assert materializations.start_materialization(session, row_id) is None  # taken already
        artifact = ArtifactRecord("tuned@0.35.safetensors", "jobs/x/materialized/a", 10, "f" * 64,
                                  "application/octet-stream")
        materializations.finish_materialization(session, row_id, artifact, clean_accuracy=None,
                                                robust_accuracy=None)
    with sessions() as session:
        assert jobs.get_artifact(session, job_id, "tuned@0.35.safetensors") is not None
        # Done without evaluation: asking with evaluation queues it again, keeping the row.
        evaluated = materializations.request_materialization(session, job_id, 0.35, evaluate=True)
        assert evaluated.must_dispatch and evaluated.row.id == row_id
        assert evaluated.row.status == "queued" and evaluated.row.evaluate
        materializations.fail_materialization(session, row_id, "boom")
    with sessions() as session:
        retried = materializations.request_materialization(session, job_id, 0.35, evaluate=False)
        assert retried.must_dispatch and retried.row.error_message is None
        assert [r.alpha for r in materializations.list_materializations(session, job_id)] == [
            0.35, 1.0]


def test_only_succeeded_jobs_and_known_rows(sessions: sessionmaker[Session],
                                            new_job: Callable[..., str]) -> None:
    queued = new_job()
    with sessions() as session:
        with pytest.raises(materializations.JobNotSucceeded):
            materializations.request_materialization(session, queued, 0.5, evaluate=False)
        with pytest.raises(materializations.MaterializationNotFound):
            materializations.get_materialization(session, queued, "nope")


def test_evaluation_asked_for_an_alpha_under_way_is_never_lost_nor_made_twice(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: asking with evaluation queued the row again whatever its state. Queued: a second
    # message for it. Running: a second worker made the same weights alongside the first, and
    # the first one's end (succeeded, without evaluation) made the second skip it: the
    # evaluation asked for was never made, and asking again found it "done".
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5,
                                                          evaluate=False).row.id
        joined = materializations.request_materialization(session, job_id, 0.5, evaluate=True)
    assert (joined.must_dispatch, joined.row.status, joined.row.evaluate) == (
        False, "queued", True)
    with sessions() as session:
        started = materializations.start_materialization(session, row_id)
        assert started is not None and started.evaluate  # the worker sees the evaluation
        materializations.fail_materialization(session, row_id, "boom")
        requeued = materializations.request_materialization(session, job_id, 0.5,
                                                            evaluate=False)
        assert requeued.must_dispatch and requeued.row.evaluate  # the flag stays asked
        other = materializations.request_materialization(session, job_id, 0.7, evaluate=False)
        assert materializations.start_materialization(session, other.row.id) is not None
    with sessions() as session, pytest.raises(materializations.MaterializationRunning,
                                              match="without evaluation"):
        materializations.request_materialization(session, job_id, 0.7, evaluate=True)
    with sessions() as session:
        running = materializations.request_materialization(session, job_id, 0.7, evaluate=False)
        assert (running.must_dispatch, running.row.status) == (False, "running")
