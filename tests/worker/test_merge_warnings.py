"""The merge of a sharded MRC stage (``worker.shards.merge_if_complete``) builds the table without
the library's MRC stage, so it makes that stage's table checks itself
(``rift.measured_warnings.mrc_table_warnings``): θ_AT's robust accuracy of 0 % on the MRC set
when no preflight ran, and a choice decided by a tie, are ``warning`` events of the job, written
with the stage's end. Real database, store and Celery app; the shards' parts are recorded as
shard tasks record them."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stage_shards, stages
from persistence.queue import RiftCelery
from persistence.settings import Settings
from persistence.stages import ClaimOutcome
from worker.runtime import WorkerResources
from worker.shards import merge_if_complete

pytestmark = pytest.mark.service


def _row(name: str, mrc: float, max_ascent_loss: float) -> dict[str, Any]:
    return {"name": name, "parameters": 10, "mrc": mrc, "worst_robust_loss": math.log(10) + mrc,
            "robust_accuracy_at_worst": 0.0, "robust_accuracy_drop": 0.0, "seconds": 0.1,
            "max_ascent_loss": max_ascent_loss, "passes": 2, "exact": True}


def _part(rows: list[dict[str, Any]], robust: float) -> dict[str, Any]:
    return {"rows": rows, "baseline_robust_loss": math.log(10),
            "baseline_robust_accuracy": robust, "selected_module": rows[0]["name"],
            "engine": "cached", "examples": 64, "seconds": 0.5,
            "module_order": ["conv1", "conv2", "conv3", "fc"]}


def _merged_warnings(sessions: sessionmaker[Session], sender: RiftCelery,
                     resources: WorkerResources, job_id: str,
                     parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    owner = resources.worker_id
    with sessions() as session:
        assert stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                                  max_attempts=3).outcome == ClaimOutcome.CLAIMED
        stage_shards.start_shards(session, job_id, owner=owner,
                                  groups=[[r["name"] for r in p["rows"]] for p in parts],
                                  inputs_key=f"jobs/{job_id}/mrc/attempt-1/adversarial")
    for shard, part in enumerate(parts):
        with sessions() as session:
            assert stage_shards.claim_shard(session, job_id, shard, owner=owner,
                                            lease_seconds=600, max_attempts=3
                                            ).outcome == ClaimOutcome.CLAIMED
            stage_shards.finish_shard(session, job_id, shard, owner=owner, result=part)
    assert merge_if_complete(sender, resources, job_id) == "merged"
    with sessions() as session:
        assert jobs.get_job(session, job_id).stage == "finetune"
        return [e.payload for e in jobs.list_events(session, job_id, limit=1000)
                if e.kind == "warning"]


def test_the_merge_of_a_sharded_table_warns_of_a_tie_across_shards_and_of_robust_accuracy_0(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    resources = WorkerResources(service_settings)
    # No shard sees the tie: conv1 and conv3 tie at 0 in different shards.
    tied = [_part([_row("conv1", 0.0, 2.3), _row("conv2", 0.2, 2.5)], 0.0),
            _part([_row("conv3", 0.0, 2.1), _row("fc", 0.4, 2.7)], 0.0)]
    config = copy.deepcopy(quick_config)
    config["preflight"] = {"examples": 0}
    warned = _merged_warnings(sessions, sender, resources, submit(config, send=False), tied)
    assert [w["stage"] for w in warned] == ["mrc", "mrc"], warned
    assert ("θ_AT's robust accuracy is 0 % on the MRC set's 64 adversarial examples"
            in warned[0]["message"])
    assert "2 modules have MRC exactly 0 (conv1, conv3)" in warned[1]["message"]
    assert "conv3 was chosen by the ascent's max_ascent_loss (2.1 for conv3 against 2.3 for " \
        "conv1)" in warned[1]["message"]

    # The same table under a preflight (it measured θ_AT, and warns itself), with distinct
    # values: the merge has nothing to say.
    distinct = [_part([_row("conv1", 0.1, 2.3), _row("conv2", 0.2, 2.5)], 0.0),
                _part([_row("conv3", 0.05, 2.1), _row("fc", 0.4, 2.7)], 0.0)]
    assert _merged_warnings(sessions, sender, resources, submit(quick_config, send=False),
                            distinct) == []
