"""A checkpoint saved by the Madry lab's ``robustness`` library through the service (Postgres,
Redis, a Celery worker): accepted at upload and job creation, tuned as the network it holds, its
α = 0 weights the network's own; a job configured with another normalisation than the
checkpoint's normaliser is refused at creation, naming both (``rift/checkpoint_layouts.py``)."""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import JOB_TIMEOUT_S, Api, error_of, run_job, upload_checkpoint
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _robustness_file(network: dict[str, Any], path: Path) -> Path:
    """robustness's train_model output: the AttackerModel from DataParallel (its normaliser,
    the network, and the attacker's references to both), optimizer, schedule, epoch. The
    normaliser is the identity, as the digits network was trained without one."""
    import torch

    mean, std = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    state: OrderedDict[str, Any] = OrderedDict(
        [("module.normalizer.new_mean", mean), ("module.normalizer.new_std", std)])
    state.update((f"module.model.{key}", value) for key, value in network.items())
    state.update([("module.attacker.normalize.new_mean", mean),
                  ("module.attacker.normalize.new_std", std)])
    state.update((f"module.attacker.model.{key}", value) for key, value in network.items())
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []},
                "schedule": None, "epoch": 150}, path)
    return path


def test_a_robustness_library_checkpoint_through_the_service(
        start_worker: Callable[..., WorkerProcess], celery_api: Api,
        digits_checkpoint_path: Path, quick_config: dict[str, Any], tmp_path: Path) -> None:
    import safetensors.torch
    import torch

    from rift.checkpoints import load_state_dict

    worker = start_worker()
    api = celery_api
    network = load_state_dict(digits_checkpoint_path)
    record = upload_checkpoint(api, _robustness_file(network, tmp_path / "checkpoint.pt.best"))
    assert record["entries"] == ["model"]

    # Configured with another normalisation than the checkpoint's: refused at creation,
    # naming both (the normaliser's values are recorded when the file is inspected).
    other = copy.deepcopy(quick_config)
    other["architecture"].update(mean=[0.5], std=[0.25])
    refused = api.client.post("/v1/jobs", json={"checkpoint_id": record["id"], "config": other})
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert error["code"] == "checkpoint_mismatch" and error["field"] == "checkpoint_id"
    assert ("normalizer.new_mean [0], normalizer.new_std [1]" in error["message"]
            and "the model applies mean [0.5], std [0.25]" in error["message"]
            and "set architecture.mean to [0]" in error["message"]), error

    job = run_job(api, record["id"], quick_config, (worker,))
    events = api.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()
    assert any(e["kind"] == "warning" and "'attacker.model.'" in e["payload"]["message"]
               for e in events["items"])
    listing = {a["name"]: a for a in
               api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    tuned = safetensors.torch.load(api.client.get(listing["tuned.safetensors"]["url"]).content)
    assert tuned.keys() == network.keys()  # the network's keys, nothing of the wrapper

    # α = 0 is the network as the file holds it.
    made = api.client.post(f"/v1/jobs/{job['id']}/materialize", json={"alpha": 0.0})
    assert made.status_code == 202, made.text
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (row := api.client.get(made.json()["url"]).json())["status"] not in ("succeeded",
                                                                                "failed"):
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    assert row["status"] == "succeeded", (row, worker.log()[-3000:])
    theta_at = safetensors.torch.load(api.client.get(row["artifact_url"]).content)
    assert theta_at.keys() == network.keys()
    assert all(torch.equal(theta_at[key], network[key]) for key in network)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_safetensors_normaliser_is_compared_at_job_creation(api: Api, tmp_path: Path,
                                                              dtype: str) -> None:
    """A RobustBench-style model with mu/sigma buffers beside its layers, as safetensors: the
    API reads their values by ranges of the stored file (no validator run for its shapes)."""
    import torch
    from safetensors.torch import save_file

    from tests.api.helpers import digits_config, small_cnn_state

    kind = getattr(torch, dtype)
    state = {key: value.to(kind) if value.is_floating_point() else value
             for key, value in small_cnn_state().items()}
    path = tmp_path / "model.safetensors"
    save_file({**state, "mu": torch.tensor([0.1307]).to(kind),
               "sigma": torch.tensor([0.3081]).to(kind)}, str(path))
    record = upload_checkpoint(api, path)
    refused = api.client.post("/v1/jobs", json={"checkpoint_id": record["id"],
                                                "config": digits_config()})
    assert refused.status_code == 422, refused.text
    message = error_of(refused)["message"]
    assert ("(mu [0.13" in message and "the model applies none" in message
            and "set architecture.normalization to 'mnist'" in message), message
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": record["id"],
        "config": digits_config(architecture={"name": "small_cnn", "num_classes": 10,
                                              "normalization": "mnist"})})
    assert created.status_code == 201, created.text
