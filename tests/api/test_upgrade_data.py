"""Data written by earlier releases, served by this one after ``alembic upgrade head``.

The rows here are shaped as release bfc43a5 (migration 0010) wrote them: the job's ``spec`` is
the config that release dumped (its defaults filled in), holding settings its checks accepted and
its run gave a meaning to, which checks added since refuse for new requests. Before: a worker
read such a spec with the new checks, so every materialization of the old job failed with
"ValidationError: 1 validation error for RiftConfig" (and a job queued across the upgrade failed
its first stage three times)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from persistence.migrate import upgrade_database
from persistence.storage import LocalObjectStore
from rift.checkpoints import save_safetensors
from rift.config import RiftConfig, stored_config
from rift.manifest import config_from_manifest
from tests.api.helpers import Api, RecordingDispatcher, small_cnn_state
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service

#: The spec bfc43a5 stored for a digits job (copied from its database).
RELEASE_0010_SPEC: dict[str, Any] = {
    "protocol": "default",
    "architecture": {"name": "small_cnn", "num_classes": 10, "in_channels": None,
                     "image_size": None, "mean": None, "std": None, "normalization": None,
                     "input_features": None, "hidden": None},
    "dataset": {"name": "digits", "root": None, "path": None, "download": False,
                "image_size": None, "validation_fraction": 0.1, "max_train_examples": None,
                "max_test_examples": None, "augment": "auto"},
    "attack": {"domain": "auto", "norm": "linf", "eps": 0.1, "step_size": 0.03, "steps": 2,
               "random_start": True},
    "mrc": {"eps": 0.1, "p": 2, "steps": 1, "lr": 1.0, "batch_size": 512, "num_examples": 64,
            "include": [], "exclude": [], "modules": None, "engine": "auto", "shards": 1,
            "ascent": "normalized", "allow_negative": False, "split": "train",
            "reshuffle": False},
    "finetune": {"module": None, "epochs": 2, "lr": 0.001, "momentum": 0.9,
                 "weight_decay": 0.0005, "batch_size": 128, "lr_milestones": [5],
                 "lr_gamma": 0.1, "bn_stats": "update", "candidates": 1, "lr_grid": None,
                 "selection_split": "validation"},
    "interpolation": {"alpha_step": 0.5, "robust_tolerance": 0.0, "selection_split": "test",
                      "curve": "selection"},
    "evaluation": {"batch_size": 256, "max_examples": None},
    "preflight": {"examples": 0, "margin": 10.0},
    "seed": 0, "device": "cpu", "precision": "fp32", "channels_last": False,
    "deterministic": True,
}

#: Settings that release accepted and ran (each job below succeeded there), refused since:
#: (section, setting, stored value, the value it ran with, read back by ``stored_config``).
OLD_SETTINGS: dict[str, tuple[str, str, Any, Any]] = {
    # ignored on a built-in dataset: the run used the digits at 8×8
    "image_size_of_digits": ("dataset", "image_size", 32, None),
    # MultiStepLR decayed twice after epoch 1; the stored spec keeps that
    "repeated_milestone": ("finetune", "lr_milestones", [1, 1], [1, 1]),
    # one score per module
    "module_listed_twice": ("mrc", "modules", ["conv1", "fc", "conv1"], ["conv1", "fc"]),
    # the twin candidates fine-tuned alike
    "rate_listed_twice": ("finetune", "lr_grid", [0.01, 0.01], [0.01]),
    # the single-module run took it as "not given"
    "blank_module": ("finetune", "module", "", None),
}


def _old_spec(case: str) -> dict[str, Any]:
    section, setting, stored, _ = OLD_SETTINGS[case]
    spec = copy.deepcopy(RELEASE_0010_SPEC)
    spec[section][setting] = stored
    return spec


@pytest.mark.parametrize("case", sorted(OLD_SETTINGS))
def test_a_stored_spec_takes_the_meaning_its_release_ran_it_with(case: str) -> None:
    section, setting, _, ran_with = OLD_SETTINGS[case]
    spec = _old_spec(case)
    with pytest.raises(ValidationError):  # a new request is refused as before
        RiftConfig.model_validate(spec)
    config = stored_config(spec)
    assert getattr(getattr(config, section), setting) == ran_with
    # The manifest of such a run reads back the same way.
    assert config_from_manifest({"config": spec}) == config


def _insert_release_0010_rows(url: str, store: LocalObjectStore, checkpoint_file: Path,
                              spec: dict[str, Any]) -> str:
    """A project, a checkpoint and a succeeded job with its fine-tuned weights, as the 0010
    release's API and worker wrote them (a job still queued differs in its status only, as
    far as a worker reading its config is concerned); returns the job's id."""
    now = datetime.now(UTC).replace(tzinfo=None)
    checkpoint_key = "checkpoints/c0010.safetensors"
    finetuned_key = "jobs/j0010/finetune/attempt-1/finetuned.safetensors"
    store.put_file(checkpoint_key, checkpoint_file)
    finetuned = checkpoint_file.parent / "finetuned.safetensors"
    save_safetensors(finetuned, small_cnn_state(seed=1))
    stored = store.put_file(finetuned_key, finetuned)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO projects (id, name, created_at) "
                              "VALUES ('p0010', 'tests', :n)"), {"n": now})
            c.execute(sa.text(
                "INSERT INTO checkpoints (id, filename, size, sha256, format, storage_key, "
                "num_tensors, num_parameters, created_at, project_id) VALUES ('c0010', "
                "'m.safetensors', :size, :sha, 'safetensors', :key, 20, 1000, :n, 'p0010')"),
                {"size": checkpoint_file.stat().st_size, "sha": "a" * 64, "key": checkpoint_key,
                 "n": now})
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage, stage_progress, spec, checkpoint_id, "
                "cancel_requested, attempts, selected_module, chosen_alpha, metrics, "
                "created_at, started_at, finished_at, updated_at, project_id, cost_estimate) "
                "VALUES ('j0010', 'succeeded', 'interpolate', 1.0, :spec, 'c0010', false, 1, "
                "'conv1', 0.5, '{}', :n, :n, :n, :n, 'p0010', 1000)"),
                {"spec": json.dumps(spec), "n": now})
            c.execute(sa.text(
                "INSERT INTO artifacts VALUES ('j0010', 'finetuned.safetensors', :key, :size, "
                ":sha, 'application/octet-stream', :n)"),
                {"key": finetuned_key, "size": stored.size, "sha": stored.sha256, "n": now})
    finally:
        engine.dispose()
    return "j0010"


