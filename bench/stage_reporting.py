"""What a worker's stage reporting costs the stage's compute: the digits fine-tuning stage (40
epochs by default, one ``epoch`` event each, progress and cancellation checks) run with no
callbacks (``none``), with the worker's :class:`worker.runtime.StageReporter` writing to a scratch
Postgres database on the stage's thread (``reporter``) and with its writes on the reporter's own
thread as the stage tasks run it (``write_behind``), alternating; prints JSON with the median wall
and CPU seconds (of the whole process, so the writer thread's work counts) of each and their
difference to ``none``.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres; a scratch database is created and dropped).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/stage_reporting.py --repeats 5
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/stage_reporting.py --repeats 15 --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from persistence import jobs, stages
from persistence.db import session_factory_from_settings
from persistence.migrate import upgrade_database
from persistence.records import create_checkpoint
from persistence.settings import Settings
from rift.config import RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.pipeline import PipelineCallbacks, prepare_run, run_finetune_stage
from worker.runtime import StageReporter, WorkerResources

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MODES = ("none", "reporter", "write_behind")
STAGE = "mrc"  # the job's first stage, claimed for the reports; the fine-tuning is what runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40,
                        help="fine-tuning epochs (5: the demo job's stage, under 0.1 s)")
    args = parser.parse_args()
    database = f"rift_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            upgrade_database(url)
            checkpoint = folder / "digits.safetensors"
            make_digits_checkpoint(checkpoint, seed=0, device="cpu")
            spec = copy.deepcopy(DIGITS_DEMO_CONFIG)
            spec["device"] = "cpu"
            spec["finetune"].update(epochs=args.epochs,
                                    lr_milestones=[max(1, args.epochs * 3 // 4)])
            settings = Settings(database_url=url, store_kind="local",
                                store_root=folder / "objects")
            factory = session_factory_from_settings(settings)
            with factory() as session:
                row = create_checkpoint(
                    session, filename=checkpoint.name, size=1, sha256="0" * 64,
                    format="safetensors", storage_key="unused", num_tensors=1, num_parameters=1)
                job, _ = jobs.create_job(session, spec=spec, checkpoint_id=row.id)
            factory.kw["bind"].dispose()
            run = prepare_run(RiftConfig.model_validate(spec), checkpoint)
            resources = WorkerResources(settings)
            with resources.session() as session:
                # A running stage, so the reports write rows as a worker's do (a progress
                # write that matches no row commits nothing, and costs no WAL flush).
                stages.claim_stage(session, job.id, STAGE, owner=resources.worker_id,
                                   lease_seconds=3600, max_attempts=1)
            resources.session().close()  # first-use costs (engine, store) outside the timing
            for _ in range(args.repeats):  # alternate, so drifts in load hit both
                for mode in MODES:
                    callbacks = PipelineCallbacks()
                    reporter = None
                    if mode != "none":
                        reporter = StageReporter(resources, job.id, STAGE,
                                                 write_behind=mode == "write_behind")
                        reporter.start()
                        callbacks = PipelineCallbacks(
                            on_progress=reporter.on_progress, on_event=reporter.on_event,
                            should_cancel=reporter.should_cancel)
                    started, started_cpu = time.perf_counter(), time.process_time()
                    run_finetune_stage(run, "fc", callbacks)
                    if reporter is not None:
                        reporter.take_pending()  # as a stage ends: waits for a write in flight
                    wall[mode].append(time.perf_counter() - started)
                    cpu[mode].append(time.process_time() - started_cpu)
                    if reporter is not None:
                        reporter.stop()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    print(json.dumps({
        "benchmark": "stage_reporting", "job": f"digits fine-tuning, {args.epochs} epochs, cpu",
        "threads": 1, "repeats": args.repeats,
        "wall_seconds_median": {mode: median(values) for mode, values in wall.items()},
        "cpu_seconds_median": {mode: median(values) for mode, values in cpu.items()},
        "reporting_wall_fraction": {
            mode: round(median(wall[mode]) / median(wall["none"]) - 1, 4) for mode in MODES[1:]},
        "reporting_cpu_fraction": {
            mode: round(median(cpu[mode]) / median(cpu["none"]) - 1, 4) for mode in MODES[1:]},
        "wall_seconds": {mode: [round(v, 3) for v in values] for mode, values in wall.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
