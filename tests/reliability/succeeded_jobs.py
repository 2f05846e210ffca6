"""Jobs recorded as succeeded by hand (no stage run), for the tests of materializations: the
only work left is the materialization itself. θ_FT is a perturbed copy of the digits checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from persistence import stages
from persistence.models import Materialization
from persistence.stages import ArtifactRecord, StageOutputs
from persistence.storage import ObjectStore
from rift import checkpoints
from tests.service_fixtures import WorkerProcess
from worker.stages import FINETUNED


def perturbed(theta_at: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_FT unlike θ_AT in every floating-point tensor, so θ_α differs from both."""
    return {name: tensor + 0.01 if tensor.is_floating_point() else tensor.clone()
            for name, tensor in theta_at.items()}


def succeeded_job(sessions: sessionmaker[Session], store: ObjectStore, submit: Callable[..., str],
                  spec: dict[str, Any], theta_ft: dict[str, torch.Tensor], tmp_path: Path) -> str:
    """A job recorded as succeeded with ``theta_ft`` as its stored θ_FT, no stage run."""
    job_id = submit(spec, send=False)
    path = tmp_path / FINETUNED
    checkpoints.save_safetensors(path, theta_ft)
    stored = store.put_file(f"jobs/{job_id}/finetune/attempt-1/{FINETUNED}", path)
    outputs = {"finetune": StageOutputs(artifacts=[ArtifactRecord(
        FINETUNED, stored.key, stored.size, stored.sha256, stored.content_type)])}
    with sessions() as session:
        for stage in ("mrc", "finetune", "interpolate"):
            stages.claim_stage(session, job_id, stage, owner="test", lease_seconds=60,
                               max_attempts=3)
            stages.finish_stage(session, job_id, stage, owner="test",
                                outputs=outputs.get(stage, StageOutputs()))
    return job_id


def materialization(sessions: sessionmaker[Session], row_id: str) -> Materialization:
    with sessions() as session:
        return session.get_one(Materialization, row_id)


def wait_until(condition: Callable[[], bool], what: str, workers: tuple[WorkerProcess, ...],
             timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; past ``timeout`` fail with the workers' log tails."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"never reached {what}\n{logs}")
        time.sleep(0.1)
