"""A sharded MRC table records where each shard's rows were computed (device, torch version) and
warns once when they differ from each other or from the prepare step's (the adversarial set and
``manifest.json``): before, the parts were merged as they came and the manifest named the
prepare step's device only. The merge is driven here on rows and device strings recorded at the
persistence level (no GPU on this machine: a CUDA shard is a recorded device string, as
``tests/worker/test_device_time.py`` does), on the real database, store and broker.

A real sharded job on a worker also records its shards' device and torch version, and keeps
its preflight report (``metrics.preflight``, ``result.json``), which the sharded path dropped;
and a warning about the table's settings comes once, not once per shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stage_shards, stages
from persistence.models import StageName
from persistence.object_keys import shard_inputs_key
from persistence.queue import RiftCelery
from persistence.settings import Settings
from persistence.storage import ObjectStore
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import wait_for
from worker.runtime import WorkerResources
from worker.shard_platforms import mixed_platforms_warning
from worker.shards import merge_if_complete
from worker.stages import MANIFEST_JSON, job_stage_storage, store_manifest

pytestmark = pytest.mark.service

CPU = "cpu"
H100 = "cuda:0 (NVIDIA H100 80GB HBM3)"
GROUPS = [["conv1", "conv2"], ["conv3", "fc"]]
PREFLIGHT = {"clean_accuracy": 91.4, "robust_accuracy": 71.9, "examples": 256}


def _row(name: str, mrc: float) -> dict[str, Any]:
    return {"name": name, "parameters": 100, "mrc": mrc, "worst_robust_loss": 1.0 + mrc,
            "robust_accuracy_at_worst": 50.0, "robust_accuracy_drop": 10.0, "seconds": 0.1,
            "max_ascent_loss": 1.0 + mrc, "passes": 2, "exact": True}


def _part(names: list[str], device: str, torch_version: str) -> dict[str, Any]:
    # Values distinct across the table: two shards' first rows at one value tie the merged
    # choice, a warning of its own (rift/measured_warnings.py) that these tests are not about.
    order = [name for group in GROUPS for name in group]
    rows = [_row(name, 0.1 * (order.index(name) + 1)) for name in names]
    return {"rows": rows, "baseline_robust_loss": 1.0, "baseline_robust_accuracy": 60.0,
            "selected_module": names[0], "engine": "cached", "examples": 64, "seconds": 0.2,
            "module_order": order,
            "device": device, "torch": torch_version}


def _merged_with(platforms: list[tuple[str, str]], submit: Callable[..., str],
                 sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
                 service_settings: Settings, quick_config: dict[str, Any]) -> str:
    """A sharded job whose prepare step ran on the CPU with this torch, its shards recorded as
    run on ``platforms`` (device, torch version) and merged; returns its id."""
    config = {**quick_config, "mrc": {**quick_config["mrc"], "shards": len(GROUPS)}}
    job_id = submit(config, send=False)
    with sessions() as session:
        claim = stages.claim_stage(session, job_id, StageName.MRC, owner="prepare",
                                   lease_seconds=60, max_attempts=3)
    storage = job_stage_storage(store, job_id, {StageName.MRC: claim.attempt})
    store_manifest(storage, {"device": CPU, "versions": {"torch": torch.__version__}})
    with sessions() as session:
        stage_shards.start_shards(session, job_id, owner="prepare", groups=GROUPS,
                                  inputs_key=shard_inputs_key(job_id, claim.attempt),
                                  metrics={"preflight": PREFLIGHT})
    for index, (device, version) in enumerate(platforms):
        with sessions() as session:
            stage_shards.claim_shard(session, job_id, index, owner=f"shard-{index}",
                                     lease_seconds=60, max_attempts=3)
            stage_shards.finish_shard(session, job_id, index, owner=f"shard-{index}",
                                      result=_part(GROUPS[index], device, version))
    resources = WorkerResources(service_settings)
    assert merge_if_complete(sender, resources, job_id) == "merged"
    return job_id


def _warnings(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [e.payload["message"] for e in jobs.list_events(session, job_id, limit=10_000)
                if e.kind == "warning"]


def _manifest(sessions: sessionmaker[Session], store: ObjectStore, job_id: str
              ) -> dict[str, Any]:
    with sessions() as session:
        keys = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    document = json.loads(store.get_bytes(keys[MANIFEST_JSON]))
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("other", [(H100, torch.__version__), (CPU, "2.0.0+old")],
                         ids=["another-device", "another-torch"])
def test_shards_of_another_device_or_torch_are_named_in_a_warning_and_the_manifest(
        other: tuple[str, str], submit: Callable[..., str], sessions: sessionmaker[Session],
        store: ObjectStore, sender: RiftCelery, service_settings: Settings,
        quick_config: dict[str, Any]) -> None:
    job_id = _merged_with([(CPU, torch.__version__), other], submit, sessions, store, sender,
                          service_settings, quick_config)
    warnings = [w for w in _warnings(sessions, job_id) if "more than one kind" in w]
    assert len(warnings) == 1, _warnings(sessions, job_id)
    assert f"shard 1 on {other[0].replace(':0', '')} with torch {other[1]}" in warnings[0]
    manifest = _manifest(sessions, store, job_id)
    assert manifest["warnings"] == warnings
    assert [(s["shard"], s["modules"], s["device"], s["torch"])
            for s in manifest["mrc_shards"]] == [
        (0, GROUPS[0], CPU, torch.__version__), (1, GROUPS[1], *other)]
    with sessions() as session:
        job = jobs.get_job(session, job_id)
    assert job.stage == "finetune" and (job.metrics or {})["preflight"] == PREFLIGHT


def test_shards_on_one_device_kind_and_torch_merge_without_a_warning(
        submit: Callable[..., str], sessions: sessionmaker[Session], store: ObjectStore,
        sender: RiftCelery, service_settings: Settings, quick_config: dict[str, Any]) -> None:
    job_id = _merged_with([(CPU, torch.__version__)] * 2, submit, sessions, store, sender,
                          service_settings, quick_config)
    assert _warnings(sessions, job_id) == []
    manifest = _manifest(sessions, store, job_id)
    assert "warnings" not in manifest
    assert [s["device"] for s in manifest["mrc_shards"]] == [CPU, CPU]


def test_two_indices_of_one_gpu_model_are_one_kind() -> None:
    platforms = [{"shard": 0, "device": H100, "torch": "2.5.0"},
                 {"shard": 1, "device": H100.replace("cuda:0", "cuda:3"), "torch": "2.5.0"}]
    assert mixed_platforms_warning(platforms, {"device": "cuda:1 (NVIDIA H100 80GB HBM3)",
                                               "versions": {"torch": "2.5.0"}}) is None
    assert mixed_platforms_warning(platforms, {"device": CPU,
                                               "versions": {"torch": "2.5.0"}}) is not None


def test_a_sharded_job_records_its_shards_platforms_and_keeps_its_preflight(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any]
        ) -> None:
    """Also: a setting the table does not use is said once, not once per shard."""
    worker = start_worker()
    config = {**quick_config, "mrc": {**quick_config["mrc"], "shards": 2, "module_batch": 2,
                                      "table": "selection"}}
    job_id = submit(config)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        parts = [shard.result for shard in stage_shards.list_shards(session, job_id)]
        keys = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    assert [(p["device"], p["torch"]) for p in parts if p] == [(CPU, torch.__version__)] * 2
    preflight = (job.metrics or {}).get("preflight")
    assert preflight is not None and preflight["examples"] > 0, job.metrics
    assert json.loads(store.get_bytes(keys["result.json"]))["preflight"] == preflight
    manifest = _manifest(sessions, store, job_id)
    assert [s["device"] for s in manifest["mrc_shards"]] == [CPU, CPU]
    warnings = _warnings(sessions, job_id)
    assert "warnings" not in manifest and not any("more than one kind" in w for w in warnings)
    assert len([w for w in warnings if "mrc.module_batch 2 is not used" in w]) == 1, warnings
