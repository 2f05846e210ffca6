"""A materialization whose worker is killed is made by another worker, not left running for ever.

The job is recorded as succeeded by hand (θ_FT a perturbed copy of the digits checkpoint), so the
only work is the materialization; the first worker pauses right after storing the weights
(``TEST_UPLOAD_PAUSE=record:...``), before recording them, and is killed there with SIGKILL. Before
the lease the row stayed ``running`` (the killed worker's message is redelivered only after the
broker's visibility timeout, and then skipped); now the second worker's recovery loop finds the
expired lease, queues the row again and makes it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.materializations import request_materialization
from persistence.queue import RiftCelery, enqueue_materialization
from persistence.storage import ObjectStore
from rift import checkpoints
from rift.interpolation import interpolate_weights
from tests.reliability.succeeded_jobs import materialization, perturbed, succeeded_job, wait_until
from tests.service_fixtures import WorkerProcess
from worker.materialize import materialization_key

pytestmark = pytest.mark.service

LEASE_S = "2"  # the killed worker's lease expires two seconds after its last renewal


def test_a_materialization_whose_worker_was_killed_is_made_by_another_worker(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
        quick_config: dict[str, Any], digits_checkpoint_path: Path, tmp_path: Path) -> None:
    theta_at = checkpoints.load_state_dict(digits_checkpoint_path)
    theta_ft = perturbed(theta_at)
    job_id = succeeded_job(sessions, store, submit, copy.deepcopy(quick_config), theta_ft,
                            tmp_path)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=False).row.id

    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S, TEST_UPLOAD_PAUSE="record:300")
    enqueue_materialization(sender, row_id)
    wait_until(lambda: "TEST_UPLOAD_PAUSE: pausing" in first.log(), "the first worker's pause",
          (first,))
    held = materialization(sessions, row_id)
    assert (held.status, held.attempts) == ("running", 1) and held.lease_owner is not None
    first.kill()  # SIGKILL: no cleanup, its message unacknowledged, its lease left to expire

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S, WORKER_RECOVERY_INTERVAL_SECONDS="0.5")
    wait_until(lambda: materialization(sessions, row_id).status not in ("queued", "running"),
          "the materialization's end", (first, second))
    row = materialization(sessions, row_id)
    assert (row.status, row.error_message, row.attempts, row.lease_owner) == (
        "succeeded", None, 2, None)
    assert f"materialization {row_id}: re-sending it (its lease expired" in second.log()
    with sessions() as session:
        artifact = jobs.get_artifact(session, job_id, "tuned@0.5.safetensors")
    assert artifact is not None
    assert artifact.storage_key == materialization_key(job_id, "tuned@0.5.safetensors")
    made = checkpoints.load_state_dict(store.download_to(artifact.storage_key,
                                                         tmp_path / "made.safetensors"))
    expected = interpolate_weights(theta_at, theta_ft, 0.5)
    assert made.keys() == expected.keys()
    assert all(torch.equal(made[name], expected[name]) for name in expected)