@pytest.mark.parametrize("case", sorted(OLD_SETTINGS))
def test_an_old_jobs_weights_at_another_alpha_are_made_after_the_upgrade(
        case: str, tmp_path: Path, small_cnn_file: Path,
        start_api: Callable[..., Api]) -> None:
    from worker.metrics import WorkerMetrics
    from worker.runtime import WorkerResources
    from worker.tasks import execute_materialization

    url = f"sqlite:///{tmp_path / 'rift.db'}"
    settings = settings_from_env({
        "DATABASE_URL": url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "WORKER_DEVICE": "cpu"})
    upgrade_database(url, "0010")
    job_id = _insert_release_0010_rows(url, LocalObjectStore(settings.store_root),
                                       small_cnn_file, _old_spec(case))
    upgrade_database(url)
    api = start_api(settings, dispatcher=RecordingDispatcher())  # the project 'tests' above
    made = api.client.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": 0.25})
    assert made.status_code == 202, made.text
    worker = WorkerResources(settings)
    worker.metrics = WorkerMetrics(worker, lambda queue: 0)
    assert execute_materialization(worker, made.json()["id"]) == "succeeded"
    row = api.client.get(f"/v1/jobs/{job_id}/materializations/{made.json()['id']}").json()
    assert (row["status"], row["error"]) == ("succeeded", None)
    weights = api.client.get(f"/v1/jobs/{job_id}/artifacts/tuned@0.25.safetensors")
    assert weights.status_code == 200 and len(weights.content) > 0


@pytest.mark.parametrize("case", sorted(OLD_SETTINGS))
def test_an_old_jobs_stage_reads_its_config_after_the_upgrade(
        case: str, tmp_path: Path, small_cnn_file: Path) -> None:
    # Before: a job queued across the upgrade failed its first stage three times on this read.
    from persistence.db import session_factory_from_settings
    from persistence.models import Job
    from worker.stages import job_config

    url = f"sqlite:///{tmp_path / 'rift.db'}"
    settings = settings_from_env({"DATABASE_URL": url, "STORE_KIND": "local",
                                  "STORE_ROOT": str(tmp_path / "objects")})
    upgrade_database(url, "0010")
    job_id = _insert_release_0010_rows(url, LocalObjectStore(settings.store_root),
                                       small_cnn_file, _old_spec(case))
    upgrade_database(url)
    section, setting, _, ran_with = OLD_SETTINGS[case]
    with session_factory_from_settings(settings)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        config = job_config(job, dataset_path=None, device="cpu")
    assert getattr(getattr(config, section), setting) == ran_with


