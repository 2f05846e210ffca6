"""What the MLflow export reads of a sweep job (``worker.mlflow_export.gather_job``): every
candidate with its module, rate and curve from its recorded row, in the sweep's order; one still
running or excluded has no points. Real database and store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import SweepCandidate, utcnow
from persistence.settings import Settings
from worker.mlflow_export import gather_job

pytestmark = pytest.mark.service

POINTS = [{"alpha": 0.0, "clean_accuracy": 80.0, "robust_accuracy": 40.0},
          {"alpha": 0.5, "clean_accuracy": 81.0, "robust_accuracy": None,
           "robust_accuracy_at_most": 39.0}]


def test_gather_reads_every_candidates_curve(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any], tmp_path: Path) -> None:
    job_id = submit(quick_config, send=False)
    results: list[dict[str, Any] | None] = [
        {"outcome": {"module": "fc", "lr": 0.01, "chosen_alpha": 0.5, "points": POINTS}},
        {"outcome": {"module": "conv1", "lr": 0.0010000001, "excluded": True,
                     "reason": "diverged"}},
        None]  # still running
    with sessions() as session:
        for index, result in enumerate(results):
            session.add(SweepCandidate(
                job_id=job_id, candidate=index, module=["fc", "conv1", "fc"][index],
                lr=[0.01, 0.0010000001, 0.05][index], status="done" if result else "running",
                attempts=1, created_at=utcnow(), result=result))
        session.commit()
    with sessions() as session:
        export = gather_job(session, service_settings.build_object_store(), job_id, tmp_path)
    assert [(c["index"], c["module"], c["lr"], c["excluded"]) for c in export.candidates] == [
        (0, "fc", 0.01, False), (1, "conv1", 0.0010000001, True), (2, "fc", 0.05, False)]
    assert export.candidates[0]["points"] == [
        {"alpha": 0.0, "clean_accuracy": 80.0, "robust_accuracy": 40.0},
        {"alpha": 0.5, "clean_accuracy": 81.0, "robust_accuracy": None}]
    assert export.candidates[1]["points"] == export.candidates[2]["points"] == []


def test_a_one_candidate_job_has_no_candidates(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any], tmp_path: Path) -> None:
    job_id = submit(quick_config, send=False)
    with sessions() as session:
        export = gather_job(session, service_settings.build_object_store(), job_id, tmp_path)
    assert list(export.candidates) == []
