"""The Celery stage tasks, run by real worker processes on real Postgres and Redis.

Jobs use the digits checkpoint with a small MRC budget so that each takes seconds; what is tested
is the orchestration: leases, duplicates, crashes, cancellation and errors, and the worker
processes' rows in the worker registry (registered, deleted on a warm shutdown, stale once
killed).
"""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, workers
from persistence.models import Job, JobStage, Worker
from persistence.queue import RiftCelery, enqueue_stage
from persistence.settings import Settings
from persistence.storage import ObjectStore
from rift import checkpoints
from rift.config import RiftConfig
from rift.interpolation import interpolate_weights
from rift.pipeline import run_pipeline
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import signal_when, wait_for
from worker.registry import local_devices
from worker.stages import FINETUNED, TUNED

pytestmark = pytest.mark.service



@pytest.fixture
def fast_config(quick_config: dict[str, Any]) -> dict[str, Any]:
    """The small digits job, on the worker's best device."""
    return {**quick_config, "device": "auto"}


def stage_rows(sessions: sessionmaker[Session], job_id: str) -> dict[str, JobStage]:
    with sessions() as session:
        return {s.stage: s for s in jobs.get_job(session, job_id).stages}


def events(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        return [(e.kind, e.payload) for e in jobs.list_events(session, job_id, limit=10_000)]


def registry_row(sessions: sessionmaker[Session], worker: WorkerProcess,
                 timeout: float = 30.0) -> Worker:
    """The registry row of ``worker`` (id ``host:pid:…``), written by its heartbeat thread once
    it is ready."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            rows = [row for row in session.execute(select(Worker)).scalars()
                    if row.id.split(":")[1] == str(worker.pid)]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)


def test_a_message_delivered_twice_runs_each_stage_once(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sender: RiftCelery, sessions: sessionmaker[Session], store: ObjectStore,
        fast_config: dict[str, Any], digits_checkpoint_path: Path, tmp_path: Path) -> None:
    workers = (start_worker(wait=False), start_worker(wait=False))
    for worker in workers:
        worker.wait_ready()
    job_id = submit(fast_config)
    enqueue_stage(sender, job_id, "mrc")  # the same message again, for the other worker

    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=workers)
    assert job.status == "succeeded", job.error_message
    assert {name: s.attempts for name, s in stage_rows(sessions, job_id).items()} == {
        "mrc": 1, "finetune": 1, "interpolate": 1}
    log = events(sessions, job_id)
    assert [p["stage"] for kind, p in log if kind == "stage_started"] == [
        "mrc", "finetune", "interpolate"]
    assert job.device == "cpu"  # WORKER_DEVICE in service_env
    with sessions() as session:
        modules = [row.module for row in jobs.get_mrc_rows(session, job_id)]
        assert len(modules) == len(set(modules)) > 0
        assert len(jobs.get_epoch_metrics(session, job_id)) == fast_config["finetune"]["epochs"]
        artifacts = {a.name: a for a in jobs.list_artifacts(session, job_id)}
    assert set(artifacts) == {"mrc.csv", "finetuned.safetensors", "tuned.safetensors",
                              "result.json", "manifest.json", "mrc.svg", "finetune.svg",
                              "interpolation.svg", "interpolation_alpha.svg"}
    assert job.selected_module in modules
    assert job.metrics is not None and job.metrics["chosen_alpha"] == job.chosen_alpha
    assert set(job.metrics["before"]) == {"clean_accuracy", "robust_accuracy"}

    # The tuned weights are θ_α between θ_AT and the fine-tuned end point at the chosen α.
    tuned = checkpoints.load_state_dict(
        store.download_to(artifacts[TUNED].storage_key, tmp_path / TUNED))
    finetuned = checkpoints.load_state_dict(
        store.download_to(artifacts[FINETUNED].storage_key, tmp_path / FINETUNED))
    original = checkpoints.load_state_dict(digits_checkpoint_path)
    assert job.chosen_alpha is not None
    expected = interpolate_weights(original, finetuned, job.chosen_alpha)
    assert tuned.keys() == expected.keys()
    for key in tuned:
        torch.testing.assert_close(tuned[key], expected[key])
    assert artifacts[TUNED].size == store.size(artifacts[TUNED].storage_key)


def prepared_runs(sessions: sessionmaker[Session], job_id: str) -> dict[str, str]:
    """Where each stage's run came from: 'cached' (the worker's cache) or 'built'."""
    return {p["stage"]: p["prepared_run"] for kind, p in events(sessions, job_id)
            if kind == "stage_finished"}


def job_weights(sessions: sessionmaker[Session], store: ObjectStore, job_id: str,
                folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    with sessions() as session:
        keys = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    return {name: checkpoints.load_state_dict(store.download_to(keys[name], folder / name))
            for name in (FINETUNED, TUNED)}


def test_later_stages_reuse_the_prepared_run_and_give_a_direct_runs_results(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, service_env: dict[str, str],
        fast_config: dict[str, Any], digits_checkpoint_path: Path, tmp_path: Path) -> None:
    finished: dict[str, Job] = {}
    logs: dict[str, str] = {}
    # "off": no cache, and each stage through the queue (WORKER_CHAIN_STAGES=false).
    for cache, overrides in (("on", {}), ("off", {"WORKER_PREPARED_RUN_CACHE_BYTES": "0",
                                                  "WORKER_CHAIN_STAGES": "false"})):
        worker = start_worker(**overrides)
        job_id = submit(fast_config)
        finished[cache] = wait_for(sessions, job_id, lambda j: j.is_finished, "the end",
                                   workers=(worker,))
        assert finished[cache].status == "succeeded", finished[cache].error_message
        logs[cache] = worker.log()
        worker.stop()  # the next job's stages go to the next worker only
    # Chained, the later stages ran in the first stage's task: no message was sent for them.
    received = ("Task rift.stage.finetune[", "Task rift.stage.interpolate[")
    assert not any(marker in logs["on"] for marker in received)
    assert all(marker in logs["off"] for marker in received)
    assert prepared_runs(sessions, finished["on"].id) == {
        "mrc": "built", "finetune": "cached", "interpolate": "cached"}
    assert prepared_runs(sessions, finished["off"].id) == {
        "mrc": "built", "finetune": "built", "interpolate": "built"}

    # run_pipeline in this process, with the workers' thread count (launch_worker's default).
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        direct = run_pipeline(RiftConfig.model_validate({**fast_config, "device": "cpu"}),
                              digits_checkpoint_path, tmp_path / "direct")
    finally:
        torch.set_num_threads(threads)
    expected = {name: checkpoints.load_state_dict(tmp_path / "direct" / name)
                for name in (FINETUNED, TUNED)}
    for cache, job in finished.items():
        assert (job.selected_module, job.chosen_alpha) == (direct["selected_module"],
                                                           direct["chosen_alpha"]), cache
        assert job.metrics is not None
        assert (job.metrics["before"], job.metrics["after"]) == (direct["before"],
                                                                 direct["after"]), cache
        with sessions() as session:
            mrc = {row.module: row.mrc for row in jobs.get_mrc_rows(session, job.id)}
        assert mrc == {row["name"]: row["mrc"] for row in direct["mrc"]["rows"]}, cache
        weights = job_weights(sessions, store, job.id, tmp_path / cache)
        for name, tensors in expected.items():
            assert weights[name].keys() == tensors.keys()
            for key, value in tensors.items():
                assert torch.equal(weights[name][key], value), (cache, name, key)


def test_a_killed_worker_is_replaced_without_recomputing_mrc(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], fast_config: dict[str, Any]) -> None:
    spec = copy.deepcopy(fast_config)
    spec["finetune"].update(epochs=40, lr_milestones=[30])  # long enough to be killed mid-way
    # Heartbeats every second, so that the killed worker's row goes stale within the test.
    first = start_worker(WORKER_HEARTBEAT_SECONDS="1")
    job_id = submit(spec)

    def fine_tuning(job: Job) -> bool:
        return job.stage == "finetune" and any(
            kind == "epoch" for kind, _ in events(sessions, job_id))

    # SIGKILL: no cleanup, no acknowledgement, the lease is left to expire. Sent with the worker
    # stopped at the read, so the fine-tuning read as running cannot end before it.
    signal_when(first, sessions, job_id, fine_tuning, "fine-tuning", signal.SIGKILL)
    first.kill()  # reaps it
    assert stage_rows(sessions, job_id)["finetune"].status == "running"
    killed = registry_row(sessions, first)  # no clean shutdown: the row stays

    second = start_worker(WORKER_HEARTBEAT_SECONDS="1")
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=(first, second))
    assert job.status == "succeeded", job.error_message
    stages = stage_rows(sessions, job_id)
    assert (stages["mrc"].attempts, stages["finetune"].attempts,
            stages["interpolate"].attempts) == (1, 2, 1)
    log = events(sessions, job_id)
    started = [p for kind, p in log if kind == "stage_started"]
    assert [(p["stage"], p["attempt"]) for p in started] == [
        ("mrc", 1), ("finetune", 1), ("finetune", 2), ("interpolate", 1)]
    assert started[1]["worker"] != started[2]["worker"]
    # The registry's ids are the lease owners; the killed worker's row is stale after 3
    # heartbeats and the janitor removes it (the second worker's pass at its start may have).
    assert (started[1]["worker"], started[2]["worker"]) == (killed.id,
                                                            registry_row(sessions, second).id)
    with sessions() as session:
        assert [w.id for w in workers.live_workers(session, heartbeat_seconds=1.0)] == [
            started[2]["worker"]]
        assert workers.remove_stale_workers(session, heartbeat_seconds=1.0) in ([], [killed.id])
        assert session.get(Worker, killed.id) is None
    # The second worker had no run of the job: it built one for fine-tuning, then reused it.
    assert prepared_runs(sessions, job_id) == {
        "mrc": "built", "finetune": "built", "interpolate": "cached"}
    with sessions() as session:
        mrc_rows = jobs.get_mrc_rows(session, job_id)
        epochs = jobs.get_epoch_metrics(session, job_id)
    # MRC ran once: one row and one 'module_scored' event per module.
    assert len(mrc_rows) == sum(kind == "module_scored" for kind, _ in log) > 0
    assert [e.epoch for e in epochs] == list(range(1, 41))
    assert any(kind == "stage_recovered" for kind, _ in log)
    # The recorded weights are those of the attempt that finished, under its own keys.
    with sessions() as session:
        keys = {a.name: a.storage_key for a in jobs.list_artifacts(session, job_id)}
    assert keys[FINETUNED] == f"jobs/{job_id}/finetune/attempt-2/{FINETUNED}"
    assert keys["mrc.csv"] == f"jobs/{job_id}/mrc/attempt-1/mrc.csv"


def test_cancellation_while_queued_and_while_running(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], fast_config: dict[str, Any],
        service_settings: Settings) -> None:
    queued_id = submit(fast_config)  # no worker yet: the message waits in the queue
    with sessions() as session:
        assert jobs.request_cancel(session, queued_id).status == "cancelled"

    spec = copy.deepcopy(fast_config)
    spec["finetune"].update(epochs=400, lr_milestones=[300])
    running_id = submit(spec)
    worker = start_worker()
    wait_for(sessions, running_id, lambda j: j.stage == "finetune" and j.stage_progress > 0,
             "fine-tuning", workers=(worker,))
    with sessions() as session:
        assert jobs.request_cancel(session, running_id).cancel_requested
    job = wait_for(sessions, running_id, lambda j: j.is_finished, "the end", timeout=30,
                   workers=(worker,))
    assert job.status == "cancelled"
    assert stage_rows(sessions, running_id)["finetune"].status == "cancelled"
    with sessions() as session:
        assert len(jobs.get_epoch_metrics(session, running_id)) == 0
        assert {a.name for a in jobs.list_artifacts(session, running_id)} == {
            "mrc.csv", "manifest.json"}

    # The cancelled queued job's message was consumed before the running one's: it never ran.
    assert f"job {queued_id} stage mrc: inactive" in worker.log()
    assert all(s.attempts == 0 for s in stage_rows(sessions, queued_id).values())
    assert [kind for kind, _ in events(sessions, queued_id)] == ["job_created", "job_cancelled"]

    # The worker's registry row: its queue and devices (WORKER_DEVICE=cpu in the tests' env),
    # under the id its stages were claimed by; a warm shutdown deletes it.
    row = registry_row(sessions, worker)
    assert row.devices == local_devices() and row.devices["cpu"] == 1
    assert (row.queues, row.device_override) == ([service_settings.celery_queue], "cpu")
    assert [p["worker"] for kind, p in events(sessions, running_id) if kind == "stage_started"
            ] == [row.id, row.id]
    worker.stop()
    with sessions() as session:
        assert session.get(Worker, row.id) is None, worker.log()[-3000:]


def test_errors_fail_the_job_with_a_code(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sender: RiftCelery, sessions: sessionmaker[Session], service_settings: Settings,
        fast_config: dict[str, Any]) -> None:
    worker = start_worker()
    # An unexpected error: a folder sits where the worker downloads the checkpoint to, so every
    # attempt fails with an OSError; the stage is retried, then the job fails.
    broken_id = submit(fast_config, send=False)
    with sessions() as session:
        checkpoint_id = jobs.get_job(session, broken_id).checkpoint_id
    (service_settings.work_dir / "inputs" / "checkpoints" / f"{checkpoint_id}.safetensors"
     ).mkdir(parents=True)
    enqueue_stage(sender, broken_id, "mrc")
    # A library error (the checkpoint does not fit the architecture): failed at once.
    mismatched = copy.deepcopy(fast_config)
    mismatched["architecture"]["num_classes"] = 12
    mismatch_id = submit(mismatched)
    # A rate the schema takes that makes fine-tuning diverge (found by the config fuzz): before,
    # the job succeeded with NaN weights saved as θ_FT; now a library error naming the setting.
    diverging = copy.deepcopy(fast_config)
    diverging["finetune"].update(lr=10.0, momentum=0.999, weight_decay=1.0, batch_size=8,
                                 bn_stats="freeze", module="conv1")
    diverging_id = submit(diverging)

    job = wait_for(sessions, broken_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert (job.status, job.error_code, job.stage) == ("failed", "stage_failed_repeatedly", "mrc")
    assert "3 times" in (job.error_message or "") and "Error" in (job.error_message or "")
    assert stage_rows(sessions, broken_id)["mrc"].attempts == 3
    kinds = [kind for kind, _ in events(sessions, broken_id)]
    assert (kinds.count("stage_started"), kinds.count("stage_retry")) == (3, 2)
    assert kinds[-1] == "job_failed"

    job = wait_for(sessions, mismatch_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert (job.status, job.error_code) == ("failed", "checkpoint_mismatch"), job.error_message
    assert stage_rows(sessions, mismatch_id)["mrc"].attempts == 1

    job = wait_for(sessions, diverging_id, lambda j: j.is_finished, "the end", workers=(worker,))
    assert (job.status, job.error_code, job.stage) == ("failed", "non_finite_values", "finetune")
    assert "use a smaller finetune.lr" in (job.error_message or "")
    assert stage_rows(sessions, diverging_id)["finetune"].attempts == 1
    # The setting the library error blames (RiftError.field) is in the failure's event: it was
    # dropped where the worker turned the error into the job's (code and message only).
    failed = [payload for kind, payload in events(sessions, diverging_id) if kind == "job_failed"]
    assert failed[-1]["field"] == "finetune.lr", failed
    # ... and the job's own error keeps it (jobs.error_field): before, code and message only.
    assert job.error_field == "finetune.lr"


def test_a_sharded_mrc_stage_runs_on_several_workers_and_merges_once(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], fast_config: dict[str, Any]) -> None:
    from persistence.stage_shards import list_shards
    workers = (start_worker(wait=False), start_worker(wait=False))
    for worker in workers:
        worker.wait_ready()
    fast_config["mrc"]["shards"] = 3
    job_id = submit(fast_config)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", workers=workers)
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        rows = jobs.get_mrc_rows(session, job_id)
        shards = list_shards(session, job_id)
    assert [s.status for s in shards] == ["done"] * 3
    shard_modules = [name for s in shards for name in s.modules]
    assert sorted(row.module for row in rows) == sorted(shard_modules)  # each module once
    assert job.selected_module == min(rows, key=lambda row: row.mrc).module
    log = events(sessions, job_id)
    kinds = [kind for kind, _ in log]
    assert kinds.count("mrc_sharded") == 1 and kinds.count("shard_finished") == 3
    assert [p["stage"] for kind, p in log if kind == "stage_finished"] == [
        "mrc", "finetune", "interpolate"]
