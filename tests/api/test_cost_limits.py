"""The per-job cost limits (``max_job_cost``, ``max_job_gflop``) against the data a job really
runs on and the model it runs, on SQLite and Postgres: an uploaded npz's test split counts in the
estimate, a larger model's example-passes count for more compute, and a refusal leaves no job, no
queued message and no stored object behind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from persistence.cost import estimate_cost
from persistence.models import Checkpoint, Project
from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint, varied_images

pytestmark = [pytest.mark.service]


def _npz(train: int, test: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((train, 8, 8, 1)), y=np.arange(train) % 10,
             x_test=varied_images((test, 8, 8, 1), seed=1), y_test=np.arange(test) % 10)
    return buffer.getvalue()


def test_an_npz_test_split_larger_than_its_training_split_counts_in_the_cost(
        api: Api, small_cnn_file: Path) -> None:
    # Before: the row recorded x's 20 examples only and the estimate took them as the test
    # split too, so 2,000 test examples attacked at every α were not counted: a job many times
    # the limit passed it (8 times here).
    checkpoint = upload_checkpoint(api, small_cnn_file)
    uploaded = api.client.post("/v1/datasets", files={"file": ("d.npz", _npz(20, 2000))})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    config = digits_config(dataset={"name": "npz"})
    body = {"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "config": config}

    def estimate(train: int, test: int) -> int:
        return estimate_cost({**config, "dataset": {"name": "npz"}},
                             num_modules=checkpoint["num_tensors"],
                             dataset_examples=(train, test)).total

    at_least = estimate(20, 2000)
    train_only = estimate(20, 20)
    assert at_least > 8 * train_only
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id)
                        .values(max_job_cost=train_only))
        session.commit()
    objects = sorted(api.stored_files())

    refused = api.client.post("/v1/jobs", json=body)
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert (error["code"], error["field"], error["limit"]) == (
        "cost_limit_exceeded", "max_job_cost", train_only)
    assert error["estimate"]["total"] >= at_least
    assert str(train_only) in error["message"]
    assert (api.count_jobs(), api.dispatcher.enqueued) == (0, [])
    assert sorted(api.stored_files()) == objects
    assert dataset["num_examples"] == 2020  # the count that bounds each split

    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id)
                        .values(max_job_cost=None))
        session.commit()
    created = api.client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["cost_estimate"] == error["estimate"]["total"]


def test_the_largest_spec_is_estimated_whole_and_stored_under_the_largest_limit(
        api: Api, small_cnn_file: Path) -> None:
    # Every field at the largest value the service takes, a 16-candidate sweep, 256 shards and
    # both selection splits chosen for the most work: the estimate is one exact integer, over
    # the default limit, and stored unchanged (BIGINT) under the largest limit an admin can set.
    checkpoint = upload_checkpoint(api, small_cnn_file)
    config = digits_config(
        attack={"steps": 200}, evaluation={"batch_size": 8},
        mrc={"steps": 200, "num_examples": 100_000, "batch_size": 8, "shards": 256},
        finetune={"epochs": 200, "batch_size": 8, "candidates": 16, "selection_split": "test"},
        interpolation={"alpha_step": 0.01, "selection_split": "validation"},
        dataset={"name": "digits", "validation_fraction": 0.49})
    body = {"checkpoint_id": checkpoint["id"], "config": config}
    refused = api.client.post("/v1/jobs", json=body)
    assert refused.status_code == 422, refused.text
    estimate = error_of(refused)["estimate"]
    assert error_of(refused)["code"] == "cost_limit_exceeded"
    assert all(isinstance(stage["total"], int) and stage["total"] > 0
               for stage in estimate["stages"].values())
    assert estimate["total"] == sum(stage["total"] for stage in estimate["stages"].values())
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id)
                        .values(max_job_cost=2**63 - 1))
        session.commit()
    created = api.client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = api.client.get(f"/v1/jobs/{created.json()['id']}").json()
    assert job["cost_estimate"] == estimate["total"]
    assert job["cost_estimate"] == estimate_cost(
        job["config"], num_modules=checkpoint["num_tensors"]).total


@pytest.mark.parametrize("limit", ["max_job_cost", "max_job_gflop", "max_active_jobs"])
def test_a_job_refused_for_a_limit_with_its_checkpoint_attached_stores_nothing(
        api: Api, small_cnn_file: Path, limit: str) -> None:
    # The checkpoint sent with the job (multipart) is checked, then refused with the job:
    # no checkpoint row, no stored object, no scratch file, no queued message.
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**{limit: 1}))
        session.commit()
    if limit == "max_active_jobs":
        kept = upload_checkpoint(api, small_cnn_file)["id"]
        assert api.client.post("/v1/jobs", json={"checkpoint_id": kept,
                                                 "config": digits_config()}).status_code == 201
    before = (api.count(Checkpoint), api.stored_files(), api.dispatcher.enqueued[:])
    refused = api.client.post(
        "/v1/jobs", files={"checkpoint": ("m.safetensors", small_cnn_file.read_bytes())},
        data={"spec": json.dumps({"config": digits_config()})})
    assert refused.status_code == (429 if limit == "max_active_jobs" else 422), refused.text
    error = error_of(refused)
    assert (error["field"], error["limit"]) == (limit, 1)
    assert (api.count(Checkpoint), api.stored_files(), api.dispatcher.enqueued) == before
    assert api.scratch_files() == []


def _forward_flops(architecture: dict[str, object]) -> int:
    """torch's count of one real digits example (1×8×8) through the real model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rift.config import ArchitectureSpec
    from rift.models import build_model

    model = build_model(ArchitectureSpec.model_validate(architecture), in_channels=1,
                        image_size=8).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 8, 8))
    return int(counter.get_total_flops())


