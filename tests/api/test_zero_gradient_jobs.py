"""A job on a model with a branch behind a zero gate, through HTTP on a real Celery worker: MRC
flags the branch (its weights get exactly zero gradients on the MRC set) and the job tunes
another module, with one task and with shards alike. Before, the job chose the branch (MRC
exactly 0) and failed at fine-tuning ("would change nothing", field finetune.module). A sweep's
candidate refused so at fine-tuning (a branch dropped in train mode) is excluded, as a diverged
one is; before, it failed the job."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api.dispatch import CeleryDispatcher
from persistence.settings import Settings
from tests.api.helpers import Api, run_job, upload_checkpoint, validator_with_test_architectures
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_a_job_tunes_the_next_module_past_a_zero_gated_branch_in_one_task_and_in_shards(
        service_settings: Settings, start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        quick_config: dict[str, Any]) -> None:
    import torch

    from rift import checkpoints
    from tests.module_factories import GatedBranch, TrainDroppedBranch

    python_path, validator = validator_with_test_architectures(service_settings, tmp_path,
                                                               monkeypatch, request)
    worker = start_worker(PYTHONPATH=python_path)
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings),
                    validator=validator)
    torch.manual_seed(0)
    checkpoints.save_safetensors(tmp_path / "net.safetensors", GatedBranch().state_dict())
    checkpoint = upload_checkpoint(api, tmp_path / "net.safetensors")

    for shards in (1, 2):
        config = copy.deepcopy(quick_config)
        config["architecture"] = {"name": "gated_branch_net"}
        config["preflight"] = {"examples": 0}
        config["mrc"]["shards"] = shards
        config["finetune"].update(epochs=1, lr_milestones=[])
        job = run_job(api, checkpoint["id"], config, (worker,))
        assert job["selected_module"] in ("stem", "head"), (shards, job["selected_module"])
        events = api.client.get(f"/v1/jobs/{job['id']}/events",
                                params={"limit": 1000}).json()["items"]
        warned = [e["payload"]["message"] for e in events if e["kind"] == "warning"
                  and e["payload"]["message"].startswith("not chosen: branch:")]
        assert len(warned) == 1 and "mrc.exclude" in warned[0], (shards, warned)
        scored = {e["payload"]["name"]: e["payload"] for e in events
                  if e["kind"] == "module_scored"}
        assert scored["branch"]["zero_gradient"] is True and scored["branch"]["mrc"] == 0.0
        assert scored[job["selected_module"]]["zero_gradient"] is False
        # The recorded table carries the flag: it read as an ordinary MRC 0, the lowest.
        rows = {row["module"]: row for row in
                api.client.get(f"/v1/jobs/{job['id']}/mrc").json()["rows"]}
        assert rows["branch"]["zero_gradient"] is True and rows["branch"]["mrc"] == 0.0
        assert rows[job["selected_module"]]["zero_gradient"] is False
        report = api.client.get(f"/v1/jobs/{job['id']}/report").text
        assert "branch<span class='mark'> (no effect: not chosen)</span>" in report

    torch.manual_seed(0)
    checkpoints.save_safetensors(tmp_path / "dropped.safetensors",
                                 TrainDroppedBranch().state_dict())
    dropped = upload_checkpoint(api, tmp_path / "dropped.safetensors")
    config = copy.deepcopy(quick_config)
    config["architecture"] = {"name": "train_dropped_branch_net"}
    config["preflight"] = {"examples": 0}
    config["finetune"].pop("lr", None)  # lr_grid sets the rate
    config["finetune"].update(epochs=1, lr_milestones=[], candidates=3, lr_grid=[0.05])
    job = run_job(api, dropped["id"], config, (worker,))
    curves = api.client.get(f"/v1/jobs/{job['id']}/curves").json()
    statuses = {c["module"]: (c["status"], c["reason"]) for c in curves["candidates"]}
    assert statuses["branch"][0] == "failed" and "would change nothing" in statuses["branch"][1]
    assert statuses["stem"][0] == statuses["head"][0] == "done"
    assert job["selected_module"] in ("stem", "head")
    assert len(job["metrics"]["sweep"]["excluded"]) == 1
