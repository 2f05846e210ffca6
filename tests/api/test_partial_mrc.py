"""``GET /v1/jobs/{id}/mrc`` while the MRC stage runs: the rows scored so far, from the stage's
``module_scored`` events, in table order, marked partial (``complete: false``,
``modules_scored``, ``modules_total``), and read per attempt as the stage's resume reads them
(:mod:`persistence.mrc_tables`). Before, the table was empty until the stage ended.

The stage's claims, reports and finish are written through the persistence functions a worker
calls (``claim_stage``, ``report_activity``, ``start_shards``, ``finish_stage_and_claim_next``),
so no worker is needed there; the last test runs a real Celery worker.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import CeleryDispatcher
from persistence import jobs, stage_shards, stages
from persistence.models import utcnow
from persistence.settings import Settings
from persistence.stages import StageOutputs
from rift_client import AsyncRiftClient, RiftClient
from tests.api.helpers import Api, digits_config, upload_checkpoint
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import JOB_TIMEOUT_S, read_while_stopped, wait_while_progressing

pytestmark = pytest.mark.service

LEASE_S = 60.0
MODULES = ["conv1", "conv2", "fc1", "fc2"]  # the table's order (the model's)


def queued_job(api: Api, checkpoint: Path) -> str:
    uploaded = upload_checkpoint(api, checkpoint)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"],
                                                "config": digits_config()})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def row(module: str, mrc: float, **extra: Any) -> dict[str, Any]:
    """A ``module_scored`` payload as ``rift.pipeline.score_modules`` writes it: the row
    (``ModuleCriticality.as_dict``), its inputs digest and its place among the job's modules."""
    return {"name": module, "parameters": 100 * (MODULES.index(module) + 1), "mrc": mrc,
            "worst_robust_loss": 1.0 + mrc, "robust_accuracy_at_worst": 50.0,
            "robust_accuracy_drop": 10 * mrc, "seconds": 0.5, "max_ascent_loss": 1.0 + mrc,
            "passes": 2, "exact": True, "order": MODULES.index(module), **extra}


def report(api: Api, job_id: str, *payloads: dict[str, Any]) -> None:
    """What a stage's reporter writes (``worker.runtime.StageReporter``)."""
    with api.sessions() as session:
        stages.report_activity(session, job_id, "mrc",
                               events=[("module_scored", p, utcnow()) for p in payloads],
                               progress=(0.5, "scored"))


def claim_mrc(api: Api, job_id: str, owner: str) -> None:
    with api.sessions() as session:
        claim = stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=LEASE_S,
                                   max_attempts=3)
    assert claim.outcome == stages.ClaimOutcome.CLAIMED


