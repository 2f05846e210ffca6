"""A sweep candidate that finished its fine-tune and curve when its worker began a warm
shutdown (SIGTERM) records them (``worker.candidates.record_candidate``), as a stage or an MRC
shard does, instead of being handed back to run again from its start. Real database and store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from persistence import stage_shards
from persistence.models import utcnow
from persistence.settings import Settings
from persistence.stage_shards import CANDIDATES
from persistence.stages import ClaimOutcome, StageOutputs
from rift.config import RiftConfig
from rift.pipeline import FinetuneStageResult, InterpolationStageResult
from rift.sweep import Candidate
from tests.persistence.helpers import MRC_ROWS
from worker.candidates import record_candidate
from worker.runtime import PartReporter, WorkerResources

pytestmark = pytest.mark.service


def test_a_candidate_finished_as_the_worker_stops_is_recorded_not_handed_back(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    from persistence import stages

    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    owner, now = resources.worker_id, utcnow()
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stages.finish_stage(session, job_id, "mrc", owner=owner,
                            outputs=StageOutputs(mrc_rows=MRC_ROWS), now=now)
        stages.claim_stage(session, job_id, "finetune", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stage_shards.start_candidates(session, job_id, owner=owner,
                                      candidates=[("fc", 0.01), ("fc", 0.1)], now=now)
        assert stage_shards.claim_part(
            session, CANDIDATES, job_id, 0, owner=owner, lease_seconds=600, max_attempts=3,
            now=now + timedelta(seconds=1)).outcome == ClaimOutcome.CLAIMED
    reporter = PartReporter(resources, job_id, CANDIDATES, 0)
    finetune = FinetuneStageResult("fc", [], 1, 0.1, {"fc.weight": torch.ones(2, 2)})
    points: list[dict[str, float | None]] = [
        {"alpha": 0.0, "clean_accuracy": 0.5, "robust_accuracy": 0.3},
        {"alpha": 1.0, "clean_accuracy": 0.6, "robust_accuracy": 0.2}]
    interpolation = InterpolationStageResult(points, 1.0, "validation", {}, {}, 0.1, {})
    run = SimpleNamespace(config=RiftConfig.model_validate(quick_config))
    resources.stopping.set()  # SIGTERM as the candidate's curve was finished
    record_candidate(resources, reporter, job_id, 0, 1, 1, run,  # type: ignore[arg-type]
                     Candidate("fc", 0.01), finetune, interpolation, header={"job_id": job_id})
    with sessions() as session:
        part = stage_shards.list_candidates(session, job_id)[0]
    assert (part.status, part.lease_owner) == ("done", None)
