"""The first upload after an API process starts: how long it waits for the validator.

Each run starts a real API process (``python -m uvicorn --factory api.main:create_app``, a fresh
interpreter, a private validator server, SQLite, local store) and times, from the moment the
process is spawned:

* ``at_once``: the first upload (a small ``small_cnn`` safetensors checkpoint) sent as soon as
  ``/healthz`` answers; ``answer_after_start_seconds`` is when its 201 came back, and
  ``upload_seconds`` the upload's own latency;
* ``delayed``: the first upload sent ``--delay`` seconds (30) after the spawn, its latency;

and, in both, a second upload right after the first (``next_upload_seconds``: a warm check, the
reference) and when ``/readyz`` first answered 200 (``ready_after_start_seconds``).

Variants, alternated in one sitting (``--repeats`` rounds): ``warm_start`` (this tree, the
validator started with the API), ``lazy`` (this tree, ``VALIDATION_WARM_START=false``: the first
upload starts it, as before), and with ``--before-root PATH`` ``before`` (another checkout, e.g.
main before this change, run with its own code). Prints JSON:

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/first_upload.py --repeats 2 \\
        --before-root /tmp/main-checkout > bench/results/first_upload_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
#: How long the API and its first upload may take on a loaded machine (seconds).
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_checkpoint(folder: Path) -> Path:
    """A valid ``small_cnn`` checkpoint for 8×8 grey images (random weights)."""
    from rift.checkpoints import save_safetensors
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                        image_size=8)
    path = folder / "small_cnn.safetensors"
    save_safetensors(path, model.state_dict())
    return path


def _database(folder: Path) -> tuple[str, str]:
    """A migrated SQLite database in ``folder`` and an API key of it."""
    from persistence.api_keys import create_key, create_project
    from persistence.db import session_factory_from_settings
    from persistence.migrate import upgrade_database
    from persistence.settings import Settings

    url = f"sqlite:///{folder / 'rift.db'}"
    upgrade_database(url)
    sessions = session_factory_from_settings(Settings(database_url=url))
    with sessions() as session:
        key = create_key(session, create_project(session, "bench"), ["read", "write"]).key
    sessions.kw["bind"].dispose()
    return url, key


def _upload(client: httpx.Client, checkpoint: Path) -> float:
    started = time.monotonic()
    with checkpoint.open("rb") as handle:
        response = client.post("/v1/checkpoints", files={"file": (checkpoint.name, handle)})
    if response.status_code != 201:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text[:300]}")
    return time.monotonic() - started


def run_once(root: Path, extra_env: dict[str, str], checkpoint: Path,
             delay: float | None) -> dict[str, Any]:
    """One API process from ``root``: its first upload at once (``delay`` None) or ``delay``
    seconds after its spawn."""
    folder = Path(tempfile.mkdtemp(prefix="rift-first-upload-"))
    url, key = _database(folder)
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": "memory://", "STORE_KIND": "local",
           "STORE_ROOT": str(folder / "objects"), "WORK_DIR": str(folder / "work"),
           "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", **extra_env}
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    load_before = os.getloadavg()[0]
    with (folder / "api.log").open("wb") as log:
        spawned = time.monotonic()
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    result: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=START_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            deadline = spawned + START_TIMEOUT_S
            while True:
                try:
                    if client.get("/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API did not start:\n"
                                       + (folder / "api.log").read_text()[-2000:])
                time.sleep(0.05)
            result["healthz_after_start_seconds"] = round(time.monotonic() - spawned, 3)
            ready: list[float] = []
            if delay is not None:
                # Meanwhile, when readiness came (a probe every 0.5 s, as an orchestrator's).
                while time.monotonic() < spawned + delay:
                    if not ready and client.get("/readyz").status_code == 200:
                        ready.append(time.monotonic() - spawned)
                    time.sleep(0.5)
            result["upload_seconds"] = round(_upload(client, checkpoint), 3)
            result["answer_after_start_seconds"] = round(time.monotonic() - spawned, 3)
            result["next_upload_seconds"] = round(_upload(client, checkpoint), 3)
            if not ready and client.get("/readyz").status_code == 200:
                ready.append(time.monotonic() - spawned)
            result["ready_after_start_seconds"] = round(ready[0], 3) if ready else None
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _median(runs: list[dict[str, Any]], name: str) -> float | None:
    values = [run[name] for run in runs if run.get(name) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every variant")
    parser.add_argument("--delay", type=float, default=30.0,
                        help="seconds after the spawn at which the delayed first upload comes")
    parser.add_argument("--before-root", type=Path, default=None,
                        help="a checkout of the code before this change, run as 'before'")
    args = parser.parse_args()
    variants: dict[str, tuple[Path, dict[str, str]]] = {
        "warm_start": (ROOT, {"VALIDATION_WARM_START": "true"}),
        "lazy": (ROOT, {"VALIDATION_WARM_START": "false"}),
    }
    if args.before_root is not None:
        variants["before"] = (args.before_root.resolve(), {})
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"at_once": [], "delayed": []} for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = make_checkpoint(Path(scratch))
        for _ in range(args.repeats):
            for scenario, delay in (("at_once", None), ("delayed", args.delay)):
                for name, (root, extra_env) in variants.items():
                    runs[name][scenario].append(run_once(root, extra_env, checkpoint, delay))
    summary = {
        name: {scenario: {field: _median(found, field) for field in (
            "healthz_after_start_seconds", "upload_seconds", "answer_after_start_seconds",
            "next_upload_seconds", "ready_after_start_seconds")}
            for scenario, found in scenarios.items()}
        for name, scenarios in runs.items()}
    print(json.dumps({
        "benchmark": "first_upload", "repeats": args.repeats, "delay_seconds": args.delay,
        "cpu_count": os.cpu_count(), "variants": {name: {"root": str(root), "env": env}
                                                  for name, (root, env) in variants.items()},
        "medians": summary, "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
