"""A worker given SIGTERM mid-stage (``docker stop``, a scale-in, a spot machine reclaimed) hands
the stage back at its next batch and exits within seconds; another worker runs it at once.

Before, Celery's warm shutdown waited for the whole stage (minutes to hours), Docker killed the
worker after its grace (10 s), and the stage waited for its lease to expire
(``WORKER_LEASE_SECONDS``, here 60 s so that the lease path cannot explain what the tests see).
Real worker processes (solo pool, as the tests start them, and prefork, as the image runs them),
Postgres and Redis.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.materializations import request_materialization
from persistence.models import Job, JobStage, Worker
from persistence.queue import RiftCelery, enqueue_materialization
from persistence.stage_shards import list_candidates
from persistence.storage import ObjectStore
from rift import checkpoints
from tests.reliability.succeeded_jobs import materialization, perturbed, succeeded_job
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import signal_when, signal_when_stopped, wait_for
from worker.materialize import materialization_key
from worker.stages import FINETUNED, TUNED

pytestmark = pytest.mark.service

LEASE_S = "60"  # far longer than any wait below
EXIT_S = 10.0  # Docker's default grace
EPOCHS = 150  # about 1 s per 60 on the shared 2-core machine


def stages_of(sessions: sessionmaker[Session], job_id: str) -> dict[str, JobStage]:
    with sessions() as session:
        return {s.stage: s for s in jobs.get_job(session, job_id).stages}


def events(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        return [(e.kind, e.payload) for e in jobs.list_events(session, job_id, limit=10_000)]


def fine_tuning(sessions: sessionmaker[Session], job_id: str) -> Callable[[Job], bool]:
    return lambda job: job.stage == "finetune" and any(
        kind == "epoch" for kind, _ in events(sessions, job_id))


def terminate(worker: WorkerProcess) -> float:
    """SIGTERM (a warm shutdown); returns the seconds the process took to exit."""
    sent = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    return exit_after(worker, sent)


def exit_after(worker: WorkerProcess, sent: float) -> float:
    """Wait for the worker sent SIGTERM at ``sent`` (``time.monotonic``) to exit; returns the
    seconds since."""
    try:
        worker.process.wait(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within {EXIT_S} s of SIGTERM:\n"
                    f"{worker.log()[-3000:]}")
    return time.monotonic() - sent


def timeless(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The job's metrics without the times measured (those differ from run to run)."""
    assert metrics
    return {key: value for key, value in metrics.items() if not key.endswith("_seconds")}