#: A job bfc43a5 recorded for ``REPLAYED_REQUEST`` under ``Idempotency-Key: job-1``: its ids,
#: the key and request hash as that release stored them (copied from its database).
RECORDED_JOB = {"id": "a3c8d8fc05cb4877a2e8da224eb18c51", "project": "9b6719fe9c194c669ca3798e705361d3",
                "checkpoint": "5f1a0c0852ac4af990d72db229182c66",
                "key": "532edff17ffd426c5166d380c91d6605777611653bf07222e923bb22618e725f",
                "hash": "58ac893c818e2015248d19cc2f5e2244234ec1965b0ddc093c332b1f7f129d3e"}
REPLAYED_REQUEST: dict[str, Any] = {
    "checkpoint_id": RECORDED_JOB["checkpoint"], "labels": {"a": "b"},
    "config": {"architecture": {"name": "small_cnn", "num_classes": 10},
               "dataset": {"name": "digits"}, "device": "cpu", "finetune": {"epochs": 1}}}


def test_a_job_request_retried_across_the_upgrade_is_answered_with_its_job(
        tmp_path: Path, start_api: Callable[..., Api]) -> None:
    # Before: 409 idempotency_conflict ("... with a different request"): this release's hash
    # of the same request covers settings added since (mrc.table, evaluation.fold_batchnorm).
    url = f"sqlite:///{tmp_path / 'rift.db'}"
    upgrade_database(url, "0010")
    spec = copy.deepcopy(RELEASE_0010_SPEC)
    spec["finetune"].update(epochs=1, lr_milestones=[5])
    spec["attack"].update(eps=8 / 255, step_size=2 / 255, steps=10)
    spec["mrc"].update(steps=10, num_examples=1024)
    spec["interpolation"]["alpha_step"] = 0.05
    spec["preflight"]["examples"] = 256
    now = datetime.now(UTC).replace(tzinfo=None)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES (:p, 'tests', "
                              ":n)"), {"p": RECORDED_JOB["project"], "n": now})
            c.execute(sa.text(
                "INSERT INTO checkpoints (id, filename, size, sha256, format, storage_key, "
                "num_tensors, num_parameters, created_at, project_id) VALUES (:c, "
                "'m.safetensors', 98600, :sha, 'safetensors', 'checkpoints/c.safetensors', 20, "
                "1000, :n, :p)"),
                {"c": RECORDED_JOB["checkpoint"], "sha": "a" * 64, "n": now,
                 "p": RECORDED_JOB["project"]})
            c.execute(sa.text(
                "INSERT INTO jobs (id, status, stage_progress, spec, checkpoint_id, "
                "idempotency_key, request_hash, cancel_requested, attempts, created_at, "
                "updated_at, project_id, cost_estimate) VALUES (:j, 'queued', 0.0, :spec, :c, "
                ":k, :h, false, 0, :n, :n, :p, 1000)"),
                {"j": RECORDED_JOB["id"], "spec": json.dumps(spec), "c": RECORDED_JOB["checkpoint"],
                 "k": RECORDED_JOB["key"], "h": RECORDED_JOB["hash"], "n": now,
                 "p": RECORDED_JOB["project"]})
            c.execute(sa.text("INSERT INTO job_labels VALUES (:j, 'a', 'b')"),
                      {"j": RECORDED_JOB["id"]})
    finally:
        engine.dispose()
    upgrade_database(url)
    settings = settings_from_env({
        "DATABASE_URL": url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work")})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    replayed = api.client.post("/v1/jobs", json=REPLAYED_REQUEST,
                               headers={"Idempotency-Key": "job-1"})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["id"] == RECORDED_JOB["id"]
    # Another request under that key is still refused; the labels are part of the request.
    other = api.client.post("/v1/jobs", json={**REPLAYED_REQUEST, "labels": {"a": "c"}},
                            headers={"Idempotency-Key": "job-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
