"""What a worker's transactions of one demo job cost: the first stage's claim, then the
finishing transaction of each stage (the MRC and fine-tuning ones also claim the next stage, as a
worker chaining stages runs them, ``WORKER_CHAIN_STAGES``), each with outputs the size of the
digits demo job's (6 MRC rows, 5 epochs, 11 interpolation points; 2, 1 and 5 artifacts; a few
events not yet written), against a scratch Postgres database; prints JSON with the median wall
and thread CPU milliseconds of each and the statements each sends (an INSERT of many rows counted
once), over ``--jobs`` jobs after three not counted.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres; a scratch database is created and dropped).
The transactions are this checkout's (``persistence``, from ``PYTHONPATH``): run it from another
checkout to measure that one's.

    PYTHONPATH=. .venv/bin/python bench/stage_transactions.py --jobs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.db import create_db_engine, create_session_factory
from persistence.migrate import upgrade_database
from persistence.models import utcnow
from persistence.records import create_checkpoint
from persistence.stages import ArtifactRecord, ClaimTerms, StageOutputs

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SPEC = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}
MRC_ROWS = [{"name": f"m{i}", "parameters": 100, "mrc": 0.5, "worst_robust_loss": 1.5,
             "robust_accuracy_at_worst": 30.0, "robust_accuracy_drop": 10.0, "seconds": 0.1,
             "passes": 3, "exact": True} for i in range(6)]
EPOCHS = [{"epoch": i, "lr": 0.01, "train_loss": 0.5, "train_accuracy": 90.0,
           "val_accuracy": 90.0, "seconds": 0.01} for i in range(1, 6)]
POINTS = [{"alpha": i / 10, "clean_accuracy": 90.0, "robust_accuracy": 50.0} for i in range(11)]
STEPS = ("claim", "finish_mrc", "finish_finetune", "finish_interpolate")


def _artifacts(stage: str, names: list[str]) -> list[ArtifactRecord]:
    return [ArtifactRecord(name, f"jobs/x/{stage}/{name}", 100, "a" * 64, "application/json")
            for name in names]


def _reports(count: int) -> list[tuple[str, dict[str, Any], datetime]]:
    return [("module_scored", {"index": i}, utcnow()) for i in range(count)]


def _one_job(sessions: sessionmaker[Session], checkpoint_id: str
             ) -> dict[str, Callable[[], object]]:
    with sessions() as session:
        job_id = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id)[0].id
    terms = ClaimTerms("bench", 30.0, 3)

    def claim() -> object:
        with sessions() as session:
            return stages.claim_stage(session, job_id, "mrc", owner="bench", lease_seconds=30.0,
                                      max_attempts=3)

    def finish(stage: str, outputs: StageOutputs, reports: int, chain: bool) -> object:
        with sessions() as session:
            return stages.finish_stage_and_claim_next(
                session, job_id, stage, owner="bench", outputs=outputs,
                next_terms=terms if chain else None, events=_reports(reports),
                device="cpu" if stage == "mrc" else None)

    return {
        "claim": claim,
        "finish_mrc": lambda: finish("mrc", StageOutputs(
            mrc_rows=MRC_ROWS, artifacts=_artifacts("mrc", ["mrc.csv", "manifest.json"]),
            selected_module="m1", metrics={"mrc_seconds": 0.1}, summary={"modules": 6}), 7, True),
        "finish_finetune": lambda: finish("finetune", StageOutputs(
            epochs=EPOCHS, artifacts=_artifacts("finetune", ["finetuned.safetensors"]),
            selected_module="m1", metrics={"best_epoch": 5}, summary={"epochs": 5}), 6, True),
        "finish_interpolate": lambda: finish("interpolate", StageOutputs(
            interpolation_points=POINTS, artifacts=_artifacts("interpolate", [
                "tuned.safetensors", "result.json", "a.svg", "b.svg", "c.svg"]),
            chosen_alpha=0.5, metrics={"chosen_alpha": 0.5}, summary={"chosen_alpha": 0.5}),
            3, False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    database = f"rift_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    wall: dict[str, list[float]] = {step: [] for step in STEPS}
    cpu: dict[str, list[float]] = {step: [] for step in STEPS}
    statements: dict[str, int] = {}
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if sent[-1:] != [statement]:  # the rows of one INSERT: one statement
            sent.append(statement)

    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        upgrade_database(url)
        engine = create_db_engine(url)
        event.listen(engine, "before_cursor_execute", note)
        sessions = create_session_factory(engine)
        with sessions() as session:
            checkpoint_id = create_checkpoint(
                session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
                storage_key="checkpoints/m", num_tensors=1, num_parameters=1).id
        for index in range(args.jobs + 3):
            for step, run in _one_job(sessions, checkpoint_id).items():
                sent.clear()
                started, thread_cpu = time.perf_counter(), time.thread_time()
                run()
                if index >= 3:  # the first jobs warm the connection pool and the statement cache
                    wall[step].append((time.perf_counter() - started) * 1000)
                    cpu[step].append((time.thread_time() - thread_cpu) * 1000)
                    statements[step] = len(sent)
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    steps = {step: {"wall_ms": round(statistics.median(wall[step]), 2),
                    "cpu_ms": round(statistics.median(cpu[step]), 2),
                    "statements": statements[step]} for step in STEPS}
    print(json.dumps({
        "benchmark": "stage_transactions", "jobs": args.jobs, "steps": steps,
        "job_wall_ms": round(sum(s["wall_ms"] for s in steps.values()), 2),
        "job_cpu_ms": round(sum(s["cpu_ms"] for s in steps.values()), 2),
        "job_statements": sum(s["statements"] for s in steps.values()),
    }, indent=2))


if __name__ == "__main__":
    main()