def tuned_weights(sessions: sessionmaker[Session], store: ObjectStore, job_id: str,
                  folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """θ_FT and θ_α of the job (their files' metadata name the job, so digests differ)."""
    with sessions() as session:
        keys = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    return {name: checkpoints.load_state_dict(store.download_to(keys[name], folder / name))
            for name in (FINETUNED, TUNED)}

def assert_same_results(sessions: sessionmaker[Session], store: ObjectStore, job: Any,
                        other: Any, ids: tuple[str, str], scratch: Path) -> None:
    """``job`` (interrupted) and ``other`` (the same spec run straight through) chose the same
    module and α, report the same metrics (times aside), and stored the same tuned weights,
    tensor for tensor. ``ids``: their job ids, in that order."""
    assert (job.selected_module, job.chosen_alpha) == (other.selected_module,
                                                       other.chosen_alpha)
    assert timeless(job.metrics) == timeless(other.metrics)
    interrupted = tuned_weights(sessions, store, ids[0], scratch / "interrupted")
    for name, tensors in tuned_weights(sessions, store, ids[1], scratch / "other").items():
        assert interrupted[name].keys() == tensors.keys()
        assert all(torch.equal(interrupted[name][key], value) for key, value in tensors.items())


def test_a_stage_is_handed_back_on_sigterm_and_finished_by_another_worker_alike(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        redis_broker_url: str, celery_queue: str, tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=EPOCHS, lr_milestones=[EPOCHS // 2])  # seconds: stopped mid-way
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    # Read and sent with the worker stopped: the fine-tuning read as running is stopped mid-way.
    signal_when(first, sessions, job_id, fine_tuning(sessions, job_id), "fine-tuning")
    took = exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    assert took < EXIT_S
    # Handed back, not failed nor cancelled: the stage waits, its claim not counted, with its
    # message already in the queue (not left to the lease's expiry and the recovery loop).
    with sessions() as session:
        job = jobs.get_job(session, job_id)
    assert (job.status, job.stage, job.error_code) == ("running", "finetune", None)
    assert "shutting down" in (job.progress_message or "")
    finetune = stages_of(sessions, job_id)["finetune"]
    assert (finetune.status, finetune.attempts, finetune.lease_owner) == ("pending", 0, None)
    assert redis.Redis.from_url(redis_broker_url).llen(celery_queue) == 1
    handed = [p for kind, p in events(sessions, job_id) if kind == "stage_handed_back"]
    assert len(handed) == 1
    assert (handed[0]["stage"], handed[0]["attempt"], handed[0]["reason"]) == (
        "finetune", 1, "worker_shutdown")
    epochs_then = sum(kind == "epoch" for kind, _ in events(sessions, job_id))
    assert 0 < epochs_then < EPOCHS  # stopped mid-stage, not at its end
    # A warm shutdown deletes the worker's registry row: it is not counted as live.
    with sessions() as session:
        assert [w.id for w in session.execute(select(Worker)).scalars()] == []

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    resumed = time.monotonic()
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(second,))
    assert job.status == "succeeded", job.error_message
    assert time.monotonic() - resumed < float(LEASE_S)
    log = events(sessions, job_id)
    started = [(p["stage"], p["attempt"], p["worker"]) for kind, p in log
               if kind == "stage_started"]
    assert [(stage, attempt) for stage, attempt, _ in started] == [
        ("mrc", 1), ("finetune", 1), ("finetune", 1), ("interpolate", 1)]
    assert started[1][2] == handed[0]["worker"] != started[2][2]
    assert {s.stage: s.attempts for s in stages_of(sessions, job_id).values()} == {
        "mrc": 1, "finetune": 1, "interpolate": 1}
    assert job.attempts == 3
    with sessions() as session:
        assert [e.epoch for e in jobs.get_epoch_metrics(session, job_id)] == list(range(1, EPOCHS + 1))

    # The same job run without interruption on the second worker gives the same results.
    other_id = submit(spec)
    other = wait_for(sessions, other_id, lambda j: j.is_finished, "the end", workers=(second,))
    assert other.status == "succeeded", other.error_message
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)


def test_a_prefork_worker_hands_its_stage_back_and_its_children_leave_the_registry(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any],
        redis_broker_url: str, celery_queue: str) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[900])  # minutes
    worker = start_worker(pool="prefork", WORKER_LEASE_SECONDS=LEASE_S,
                          WORKER_HEARTBEAT_SECONDS="1")
    job_id = submit(spec)
    wait_for(sessions, job_id, fine_tuning(sessions, job_id), "fine-tuning", workers=(worker,))
    with sessions() as session:
        registered = [w.id for w in session.execute(select(Worker)).scalars()]
    assert len(registered) == 1 and registered[0].split(":")[1] != str(worker.pid)  # the child

    terminate(worker)
    assert worker.process.returncode == 0, worker.log()[-3000:]
    finetune = stages_of(sessions, job_id)["finetune"]
    assert (finetune.status, finetune.attempts) == ("pending", 0), worker.log()[-3000:]
    assert [p["worker"] for kind, p in events(sessions, job_id)
            if kind == "stage_handed_back"] == registered
    assert redis.Redis.from_url(redis_broker_url).llen(celery_queue) == 1
    with sessions() as session:
        assert list(session.execute(select(Worker)).scalars()) == []


