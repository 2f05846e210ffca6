"""A researcher reproducing a finished job from what the service recorded: every artifact's listed
SHA-256 is the bytes served, ``manifest.json`` names the inputs (the checkpoint's SHA-256, the
examples read, the thread count, the versions), and its config, submitted again as it stands,
gives the same MRC table, module, α, curve, metrics and tuned weights (its MRC stage split over
shards, the same table); so does the library run from the same manifest on this machine.
``result.json`` holds that config too (it held the worker's, with its data folder, which a new
job refuses). Real worker (Postgres, Redis, local store)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import Api, run_job, upload_checkpoint
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

#: Fields that differ from job to job: times measured, the job's own id.
PER_JOB = ("seconds", "job_id")


def _downloads(api: Api, job_id: str) -> dict[str, bytes]:
    listing = api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    files = {}
    for artifact in listing:
        content = api.client.get(artifact["url"]).content
        assert hashlib.sha256(content).hexdigest() == artifact["sha256"], artifact["name"]
        assert len(content) == artifact["size"], artifact["name"]
        files[artifact["name"]] = content
    return files


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if not (k in PER_JOB or k.endswith("_seconds"))}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def test_a_job_submitted_again_from_its_manifest_gives_the_same_results(
        start_worker: Callable[..., WorkerProcess], celery_api: Api, tmp_path: Path,
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    import safetensors.torch
    import torch

    from rift.config import RiftConfig
    from rift.data import load_dataset
    from rift.manifest import config_from_manifest
    from rift.pipeline import run_pipeline, splits_fingerprint

    worker, api = start_worker(), celery_api
    config = copy.deepcopy(quick_config)
    config["preflight"] = {"examples": 0}
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    first = run_job(api, checkpoint["id"], config, (worker,))
    files = _downloads(api, first["id"])
    manifest = json.loads(files["manifest.json"])

    # What went in, as the manifest names it.
    assert manifest["checkpoint_sha256"] == checkpoint["sha256"] == hashlib.sha256(
        digits_checkpoint_path.read_bytes()).hexdigest()
    recorded = RiftConfig.model_validate(manifest["config"])  # every default filled in
    assert recorded == RiftConfig.model_validate(config)
    assert manifest["seed"] == recorded.seed and manifest["device"] == "cpu"
    splits = load_dataset(recorded.dataset, recorded.seed)
    assert manifest["dataset"]["splits_sha256"] == splits_fingerprint(splits)
    assert isinstance(manifest["torch_threads"], int) and manifest["torch_threads"] >= 1
    assert manifest["versions"]["torch"] == torch.__version__
    # Each stage says which device ran it (a stage may run on another worker than the MRC's).
    finished = [e["payload"] for e in api.client.get(f"/v1/jobs/{first['id']}/events").json()["items"]
                if e["kind"] == "stage_finished"]
    assert [(e["stage"], e["device"], e["torch_threads"]) for e in finished] == [
        (stage, "cpu", manifest["torch_threads"]) for stage in ("mrc", "finetune", "interpolate")]

    # Submitted again as recorded: the same results.
    second = run_job(api, checkpoint["id"], manifest["config"], (worker,))
    again = _downloads(api, second["id"])
    for key in ("selected_module", "chosen_alpha"):
        assert first[key] == second[key], key
    assert _timeless(first["metrics"]) == _timeless(second["metrics"])
    for route in ("mrc", "curves"):
        assert _timeless(api.client.get(f"/v1/jobs/{first['id']}/{route}").json()) == _timeless(
            api.client.get(f"/v1/jobs/{second['id']}/{route}").json()), route
    result, result_again = json.loads(files["result.json"]), json.loads(again["result.json"])
    assert result["config"] == manifest["config"] == first["config"]
    assert _timeless(result) == _timeless(result_again)
    tuned = safetensors.torch.load(files["tuned.safetensors"])
    for name in ("tuned.safetensors", "finetuned.safetensors"):
        one, other = safetensors.torch.load(files[name]), safetensors.torch.load(again[name])
        assert one.keys() == other.keys()
        assert all(torch.equal(one[key], other[key]) for key in one), name

    # Its MRC stage split over shards: the same table, module and α.
    sharded_config = copy.deepcopy(manifest["config"])
    sharded_config["mrc"]["shards"] = 2
    sharded = run_job(api, checkpoint["id"], sharded_config, (worker,))
    assert (sharded["selected_module"], sharded["chosen_alpha"]) == (first["selected_module"],
                                                                     first["chosen_alpha"])
    rows = api.client.get(f"/v1/jobs/{first['id']}/mrc").json()["rows"]
    sharded_rows = api.client.get(f"/v1/jobs/{sharded['id']}/mrc").json()["rows"]
    assert _timeless(sharded_rows) == _timeless(rows)

    # The library, from the same manifest, with the thread count it records.
    threads = torch.get_num_threads()
    torch.set_num_threads(manifest["torch_threads"])
    try:
        local = run_pipeline(config_from_manifest(manifest), digits_checkpoint_path,
                             tmp_path / "cli")
    finally:
        torch.set_num_threads(threads)
    assert (local["selected_module"], local["chosen_alpha"]) == (first["selected_module"],
                                                                 first["chosen_alpha"])
    assert (local["before"], local["after"]) == (result["before"], result["after"])
    assert _timeless(local["mrc"]) == _timeless(result["mrc"])
    assert local["interpolation"]["points"] == result["interpolation"]["points"]
    cli_tuned = safetensors.torch.load_file(tmp_path / "cli" / "tuned.safetensors")
    assert cli_tuned.keys() == tuned.keys()
    assert all(torch.equal(cli_tuned[key], tuned[key]) for key in tuned)
    cli_manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    for key in ("checkpoint_sha256", "dataset", "config", "seed", "device", "torch_threads"):
        assert cli_manifest[key] == manifest[key], key
