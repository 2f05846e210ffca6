"""DELETE of checkpoints, datasets and jobs: refused while a queued or running job needs the
resource (409), otherwise rows and stored objects go, and the stored-bytes count with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from persistence.models import Artifact, Checkpoint, Dataset, Job, JobEvent, JobStage
from persistence.records import recount_stored_bytes, stored_bytes
from persistence.storage import build_object_store
from tests.api.helpers import Api
from tests.reliability.conftest import create_job, tiny_npz, upload

pytestmark = [pytest.mark.service]


def _used(api: Api) -> int:
    with api.sessions() as session:
        return stored_bytes(session, api.project_id)


def test_delete_job_then_its_inputs(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    dataset = upload(api.client, "/v1/datasets", "d.npz", tiny_npz())
    config = {"architecture": {"name": "small_cnn", "num_classes": 10},
              "dataset": {"name": "npz"}, "device": "cpu"}
    job = create_job(api.client, checkpoint["id"], dataset_id=dataset["id"], config=config).json()
    # Queued, the job holds a reservation for its θ_FT and tuned weights (checkpoint-sized).
    assert _used(api) == 3 * checkpoint["size"] + dataset["size"]

    # In use by a queued job.
    for path in (f"/v1/checkpoints/{checkpoint['id']}", f"/v1/datasets/{dataset['id']}"):
        response = api.client.delete(path)
        assert response.status_code == 409 and response.json()["error"]["code"] == "in_use"
        assert response.json()["error"]["job_ids"] == [job["id"]]
        assert response.json()["error"]["field"] == path.split("/")[2][:-1] + "_id"
    # A running job: cancel first.
    with api.sessions() as session:  # as a worker's claim would leave it
        session.execute(update(Job).where(Job.id == job["id"]).values(status="running"))
        session.commit()
    refused = api.client.delete(f"/v1/jobs/{job['id']}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "job_active"
    assert refused.json()["error"]["field"] == "job_id"
    assert "cancel" in refused.json()["error"]["message"]
    assert refused.json()["error"]["cancel_requested"] is False
    with api.sessions() as session:  # a part failed; its running siblings are stopping
        session.execute(update(Job).where(Job.id == job["id"]).values(
            cancel_requested=True, error_code="numerical_error", error_message="loss is NaN"))
        session.commit()
    stopping = api.client.delete(f"/v1/jobs/{job['id']}")
    assert stopping.status_code == 409 and stopping.json()["error"]["code"] == "job_active"
    assert stopping.json()["error"]["cancel_requested"] is True
    message = stopping.json()["error"]["message"]
    assert "numerical_error" in message and "cancel it first" not in message
    with api.sessions() as session:  # the job ended; it produced an artifact
        session.execute(update(Job).where(Job.id == job["id"]).values(status="cancelled"))
        session.add(Artifact(job_id=job["id"], name="tuned.safetensors",
                             storage_key=f"jobs/{job['id']}/tuned.safetensors", size=7,
                             sha256="0" * 64, content_type="application/octet-stream"))
        session.commit()
        # Rows written by hand, not by the worker's writers: the recount brings the ledger the
        # quota reads to them, as those writers would have.
        recount_stored_bytes(session, api.project_id, repair=True)
    store = build_object_store("local", local_root=api.settings.store_root)
    store.put_bytes(f"jobs/{job['id']}/tuned.safetensors", b"weights")
    # A stage's record for later stages: an object of the job, not an artifact.
    store.put_bytes(f"jobs/{job['id']}/mrc/attempt-1/mrc.json", b"{}")
    assert _used(api) == checkpoint["size"] + dataset["size"] + 7

    # Finished jobs still name their inputs: delete them first.
    response = api.client.delete(f"/v1/checkpoints/{checkpoint['id']}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "referenced"

    assert api.client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.client.get(f"/v1/jobs/{job['id']}").status_code == 404
    for model in (Job, JobStage, JobEvent, Artifact):
        assert api.count(model) == 0, model
    assert not store.exists(f"jobs/{job['id']}/tuned.safetensors")
    assert not store.exists(f"jobs/{job['id']}/mrc/attempt-1/mrc.json")
    assert api.client.delete(f"/v1/jobs/{job['id']}").status_code == 404

    assert api.client.delete(f"/v1/checkpoints/{checkpoint['id']}").status_code == 204
    assert api.client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert api.count(Checkpoint) == 0 and api.count(Dataset) == 0
    assert api.stored_files() == []
    assert _used(api) == 0