def test_a_sweep_candidate_is_handed_back_on_sigterm(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any],
        redis_broker_url: str, celery_queue: str) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[900], candidates=2)  # minutes each
    worker = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    wait_for(sessions, job_id, lambda job: any(kind == "epoch" for kind, _ in
                                               events(sessions, job_id)),
             "a candidate's fine-tuning", workers=(worker,))

    terminate(worker)
    assert worker.process.returncode == 0, worker.log()[-3000:]
    with sessions() as session:
        candidates = list_candidates(session, job_id)
        job = jobs.get_job(session, job_id)
    assert (job.status, job.error_code) == ("running", None)
    # The one it ran is waiting again, uncounted; the other never started.
    assert [(c.status, c.attempts, c.lease_owner) for c in candidates] == [
        ("pending", 0, None), ("pending", 0, None)]
    handed = [p for kind, p in events(sessions, job_id) if kind == "stage_handed_back"]
    assert [(p["stage"], p["candidate"], p["attempt"]) for p in handed] == [("finetune", 0, 1)]
    # Both messages wait: the one sent again and the other candidate's, never taken.
    assert redis.Redis.from_url(redis_broker_url).llen(celery_queue) == 2


def test_a_killed_prefork_childs_stage_is_taken_over_without_waiting_for_its_lease(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    # The OOM-killer's SIGKILL of the pool child running a stage: the parent lives on.
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[900])  # minutes
    worker = start_worker(pool="prefork", WORKER_LEASE_SECONDS=LEASE_S,
                          WORKER_HEARTBEAT_SECONDS="1")
    job_id = submit(spec)
    wait_for(sessions, job_id, fine_tuning(sessions, job_id), "fine-tuning", workers=(worker,))
    with sessions() as session:
        (dead,) = [w.id for w in session.execute(select(Worker)).scalars()]
    os.kill(int(dead.split(":")[1]), signal.SIGKILL)

    def taken_over(job: Job) -> bool:
        return any(kind == "stage_started" and p["stage"] == "finetune" and p["attempt"] == 2
                   for kind, p in events(sessions, job_id))

    # Well within the lease (60 s), which the takeover used to wait for.
    wait_for(sessions, job_id, taken_over, "the stage's takeover", timeout=20,
             workers=(worker,))
    log = events(sessions, job_id)
    assert ("stage_recovered", {"stage": "finetune", "reason": "worker_process_lost"}) in log
    (successor,) = [p["worker"] for kind, p in log
                    if kind == "stage_started" and p["attempt"] == 2]
    assert successor != dead
    with sessions() as session:  # the dead child no longer counts as a live worker
        assert session.get(Worker, dead) is None


def test_a_materialization_is_handed_back_on_sigterm(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
        quick_config: dict[str, Any], digits_checkpoint_path: Path, tmp_path: Path,
        redis_broker_url: str, celery_queue: str) -> None:
    spec = copy.deepcopy(quick_config)
    spec["attack"].update(steps=400)  # the evaluation's attack: seconds
    theta_ft = perturbed(checkpoints.load_state_dict(digits_checkpoint_path))
    job_id = succeeded_job(sessions, store, submit, spec, theta_ft, tmp_path)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=True).row.id
    worker = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    enqueue_materialization(sender, row_id)
    # Into the evaluation (its weights stored before it), read and sent with the worker stopped:
    # after a fixed 1 s the evaluation's end could come first on a fast machine.
    key = materialization_key(job_id, materialization(sessions, row_id).artifact_name)
    signal_when_stopped(worker, lambda: materialization(sessions, row_id).status == "running"
                        and store.exists(key), "the materialization's evaluation")
    exit_after(worker, time.monotonic())
    assert worker.process.returncode == 0, worker.log()[-3000:]
    row = materialization(sessions, row_id)
    assert (row.status, row.attempts, row.lease_owner) == ("queued", 0, None), \
        worker.log()[-3000:]
    assert redis.Redis.from_url(redis_broker_url).llen(celery_queue) == 1
