"""DELETE /v1/admin/projects/{name}: refused while the project has queued or running jobs (409)
unless forced, which cancels them; then every row and stored object of the project goes, its
keys answer 401 at once and the project is 404. Other projects keep everything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from persistence.models import (
    ApiKey,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobStage,
    Materialization,
    Project,
    WebhookEndpoint,
)
from persistence.storage import build_object_store
from tests.api.helpers import Api
from tests.reliability.conftest import create_job, tiny_npz, upload
from tests.reliability.test_ownership import HOOK_URL

pytestmark = [pytest.mark.service]


def _rows(api: Api) -> dict[str, int]:
    with api.sessions() as session:
        return {model.__tablename__: int(session.execute(
            select(func.count()).select_from(model)).scalar_one())
            for model in (Project, ApiKey, Checkpoint, Dataset, Job, JobStage, JobEvent,
                          Artifact, Materialization, WebhookEndpoint)}


def test_delete_a_project_with_everything_it_stores(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    admin = clients("ops", ("admin",))
    # Another project's things stay.
    kept = upload(api.client, "/v1/checkpoints", "kept.safetensors", small_cnn_file.read_bytes())
    before = _rows(api)

    doomed = clients("doomed")
    checkpoint = upload(doomed, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    dataset = upload(doomed, "/v1/datasets", "d.npz", tiny_npz())
    finished = create_job(doomed, checkpoint["id"]).json()
    queued = create_job(doomed, checkpoint["id"]).json()
    assert doomed.post("/v1/webhooks", json={"url": HOOK_URL}).status_code == 201
    store = build_object_store("local", local_root=api.settings.store_root)
    artifact_key = f"jobs/{finished['id']}/finetune/attempt-1/finetuned.safetensors"
    store.put_bytes(artifact_key, b"weights")
    with api.sessions() as session:  # the first job ended with θ_FT stored
        session.execute(update(Job).where(Job.id == finished["id"]).values(status="succeeded"))
        session.add(Artifact(job_id=finished["id"], name="finetuned.safetensors",
                             storage_key=artifact_key, size=7, sha256="0" * 64,
                             content_type="application/octet-stream"))
        session.commit()
    assert doomed.post(f"/v1/jobs/{finished['id']}/materialize",
                       json={"alpha": 0.5}).status_code == 202
    stored = set(api.stored_files())
    assert len(stored) == 4  # two checkpoints, the dataset, θ_FT

    # Refused while a job is queued; nothing changes.
    refused = admin.delete("/v1/admin/projects/doomed")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("project_has_active_jobs", "force")
    assert error["job_ids"] == [queued["id"]] and "doomed" in error["message"]
    assert doomed.get("/v1/usage").status_code == 200
    assert set(api.stored_files()) == stored
    # Only for admin keys, and the flag must be a boolean.
    assert doomed.delete("/v1/admin/projects/doomed?force=true").status_code == 403
    bad = admin.delete("/v1/admin/projects/doomed?force=perhaps")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "force"

    assert admin.delete("/v1/admin/projects/doomed?force=true").status_code == 204
    # Its keys stop at once; the project is gone for the admin routes.
    assert doomed.get("/v1/usage").status_code == 401
    assert doomed.get(f"/v1/jobs/{queued['id']}").status_code == 401
    for method, path in (("GET", "/v1/admin/projects/doomed/usage"),
                         ("DELETE", "/v1/admin/projects/doomed"),
                         ("GET", "/v1/admin/projects/doomed/keys")):
        answer = admin.request(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "project_not_found"
    # Every row and object of the project went; the other projects' stayed.
    assert _rows(api) == before
    assert [p.name for p in api.stored_files()] == [Path(kept["id"]).name + ".safetensors"]
    assert api.client.get(f"/v1/checkpoints/{kept['id']}").status_code == 200
    assert dataset["id"] not in str(api.stored_files())
    # The name is free again.
    assert admin.post("/v1/admin/projects", json={"name": "doomed"}).status_code == 201


def test_inserts_for_a_deleted_project_are_refused(
        api: Api, clients: Callable[..., httpx.Client]) -> None:
    # A request that authenticated just before its project was deleted reaches the project's
    # lock, which every insert of a project takes: it finds the project gone (ProjectNotFound,
    # answered 401 like the key now is) instead of a foreign-key error (a 500).
    from api.errors import from_persistence_error
    from persistence.jobs import create_job as insert_job
    from persistence.records import create_checkpoint
    from persistence.transactions import ProjectNotFound

    clients("doomed")
    with api.sessions() as session:
        project_id = session.execute(
            select(Project.id).where(Project.name == "doomed")).scalar_one()
    assert clients("ops", ("admin",)).delete("/v1/admin/projects/doomed").status_code == 204
    with api.sessions() as session:
        with pytest.raises(ProjectNotFound) as gone:
            create_checkpoint(session, filename="m", size=1, sha256="0" * 64,
                              format="safetensors", storage_key="checkpoints/x.safetensors",
                              num_tensors=1, num_parameters=1, project_id=project_id,
                              max_stored_bytes=10)
        with pytest.raises(ProjectNotFound):
            insert_job(session, spec={}, checkpoint_id="0" * 32, project_id=project_id,
                       max_active_jobs=5)
    answer = from_persistence_error(gone.value)
    assert answer is not None and (answer.status_code, answer.code) == (401, "unauthorized")
    assert api.count(Checkpoint) == 0 and api.count(Job) == 0


def test_weights_materialized_while_their_project_goes_are_not_kept(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A deletion does not wait for materializations (they cannot be cancelled): the worker
    # making one finds its row gone when it records the weights, and deletes them.
    from persistence.stages import ArtifactRecord
    from worker.materialize import MaterializedWeights, materialization_key
    from worker.runtime import WorkerResources
    from worker.tasks import execute_materialization

    doomed = clients("doomed")
    admin = clients("ops", ("admin",))
    checkpoint = upload(doomed, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    job = create_job(doomed, checkpoint["id"]).json()
    with api.sessions() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status="succeeded"))
        session.add(Artifact(job_id=job["id"], name="finetuned.safetensors",
                             storage_key=f"jobs/{job['id']}/finetune/attempt-1/f", size=7,
                             sha256="0" * 64, content_type="application/octet-stream"))
        session.commit()
    made = doomed.post(f"/v1/jobs/{job['id']}/materialize", json={"alpha": 0.5}).json()
    store = build_object_store("local", local_root=api.settings.store_root)

    def make_while_deleted(row: Materialization, *_: object, **__: object) -> MaterializedWeights:
        assert admin.delete("/v1/admin/projects/doomed").status_code == 204
        key = materialization_key(job["id"], row.artifact_name)
        store.put_bytes(key, b"weights")
        return MaterializedWeights(ArtifactRecord(row.artifact_name, key, 7, "0" * 64,
                                                  "application/octet-stream"), None)

    monkeypatch.setattr("worker.materialize.materialize_weights", make_while_deleted)
    outcome = execute_materialization(WorkerResources(api.settings), made["id"])
    assert outcome == "deleted"
    assert api.stored_files() == []


def test_inputs_another_projects_jobs_use_are_a_409_not_a_500(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    # Only rows given to projects after the fact (rift-admin projects adopt) can be shared so.
    lender = clients("lender")
    lent = upload(lender, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    own = upload(api.client, "/v1/checkpoints", "o.safetensors", small_cnn_file.read_bytes())
    job = create_job(api.client, own["id"]).json()
    api.client.post(f"/v1/jobs/{job['id']}/cancel")
    with api.sessions() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(checkpoint_id=lent["id"]))
        session.commit()
    admin = clients("ops", ("admin",))
    before = _rows(api)
    refused = admin.delete("/v1/admin/projects/lender")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"], error["job_ids"]) == ("project_referenced", "name",
                                                                 [job["id"]])
    assert _rows(api) == before
    assert lender.get(f"/v1/checkpoints/{lent['id']}").status_code == 200
