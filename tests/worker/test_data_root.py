"""A job naming a built-in dataset that reaches a worker whose DATA_ROOT lacks it (no worker was
live when it was accepted, or the workers changed since), on real Celery workers, Postgres and
Redis: the worker reports the datasets it holds in its registry row; the stage is handed back
(uncounted) when another live worker holds the dataset, and runs there; with none, the job fails
at once with ``dataset_unavailable`` naming the dataset and the DATA_ROOT, not a traceback."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.models import Job
from tests.service_fixtures import WorkerProcess
from tests.worker.test_tasks import registry_row, stage_rows
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file (ubyte data): 0, 0, type 0x08, the number of dimensions, each
    dimension as a big-endian int32, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_of_digits(data_root: Path) -> None:
    """MNIST's files under ``data_root``, holding scikit-learn's 8×8 digits (as the library
    scales them), so that the digits checkpoint reads them as it reads the digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images) * (255.0 / 16)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.uint8)
    raw = data_root / "MNIST" / "raw"
    for prefix, part in (("train", slice(0, 1400)), ("t10k", slice(1400, None))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[part])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[part])


@pytest.fixture
def mnist_config(quick_config: dict[str, Any]) -> dict[str, Any]:
    return {**quick_config, "dataset": {**quick_config["dataset"], "name": "mnist"}}


def events_of(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        return [(e.kind, e.payload) for e in jobs.list_events(session, job_id, limit=10_000)]


def test_with_no_other_worker_holding_it_the_job_fails_naming_dataset_and_data_root(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], mnist_config: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty-data"
    empty.mkdir()
    worker = start_worker(DATA_ROOT=str(empty))
    assert registry_row(sessions, worker).datasets == []
    job_id = submit(mnist_config)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert (job.status, job.error_code, job.error_field) == (
        "failed", "dataset_unavailable", "dataset.name")
    assert job.error_message == (
        f"dataset.name 'mnist' is not in this worker's DATA_ROOT {str(empty)!r} (missing "
        "MNIST/raw/train-images-idx3-ubyte, MNIST/raw/train-labels-idx1-ubyte, "
        "MNIST/raw/t10k-images-idx3-ubyte and 1 more): place its files in the workers' "
        "DATA_ROOT in torchvision's layout (MNIST/raw/{train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}), or upload "
        "the data (POST /v1/datasets); no other live worker holds it")
    # Failed at once, on its first attempt: no retry of an error that would come back.
    assert stage_rows(sessions, job_id)["mrc"].attempts == 1
    assert "Traceback" not in worker.log()


def test_the_stage_is_handed_back_to_a_live_worker_that_holds_the_dataset(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], mnist_config: dict[str, Any],
        quick_config: dict[str, Any], tmp_path: Path) -> None:
    held = tmp_path / "data"
    mnist_of_digits(held)
    holder = start_worker(DATA_ROOT=str(held))
    holder_row = registry_row(sessions, holder)
    assert holder_row.datasets == ["mnist"]
    # The holder busy with a long job (one task at a time): the next message can only reach the
    # other worker, which lacks the dataset.
    long_spec = copy.deepcopy(quick_config)
    long_spec["finetune"].update(epochs=400, lr_milestones=[300])
    busy_id = submit(long_spec)
    wait_for(sessions, busy_id, lambda j: j.status == "running", "running", workers=(holder,))
    empty = tmp_path / "empty-data"
    empty.mkdir()
    # A hand-back sends the message again after STAGE_RETRY_DELAY_SECONDS: time for the holder
    # to end its cancelled job and wait for messages.
    lacking = start_worker(DATA_ROOT=str(empty), STAGE_RETRY_DELAY_SECONDS="3")
    lacking_row = registry_row(sessions, lacking)
    job_id = submit(mnist_config)

    def handed_back(job: Job) -> bool:
        return any(kind == "stage_handed_back" for kind, _ in events_of(sessions, job_id))

    wait_for(sessions, job_id, handed_back, "a hand-back", workers=(holder, lacking))
    with sessions() as session:
        jobs.request_cancel(session, busy_id)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end",
                   workers=(holder, lacking))
    assert job.status == "succeeded", job.error_message
    log = events_of(sessions, job_id)
    handed = [p for kind, p in log if kind == "stage_handed_back"]
    assert handed and all((p["stage"], p["worker"], p["reason"]) == (
        "mrc", lacking_row.id, "dataset_missing") for p in handed)
    # Uncounted: the attempt that ran is the first, on the worker holding the data.
    started = [p for kind, p in log if kind == "stage_started"]
    assert [(p["stage"], p["worker"]) for p in started][-3:] == [
        ("mrc", holder_row.id), ("finetune", holder_row.id), ("interpolate", holder_row.id)]
    assert stage_rows(sessions, job_id)["mrc"].attempts == 1


def test_the_hand_backs_are_bounded_while_no_holder_takes_the_stage(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], mnist_config: dict[str, Any],
        quick_config: dict[str, Any], tmp_path: Path) -> None:
    held = tmp_path / "data"
    mnist_of_digits(held)
    holder = start_worker(DATA_ROOT=str(held))
    holder_row = registry_row(sessions, holder)
    long_spec = copy.deepcopy(quick_config)
    long_spec["finetune"].update(epochs=1000, lr_milestones=[900])
    busy_id = submit(long_spec)  # the holder busy for the whole test
    wait_for(sessions, busy_id, lambda j: j.status == "running", "running", workers=(holder,))
    empty = tmp_path / "empty-data"
    empty.mkdir()
    lacking = start_worker(DATA_ROOT=str(empty))
    registry_row(sessions, lacking)
    job_id = submit(mnist_config)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end",
                   workers=(holder, lacking))
    # MAX_STAGE_ATTEMPTS (3 in the tests) hand-backs per live worker of the queue (2).
    handed = [p for kind, p in events_of(sessions, job_id) if kind == "stage_handed_back"]
    assert len(handed) == 6, (job.error_code, job.error_message)
    assert (job.status, job.error_code) == ("failed", "dataset_unavailable")
    assert job.error_message is not None and job.error_message.endswith(
        "(POST /v1/datasets); handed back 6 times for it, and no worker holding it took the "
        "stage")
    assert stage_rows(sessions, job_id)["mrc"].attempts == 1
    with sessions() as session:
        jobs.request_cancel(session, busy_id)
        assert jobs.get_job(session, busy_id).status == "running"  # never interrupted by it
    assert holder_row.datasets == ["mnist"]
