"""An MRC shard that fails on every attempt (a module the model's own code refuses to perturb), on
a real worker whose PYTHONPATH holds the architecture (an entry point): the job fails in the MRC
stage with a message naming the module, no merge is recorded, and no other shard runs on."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.queue import RiftCelery, enqueue_stage
from persistence.records import create_checkpoint
from persistence.stage_shards import list_shards
from persistence.storage import ObjectStore
from rift import checkpoints
from tests.entry_point_dist import write_entry_point_dist
from tests.module_factories import BadModuleNet
from tests.service_fixtures import PROJECT_ROOT, WorkerProcess
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service


def _bad_module_job(sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
                    config: dict[str, Any], tmp_path: Path) -> str:
    """A job on :class:`BadModuleNet` (its ``bad`` module fails MRC on every attempt), sent."""
    torch.manual_seed(0)
    path = tmp_path / "bad.safetensors"
    checkpoints.save_safetensors(path, BadModuleNet().state_dict())
    stored = store.put_file(f"checkpoints/{uuid.uuid4().hex}.safetensors", path)
    config = copy.deepcopy(config)
    config["architecture"] = {"name": "bad_module_net", "num_classes": 10}
    config["preflight"] = {"examples": 0}  # untrained weights: near chance by design
    with sessions() as session:
        checkpoint = create_checkpoint(
            session, filename="bad.safetensors", size=stored.size, sha256=stored.sha256,
            format="safetensors", storage_key=stored.key, num_tensors=7, num_parameters=1)
        job, _ = jobs.create_job(session, spec=config, checkpoint_id=checkpoint.id)
    enqueue_stage(sender, job.id, "mrc")
    return job.id


def test_a_failing_shard_fails_the_job_once_its_running_sibling_has_stopped(
        start_worker: Callable[..., WorkerProcess], sessions: sessionmaker[Session],
        store: ObjectStore, sender: RiftCelery, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    """Two workers: one shard fails on ``bad`` (three quick attempts) while the other scores a
    module with long ascents. Before, the job was `failed` as the failing shard gave up, its
    sibling still running (a DELETE then was accepted and the sibling wrote under the deleted
    job); now the failure is pending (``failure_pending``, the job `running`), the sibling is
    asked to stop as for a cancellation, and the job fails with the shard's error once it has."""
    plugin = write_entry_point_dist(tmp_path / "site")
    workers = tuple(start_worker(PYTHONPATH=f"{plugin}:{PROJECT_ROOT}") for _ in range(2))
    config = copy.deepcopy(quick_config)
    config["mrc"].update(shards=2, steps=1000, num_examples=256, batch_size=32)
    job_id = _bad_module_job(sessions, store, sender, config, tmp_path)

    ended = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=workers)
    assert (ended.status, ended.stage, ended.error_code) == (
        "failed", "mrc", "stage_failed_repeatedly"), ended.error_message
    assert "while scoring MRC module(s) bad" in (ended.error_message or "")
    with sessions() as session:
        parts = list_shards(session, job_id)
        log = [(e.kind, e.payload) for e in jobs.list_events(session, job_id, limit=10_000)]
    failing = next(s for s in parts if "bad" in s.modules)
    kinds = [kind for kind, _ in log]
    pending = next(p for kind, p in log if kind == "failure_pending")
    assert (pending["code"], pending["stage"]) == ("stage_failed_repeatedly", "mrc")
    assert kinds.index("failure_pending") < kinds.index("job_failed")
    assert kinds.count("job_failed") == 1 and "job_cancelled" not in kinds
    # The failing shard is marked failed; its sibling stopped (cancelled) before the job ended.
    assert sorted((s.shard == failing.shard, s.status) for s in parts) == [
        (False, "cancelled"), (True, "failed")], [(s.status, s.last_error) for s in parts]
    assert ended.error_message == failing.last_error
    # Deleted by the last part to stop, just after the commit that ended the job.
    wait_for(sessions, job_id, lambda _: not store.exists(failing.inputs_key), "the set deleted",
             timeout=30, workers=workers)
    for worker in workers:
        assert "LeaseLost" not in worker.log() and "lease_lost" not in worker.log()


@pytest.mark.parametrize("shards", [3, 1])
def test_a_shard_failing_on_one_module_fails_the_job_naming_that_module(
        shards: int, start_worker: Callable[..., WorkerProcess], sessions: sessionmaker[Session],
        store: ObjectStore, sender: RiftCelery, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    """Before, the job's message was "MRC shard 1 failed 3 times; last error: RuntimeError: the
    weight differs from the checkpoint's": which of the shard's modules, it did not say (nor did
    a one-task stage's, ``shards`` 1)."""
    plugin = write_entry_point_dist(tmp_path / "site")
    worker = start_worker(PYTHONPATH=f"{plugin}:{PROJECT_ROOT}")
    torch.manual_seed(0)
    path = tmp_path / "bad.safetensors"
    checkpoints.save_safetensors(path, BadModuleNet().state_dict())
    stored = store.put_file(f"checkpoints/{uuid.uuid4().hex}.safetensors", path)
    config = copy.deepcopy(quick_config)
    config["architecture"] = {"name": "bad_module_net", "num_classes": 10}
    config["preflight"] = {"examples": 0}  # untrained weights: near chance by design
    config["mrc"]["shards"] = shards
    with sessions() as session:
        checkpoint = create_checkpoint(
            session, filename="bad.safetensors", size=stored.size, sha256=stored.sha256,
            format="safetensors", storage_key=stored.key, num_tensors=7, num_parameters=1)
        job, _ = jobs.create_job(session, spec=config, checkpoint_id=checkpoint.id)
    enqueue_stage(sender, job.id, "mrc")

    ended = wait_for(sessions, job.id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert (ended.status, ended.stage, ended.error_code) == (
        "failed", "mrc", "stage_failed_repeatedly"), ended.error_message
    assert "while scoring MRC module(s) bad" in (ended.error_message or "")
    assert "the weight differs from the checkpoint's" in (ended.error_message or "")
    if shards == 1:
        assert ended.error_message.startswith("stage 'mrc' failed 3 times")
        return
    with sessions() as session:
        parts = list_shards(session, job.id)
        log = [(e.kind, e.payload) for e in jobs.list_events(session, job.id, limit=10_000)]
    failing = next(s for s in parts if s.modules == ["bad"])
    assert ended.error_message.startswith(f"MRC shard {failing.shard} failed 3 times")
    kinds = [kind for kind, _ in log]
    assert "stage_finished" not in kinds  # no merge
    # Nothing ran after the failure: no shard started, and none but the failing one is left
    # running.
    assert "shard_started" not in kinds[kinds.index("job_failed"):]
    assert [s.shard for s in parts if s.status == "running"] in ([], [failing.shard])
    # The shared set goes with the job: deleted by the failing part just after the commit that
    # ended the job (CI once read it in between).
    wait_for(sessions, job.id, lambda _: not store.exists(failing.inputs_key), "the set deleted",
             timeout=30, workers=(worker,))