def mrc(api: Api, job_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/jobs/{job_id}/mrc")
    assert response.status_code == 200, response.text
    return dict(response.json())


def shown(table: dict[str, Any]) -> list[tuple[int, str, float]]:
    return [(r["position"], r["module"], r["mrc"]) for r in table["rows"]]


def test_a_running_stage_answers_its_rows_so_far_and_the_recorded_table_once_done(
        api: Api, small_cnn_file: Path) -> None:
    job_id = queued_job(api, small_cnn_file)
    queued = mrc(api, job_id)
    assert (queued["rows"], queued["complete"], queued["modules_scored"],
            queued["modules_total"]) == ([], False, 0, None)

    claim_mrc(api, job_id, "w1")
    report(api, job_id, row("conv1", 0.4, inputs="A", modules_total=4),
           row("conv2", 0.2, inputs="A", modules_total=4))
    first = api.client.get(f"/v1/jobs/{job_id}/mrc")
    table = first.json()
    assert (table["status"], table["complete"], table["modules_scored"],
            table["modules_total"]) == ("running", False, 2, 4)
    assert shown(table) == [(0, "conv1", 0.4), (1, "conv2", 0.2)]
    assert not any(r["selected"] for r in table["rows"])
    etag = first.headers["etag"]
    assert api.client.get(f"/v1/jobs/{job_id}/mrc",
                          headers={"If-None-Match": etag}).status_code == 304
    page = api.client.get(f"/v1/jobs/{job_id}/report").text
    assert "Scored so far: 2 of 4 modules" in page and "data-figure='mrc'" not in page

    # The attempt stops; the next takes over the rows it stored (same inputs), scores conv2
    # again (the last row written of a module wins, as in the stage's resume) and fc1.
    with api.sessions() as session:
        stages.release_stage(session, job_id, "mrc", owner="w1", error="worker lost")
    claim_mrc(api, job_id, "w2")
    assert shown(mrc(api, job_id)) == [(0, "conv1", 0.4), (1, "conv2", 0.2)]
    report(api, job_id, row("conv2", 0.25, inputs="A", modules_total=4),
           row("fc1", 0.1, inputs="A", modules_total=4, zero_gradient=True))
    later = api.client.get(f"/v1/jobs/{job_id}/mrc", headers={"If-None-Match": etag})
    assert later.status_code == 200 and later.headers["etag"] != etag
    assert shown(later.json()) == [(0, "conv1", 0.4), (1, "conv2", 0.25), (2, "fc1", 0.1)]
    # A row scored so far carries the flag too (null: written before it existed).
    assert [r["zero_gradient"] for r in later.json()["rows"]] == [None, None, True]
    assert later.json()["modules_scored"] == 3

    # Done: the recorded table, exactly as before (rows from mrc_rows, the selected flagged).
    recorded = [row(m, v) for m, v in zip(MODULES, (0.4, 0.25, 0.1, 0.3), strict=True)]
    with api.sessions() as session:
        stages.finish_stage_and_claim_next(
            session, job_id, "mrc", owner="w2",
            outputs=StageOutputs(mrc_rows=recorded, selected_module="fc1"))
    done = mrc(api, job_id)
    assert (done["complete"], done["modules_scored"], done["modules_total"]) == (True, 4, 4)
    assert shown(done) == [(i, m, r["mrc"]) for i, (m, r) in
                           enumerate(zip(MODULES, recorded, strict=True))]
    assert [r["module"] for r in done["rows"] if r["selected"]] == ["fc1"]
    assert "Scored so far" not in api.client.get(f"/v1/jobs/{job_id}/report").text


def test_rows_of_an_earlier_attempt_on_other_inputs_are_not_the_tables(
        api: Api, small_cnn_file: Path) -> None:
    """An attempt on another device type (another inputs digest) scores every module again:
    the earlier attempt's rows are not the table's, so they are not shown once it reports."""
    job_id = queued_job(api, small_cnn_file)
    claim_mrc(api, job_id, "w1")
    report(api, job_id, row("conv1", 0.4, inputs="cpu"), row("conv2", 0.2, inputs="cpu"))
    with api.sessions() as session:
        stages.release_stage(session, job_id, "mrc", owner="w1", error="worker lost")
    claim_mrc(api, job_id, "w2")
    report(api, job_id, row("conv1", 0.41, inputs="cuda"))
    assert shown(mrc(api, job_id)) == [(0, "conv1", 0.41)]


def test_a_sharded_stage_shows_its_shards_rows_in_table_order_and_keeps_them_if_it_fails(
        api: Api, small_cnn_file: Path) -> None:
    job_id = queued_job(api, small_cnn_file)
    claim_mrc(api, job_id, "prepare")
    with api.sessions() as session:
        stage_shards.start_shards(session, job_id, owner="prepare",
                                  groups=[["conv1", "fc1"], ["conv2", "fc2"]], inputs_key="set")
        for shard, owner in ((0, "w1"), (1, "w2")):
            stage_shards.claim_shard(session, job_id, shard, owner=owner,
                                     lease_seconds=LEASE_S, max_attempts=3)
    # Shards score side by side: their rows arrive out of table order, with no table size.
    report(api, job_id, row("fc1", 0.1, inputs="A"))
    report(api, job_id, row("conv2", 0.2, inputs="A"))
    table = mrc(api, job_id)
    assert shown(table) == [(1, "conv2", 0.2), (2, "fc1", 0.1)]
    assert (table["complete"], table["modules_scored"], table["modules_total"]) == (False, 2, 4)

    # Failed midway: the rows scored are still the evidence of how far it got, marked partial.
    with api.sessions() as session:
        stages.fail_job(session, job_id, "worker_error", "out of memory", force=True)
    failed = mrc(api, job_id)
    assert failed["status"] == "failed" and failed["complete"] is False
    assert shown(failed) == shown(table)
    page = api.client.get(f"/v1/jobs/{job_id}/report").text
    assert "Scored before the job failed: 2 of 4 modules" in page

    # The Python clients, sync and async, carry the marker.
    with RiftClient(api.url, api_key=api.key) as client:
        got = client.get_mrc(job_id)
    assert (got.complete, got.modules_scored, got.modules_total) == (False, 2, 4)
    assert [(r.position, r.module) for r in got.rows] == [(1, "conv2"), (2, "fc1")]

    async def read() -> Any:
        async with AsyncRiftClient(api.url, api_key=api.key) as client:
            return await client.get_mrc(job_id)

    got_async = asyncio.run(read())
    assert (got_async.complete, got_async.modules_scored, got_async.modules_total) == (
        False, 2, 4)


#: Ascent passes per module (the service's most) over twice the quick job's examples: stretches
#: the digits model's MRC stage (4 modules) well past the report interval (0.2 s) per module,
#: so that a read finds some modules scored and others left; the reads run with the worker
#: stopped, so no further margin is needed.
WORKER_MRC = {"steps": 200, "num_examples": 128, "batch_size": 128}


def test_a_real_workers_mrc_stage_shows_its_rows_as_they_are_scored(
        service_settings: Settings, start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], sessions: sessionmaker[Session],
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    """A real Celery worker runs the job; read with the worker stopped midway through its MRC
    stage, ``/mrc`` answers the rows it has reported, which are the final table's rows."""
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings))
    worker = start_worker()
    uploaded = upload_checkpoint(api, digits_checkpoint_path)
    spec = copy.deepcopy(quick_config)
    spec["mrc"].update(WORKER_MRC)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"],
                                                "config": spec})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    def midway() -> dict[str, Any] | None:
        with sessions() as session:
            job = jobs.get_job(session, job_id)
            reported = [e for e in jobs.list_events(session, job_id, limit=10_000)
                        if e.kind == "module_scored"]
        if job.stage != "mrc" or job.status != "running" or not 1 <= len(reported) <= 3:
            return None
        return mrc(api, job_id)

    partial = read_while_stopped(worker, midway, "an MRC stage with some modules scored")
    assert partial["complete"] is False and partial["modules_total"] == 4, partial
    assert 1 <= partial["modules_scored"] == len(partial["rows"]) <= 3, partial

    job = wait_while_progressing(sessions, job_id, lambda j: j.is_finished, "the end",
                                 JOB_TIMEOUT_S, workers=(worker,))
    assert job.status == "succeeded", job.error_message
    final = mrc(api, job_id)
    assert (final["complete"], final["modules_scored"], final["modules_total"]) == (True, 4, 4)
    # The rows shown midway are the table's rows, at their places in it.
    by_position = {r["position"]: r for r in final["rows"]}
    for scored in partial["rows"]:
        recorded = by_position[scored["position"]]
        assert {k: v for k, v in scored.items() if k not in ("seconds", "selected")} == {
            k: v for k, v in recorded.items() if k not in ("seconds", "selected")}
    assert [r["position"] for r in partial["rows"]] == sorted(
        r["position"] for r in partial["rows"])
