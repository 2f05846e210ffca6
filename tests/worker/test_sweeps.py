"""A sweep (``finetune.candidates`` > 1, ``finetune.lr_grid``) run by real worker processes: one
task per (module, lr) candidate under its own lease (worker/candidates.py), the pick across all
curves, and a lost candidate re-run alone.

The HTTP view of a sweep (``/curves``, ``curves.json``) and the comparison with the library's
sequential sweep are in tests/api/test_sweep_jobs.py.
"""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, time_limits
from persistence.deletion import ACTIVE, delete_objects, job_objects
from persistence.models import Job, utcnow
from persistence.object_keys import (
    candidate_object_key,
    epoch_states_prefix,
    stage_object_key,
)
from persistence.stage_shards import list_candidates
from persistence.storage import LocalObjectStore, ObjectInfo, ObjectStore, StoreUnavailable
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import signal_when, wait_for
from worker.candidates import discard_other_candidates
from worker.stages import FINETUNED

pytestmark = pytest.mark.service


def events(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        return [(e.kind, e.payload) for e in jobs.list_events(session, job_id, limit=10_000)]


class _StoreFailingOn(LocalObjectStore):
    """A local store whose deletes of ``failing`` keys (or, with ``listing``, whose listings)
    fail as an unreachable store's would."""

    def __init__(self, root: Path, failing: Collection[str] = (), listing: bool = False) -> None:
        super().__init__(root)
        self.failing, self.listing = failing, listing

    def delete(self, key: str) -> None:
        if key in self.failing:
            raise StoreUnavailable(f"cannot delete {key}")
        super().delete(key)

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self.listing:
            raise StoreUnavailable("cannot list")
        return super().list_objects(prefix)


def test_the_pick_deletes_every_candidate_file_but_the_winners_and_failures_only_warn(
        sessions: sessionmaker[Session], submit: Callable[..., str],
        quick_config: dict[str, Any], tmp_path: Path) -> None:
    job_id = submit(quick_config, send=False)
    winner = candidate_object_key(job_id, 2, 1, 2, FINETUNED)  # candidate 1's second attempt
    others = {candidate_object_key(job_id, 2, 0, 1, FINETUNED),  # the loser
              candidate_object_key(job_id, 2, 1, 1, FINETUNED)}  # the winner's lost attempt
    untouched = {stage_object_key(job_id, "finetune", 2, "finetune.json"),
                 # An earlier stage attempt's: the janitor's (a stalled attempt).
                 candidate_object_key(job_id, 1, 0, 1, FINETUNED)}
    store = _StoreFailingOn(tmp_path / "objects", failing={min(others)})
    for key in {winner} | others | untouched:
        store.put_bytes(key, b"x")

    def stored() -> set[str]:
        return {item.key for item in store.list_objects(f"jobs/{job_id}/")}

    def warnings() -> list[str]:
        return [p["message"] for kind, p in events(sessions, job_id) if kind == "warning"]

    # A delete that fails is a warning event naming the file; the others are deleted.
    discard_other_candidates(store, sessions, job_id, 2, keep=winner)
    assert stored() == {winner, min(others)} | untouched
    assert len(warnings()) == 1 and min(others) in warnings()[0]
    # A store that cannot even list: a warning too, nothing raised.
    discard_other_candidates(_StoreFailingOn(store.root, listing=True), sessions, job_id, 2,
                             keep=winner)
    assert len(warnings()) == 2 and "StoreUnavailable" in warnings()[1]
    # Once the store answers again, only the winner's θ_FT is left of the candidates.
    discard_other_candidates(LocalObjectStore(store.root), sessions, job_id, 2, keep=winner)
    assert stored() == {winner} | untouched and len(warnings()) == 2


def test_a_lost_candidate_is_re_run_alone(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    spec = copy.deepcopy(quick_config)
    # Long enough to be killed mid-way; one worker first, so candidate 1 waits in the queue.
    spec["finetune"].update(epochs=30, lr_milestones=[20], candidates=2)
    first = start_worker()
    job_id = submit(spec)

    def tuning_candidate(job: Job) -> bool:
        log = events(sessions, job_id)
        return any(kind == "candidate_started" for kind, _ in log) and any(
            kind == "epoch" for kind, _ in log)

    # SIGKILL: its candidate's lease is left to expire. Sent with the worker stopped at the
    # read, so the candidate read as tuning is still running then.
    signal_when(first, sessions, job_id, tuning_candidate, "a candidate's fine-tuning",
                signal.SIGKILL)
    first.kill()  # reaps it
    with sessions() as session:
        running = [c.candidate for c in list_candidates(session, job_id) if c.status == "running"]
    assert len(running) == 1
    lost = running[0]

    second = start_worker()
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(first, second))
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        candidates = list_candidates(session, job_id)
        stages = {s.stage: s.attempts for s in jobs.get_job(session, job_id).stages}
    assert [c.status for c in candidates] == ["done", "done"]
    # Only the lost candidate ran again; the stages themselves were claimed once each.
    assert {c.candidate: c.attempts for c in candidates} == {lost: 2, 1 - lost: 1}
    assert stages == {"mrc": 1, "finetune": 1, "interpolate": 1}
    log = events(sessions, job_id)
    # Re-sent (maybe more than once while the second worker was busy: claims drop duplicates).
    assert {p["candidate"] for kind, p in log if kind == "candidate_recovered"} == {lost}
    started = [(p["candidate"], p["worker"]) for kind, p in log if kind == "candidate_started"]
    assert sorted(c for c, _ in started) == sorted([0, 1, lost])
    assert [p["done"] for kind, p in log if kind == "candidate_finished"] == [1, 2]
    # The job's result is the pick over both candidates.
    assert job.metrics is not None and job.metrics["sweep"]["candidates"] == 2
    winner = candidates[job.metrics["sweep"]["chosen"]]
    assert job.selected_module == winner.module


def test_cancelling_a_sweep_stops_its_candidates(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=400, lr_milestones=[300], candidates=2)
    worker = start_worker()
    job_id = submit(spec)
    wait_for(sessions, job_id, lambda j: any(kind == "epoch" for kind, _ in
                                             events(sessions, job_id)),
             "a candidate's fine-tuning", workers=(worker,))
    with sessions() as session:
        # The running candidate holds the job (no stage holds a lease, its candidate does):
        # it ends when the candidate stops, not at once (then it could be deleted under the
        # candidate about to store its θ_FT).
        assert jobs.request_cancel(session, job_id).status == "running"
    # The running candidate stops at its next batch; the waiting one is claimed and dropped.
    deadline = time.monotonic() + 60
    while not ("'cancelled'" in worker.log() and "'inactive'" in worker.log()):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    with sessions() as session:
        candidates = list_candidates(session, job_id)
        job = jobs.get_job(session, job_id)
    assert job.status == "cancelled"
    assert all(c.status != "done" and c.result is None for c in candidates)
    # The waiting one never ran: cancelled with the job (it read "pending" for good before).
    assert [c.status for c in candidates] == ["cancelled", "cancelled"]
    assert [c.attempts for c in candidates] == [1, 0]
    assert not any(kind == "candidate_finished" for kind, _ in events(sessions, job_id))


def test_a_sweep_failed_past_its_time_limit_ends_with_its_last_running_candidate(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore,
        quick_config: dict[str, Any]) -> None:
    """The recovery loop fails a job past its time limit while both candidates run on two
    workers. Before, the job was `failed` at once while they ran: a DELETE then was accepted and
    a candidate stored its θ_FT under the deleted job (an orphan the janitor removed 24 h later)
    and logged an error. Now the failure waits for the candidates to stop (asked as a cancel
    asks), the job is not deletable meanwhile, and nothing is left once it is deleted."""
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=400, lr_milestones=[300], candidates=2)
    workers = (start_worker(), start_worker())
    job_id = submit(spec)

    def both_tuning(job: Job) -> bool:
        with sessions() as session:
            running = [c for c in list_candidates(session, job_id) if c.status == "running"]
        return len(running) == 2 and any(kind == "epoch" for kind, _ in events(sessions, job_id))

    job = wait_for(sessions, job_id, both_tuning, "both candidates' fine-tuning", workers=workers)
    assert job.started_at is not None
    now = utcnow()
    ran = (now - job.started_at).total_seconds()
    with sessions() as session:
        # Past its limit by more than the grace, not yet by twice the grace (then it is forced).
        assert time_limits.fail_overdue_jobs(session, limit_seconds=ran / 4,
                                             grace_seconds=ran / 2, now=now) == [job_id]
        job = jobs.get_job(session, job_id)
    # The window: still running (a DELETE answers 409 job_active), asked to stop, error shown.
    assert (job.status, job.cancel_requested, job.error_code) == ("running", True, "timeout")
    assert job.status in ACTIVE
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=workers)
    assert (job.status, job.error_code, job.stage) == ("failed", "timeout", "finetune")
    # The last candidate to stop deletes the epoch states once it has ended the job (the first
    # to stop leaves them to it: the other one still stores its own).
    deadline = time.monotonic() + 30
    while list(store.list_objects(epoch_states_prefix(job_id))):
        assert time.monotonic() < deadline, [w.log()[-2000:] for w in workers]
        time.sleep(0.2)
    with sessions() as session:
        assert [c.status for c in list_candidates(session, job_id)] == ["cancelled", "cancelled"]
        # DELETE /v1/jobs/{id}: the rows, then every object under the job's prefix.
        session.execute(delete(Job).where(Job.id == job_id, Job.status.not_in(ACTIVE)))
        session.commit()
    delete_objects(store, job_objects(store, [job_id]))
    time.sleep(2)  # a candidate still running would store its θ_FT meanwhile
    assert job_objects(store, [job_id]) == []
    for worker in workers:
        assert " ERROR" not in worker.log() and "Traceback" not in worker.log(), worker.log()