def test_a_larger_model_is_refused_under_a_compute_limit_a_smaller_one_passes(
        api: Api, small_cnn_file: Path, tmp_path: Path) -> None:
    """Before: the estimate counted example-passes only, so a model of twice small_cnn's FLOPs
    (an mlp of two 512-wide layers) cost the same and nothing bounded its compute; now its
    job is refused for the GFLOP its example-passes cost, with the same example-passes."""
    from rift.checkpoints import save_safetensors
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    mlp = {"name": "mlp", "num_classes": 10, "hidden": [512, 512]}
    save_safetensors(tmp_path / "mlp.safetensors", build_model(
        ArchitectureSpec.model_validate(mlp), in_channels=1, image_size=8).state_dict())
    small = upload_checkpoint(api, small_cnn_file)
    large = upload_checkpoint(api, tmp_path / "mlp.safetensors")
    # One module each, so that both jobs make the same example-passes.
    small_body = {"checkpoint_id": small["id"], "config": digits_config(mrc={
        "steps": 1, "num_examples": 64, "modules": ["conv1"]})}
    large_body = {"checkpoint_id": large["id"], "config": digits_config(
        architecture=mlp, mrc={"steps": 1, "num_examples": 64, "modules": ["layers.0"]})}

    created = api.client.post("/v1/jobs", json=small_body)
    assert created.status_code == 201, created.text
    job = api.client.get(f"/v1/jobs/{created.json()['id']}").json()
    small_flops = _forward_flops(small_body["config"]["architecture"])
    expected = estimate_cost(job["config"], num_modules=small["num_tensors"],
                             example_flops=small_flops)
    assert job["cost_estimate"] == expected.total
    assert job["cost_gflop"] == pytest.approx(expected.gflop)
    assert created.json()["cost_gflop"] == job["cost_gflop"]

    limit = int(job["cost_gflop"]) + 1
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id)
                        .values(max_job_gflop=limit))
        session.commit()
    assert api.client.post("/v1/jobs", json=small_body).status_code == 201  # under it
    refused = api.client.post("/v1/jobs", json=large_body)
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert (error["code"], error["field"], error["limit"]) == (
        "cost_limit_exceeded", "max_job_gflop", limit)
    estimate = error["estimate"]
    assert estimate["total"] == job["cost_estimate"]  # the same example-passes
    large_flops = _forward_flops(mlp)
    assert large_flops > 1.9 * small_flops
    assert estimate["example_gflop"] == pytest.approx(large_flops / 1e9)
    assert estimate["gflop"] == pytest.approx(job["cost_gflop"] * large_flops / small_flops)
    assert str(limit) in error["message"]
    assert api.count_jobs() == 2


def test_the_compute_limit_applies_only_where_the_flops_were_counted() -> None:
    """``max_job_gflop`` refuses a counted estimate over it, naming the limit and the figure;
    an estimate whose model's FLOPs are unknown (the dataset's geometry unknown before the job
    runs) cannot be compared with it and is left to ``max_job_cost``."""
    from api.auth import Caller
    from api.errors import InvalidInput
    from api.services.quotas import check_compute
    from persistence.usage import ProjectLimits

    limits = ProjectLimits(max_active_jobs=1, max_stored_bytes=1, max_job_cost=10**12,
                           max_job_gflop=100, max_requests_per_minute=1, max_streams_per_key=1,
                           max_pending_materializations=1)
    caller = Caller(project_id="p", project_name="p", key_id="k", scopes=frozenset(),
                    limits=limits)
    config = digits_config()
    check_compute(caller, estimate_cost(config, num_modules=20))  # F unknown: not applied
    small = estimate_cost(config, num_modules=20, example_flops=1e3)
    assert small.gflop is not None and small.gflop < 100
    check_compute(caller, small)
    large = estimate_cost(config, num_modules=20, example_flops=1e9)
    with pytest.raises(InvalidInput) as refused:
        check_compute(caller, large)
    assert (refused.value.field, refused.value.code) == ("max_job_gflop", "cost_limit_exceeded")
    assert refused.value.details["limit"] == 100
    assert refused.value.details["estimate"]["gflop"] == large.gflop
    assert "max_job_gflop of 100" in refused.value.message
