"""How long a Celery worker takes to be ready: started with a fresh interpreter (as a deployment
starts it) against forked from the tests' launcher (``tests/preloaded_launcher.py``), which has
imported torch, the library and Celery once. Alternates the two, side by side in one run, and
prints JSON with each start's seconds (launch until the worker logs " ready.") and the ratio of
the medians.

Needs Redis on 127.0.0.1:6379 (db 11, a queue of its own); the database is a scratch SQLite file.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/worker_start.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from persistence.migrate import upgrade_database
from tests.preloaded_launcher import Launcher
from tests.service_fixtures import PROJECT_ROOT, launch_worker, service_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"fresh_interpreter": [], "forked": []}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env = service_environment(f"sqlite:///{root / 'rift.db'}", args.broker,
                                  f"bench-start-{uuid.uuid4().hex[:8]}", root)
        upgrade_database(env["DATABASE_URL"])
        launcher = Launcher(root, PROJECT_ROOT)
        began = time.monotonic()
        launcher.wait_ready()
        launcher_seconds = time.monotonic() - began
        try:
            for index in range(args.repeats):
                for mode in seconds:
                    name = f"{mode}-{index}"
                    started = time.monotonic()
                    worker = launch_worker(env, root / f"{name}.log", name,
                                           launcher if mode == "forked" else None)
                    worker.wait_ready()
                    seconds[mode].append(round(time.monotonic() - started, 3))
                    worker.stop()
        finally:
            launcher.close()
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    report = {
        "benchmark": "worker_start",
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": medians,
        "launcher_start_seconds": round(launcher_seconds, 3),
        "ratio_fresh_over_forked": round(medians["fresh_interpreter"] / medians["forked"], 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
