"""Fixtures and helpers for tests that run jobs on real Celery workers without the API: the test's
database and object store, a Celery app that only sends (as the API does), a small digits job, a
submitter and a poller. A pytest plugin (``tests/conftest.py``); a folder's own fixture of the same
name (``sessions``, ``store``) takes precedence there."""

from __future__ import annotations

import copy
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.db import session_factory_from_settings
from persistence.models import Job
from persistence.queue import RiftCelery, create_celery_app, enqueue_stage
from persistence.records import create_checkpoint
from persistence.settings import Settings
from persistence.storage import ObjectStore
from tests.service_fixtures import WorkerProcess

JOB_TIMEOUT_S = 120.0

T = TypeVar("T")


@pytest.fixture
def sessions(service_settings: Settings) -> Iterator[sessionmaker[Session]]:
    factory = session_factory_from_settings(service_settings)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def store(service_settings: Settings) -> ObjectStore:
    return service_settings.build_object_store()


@pytest.fixture
def sender(service_settings: Settings) -> Iterator[RiftCelery]:
    """A Celery app that only sends messages (as the API does)."""
    app = create_celery_app(service_settings)
    yield app
    app.close()


@pytest.fixture
def quick_config(digits_job_config: dict[str, Any]) -> dict[str, Any]:
    """The digits job with a small budget per stage (seconds on two CPU cores); tests stretch the
    stage they need long."""
    config = copy.deepcopy(digits_job_config)
    config["attack"].update(steps=3, step_size=0.05)
    config["mrc"].update(steps=2, num_examples=64, batch_size=64)
    config["finetune"].update(epochs=3, lr_milestones=[2])
    config["interpolation"].update(alpha_step=0.25)
    config["evaluation"].update(max_examples=128)
    return config


@pytest.fixture
def submit(sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
           digits_checkpoint_path: Path) -> Callable[..., str]:
    """``submit(spec, send=True, time_limit_seconds=None) -> job id``: store the checkpoint,
    record it and the job, send the first stage's message."""
    from rift import checkpoints

    state = checkpoints.load_state_dict(digits_checkpoint_path)

    def submit_job(spec: dict[str, Any], *, send: bool = True,
                   time_limit_seconds: float | None = None) -> str:
        stored = store.put_file(f"checkpoints/{uuid.uuid4().hex}.safetensors",
                                digits_checkpoint_path)
        with sessions() as session:
            checkpoint = create_checkpoint(
                session, filename="digits.safetensors", size=stored.size, sha256=stored.sha256,
                format="safetensors", storage_key=stored.key, num_tensors=len(state),
                num_parameters=sum(t.numel() for t in state.values()))
            job, _ = jobs.create_job(session, spec=spec, checkpoint_id=checkpoint.id,
                                     time_limit_seconds=time_limit_seconds)
        if send:
            enqueue_stage(sender, job.id, "mrc")
        return job.id

    return submit_job


def wait_for(sessions: sessionmaker[Session], job_id: str, condition: Callable[[Job], bool],
             what: str, timeout: float = JOB_TIMEOUT_S,
             workers: tuple[WorkerProcess, ...] = ()) -> Job:
    """Poll the job until ``condition`` holds; fail with its state and the workers' logs."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            job = jobs.get_job(session, job_id)
        if condition(job):
            return job
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"job {job_id} never reached {what}: status={job.status} "
                        f"stage={job.stage} error={job.error_code} {job.error_message}\n{logs}")
        time.sleep(0.1)


def wait_while_progressing(sessions: sessionmaker[Session], job_id: str,
                           condition: Callable[[Job], bool], what: str, stall_timeout: float,
                           workers: tuple[WorkerProcess, ...] = ()) -> Job:
    """:func:`wait_for` with a deadline tied to the job's progress: fail only once its stage and
    progress stay the same for ``stall_timeout`` seconds. A loaded machine runs a long stage
    many times slower (the 7 s fine-tuning of the outage test took 32 s beside four CPU
    burners, and over 60 s in a full suite under a load of 20), and a fixed
    timeout failed it for being slow; a stage whose reports stopped reaching the database (a
    wedged reporter, a hung stage) still fails here, after ``stall_timeout``."""
    seen: tuple[str | None, float] | None = None
    deadline = time.monotonic() + stall_timeout
    while True:
        with sessions() as session:
            job = jobs.get_job(session, job_id)
        if condition(job):
            return job
        now = (job.stage, job.stage_progress)
        if now != seen:
            seen, deadline = now, time.monotonic() + stall_timeout
        elif time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"job {job_id} never reached {what}: no progress for {stall_timeout} s "
                        f"at status={job.status} stage={job.stage} "
                        f"progress={job.stage_progress} error={job.error_code} "
                        f"{job.error_message}\n{logs}")
        time.sleep(0.1)


def _stopped(pid: int) -> bool:
    """Every thread of process ``pid`` is stopped (state ``T``) or the process is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_bytes()
        except FileNotFoundError:
            continue
        if stat[stat.rfind(b")") + 2:].split()[0] not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


def signal_when(worker: WorkerProcess, sessions: sessionmaker[Session], job_id: str,
                condition: Callable[[Job], bool], what: str, sig: int = signal.SIGTERM,
                timeout: float = JOB_TIMEOUT_S) -> Job:
    """Send ``sig`` to a solo-pool ``worker`` once ``condition`` holds for its job, read while the
    worker is stopped (:func:`signal_when_stopped`). Returns the job as read."""
    read: list[Job] = []

    def holds() -> bool:
        with sessions() as session:
            read[:] = [jobs.get_job(session, job_id)]
        return condition(read[0])

    signal_when_stopped(worker, holds, f"job {job_id}: {what}", sig, timeout)
    return read[0]


def read_while_stopped(worker: WorkerProcess, read: Callable[[], T | None], what: str,
                       timeout: float = JOB_TIMEOUT_S) -> T:
    """Call ``read()`` with the solo-pool ``worker`` stopped (SIGSTOP), every 0.1 s of its
    running, until it returns something, and return that: the worker's work waits while it
    reads (the database, the API), so what it reads is still what is left to do when the worker
    continues (SIGCONT). A commit the worker sent just before it stopped may land during it."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            while not _stopped(worker.pid):
                time.sleep(0.001)
            found = read()
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"never reached {what}\n--- {worker.name}\n{worker.log()[-3000:]}")
        time.sleep(0.1)


def signal_when_stopped(worker: WorkerProcess, check: Callable[[], bool], what: str,
                        sig: int = signal.SIGTERM, timeout: float = JOB_TIMEOUT_S) -> None:
    """Send ``sig`` to a solo-pool ``worker`` once ``check()`` holds, running each check while
    the worker is stopped (SIGSTOP), so the signal meets the work as read: what was left then
    is still to do when the worker continues (SIGCONT) with the signal pending. Polling and
    then signalling let the work go on meanwhile (a poll and its queries, seconds under load),
    and a short last unit ended before the signal. The reads see what the worker committed; a
    commit it had sent just before it stopped may land after them, so ``check`` should leave
    more than one unit to do."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            while not _stopped(worker.pid):
                time.sleep(0.001)
            if check():
                os.kill(worker.pid, sig)  # pending until the SIGCONT below
                return
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail(f"never reached {what}\n--- {worker.name}\n{worker.log()[-3000:]}")
        time.sleep(0.1)
