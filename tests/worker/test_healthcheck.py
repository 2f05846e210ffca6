"""``python -m worker.healthcheck NODE``, the compose workers' health check: a live worker's
ping answered without loading torch, a node that does not answer and a broker that cannot be
reached each one line and status 1. Its predecessor, ``celery -A worker.celery_app inspect
ping``, imported the worker module and torch with it (6 CPU s, 20 s on this loaded host) every
30 s against a 15 s timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.api.helpers import free_port
from tests.service_fixtures import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
#: The check as compose runs it, reporting whether it loaded torch on its way.
CHECK = ("import sys\nfrom worker.healthcheck import main\ncode = main(sys.argv[1:])\n"
         "print('torch loaded' if 'torch' in sys.modules else 'no torch')\nsys.exit(code)\n")


def healthcheck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHECK, *args], cwd=ROOT,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)


def test_a_live_worker_answers_without_torch_loaded(
        start_worker: Callable[..., WorkerProcess], service_env: dict[str, str]) -> None:
    worker = start_worker()
    result = healthcheck(service_env, f"{worker.name}@{socket.gethostname()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no torch"


def test_a_worker_not_answering_fails_in_one_line(service_env: dict[str, str]) -> None:
    result = healthcheck(service_env, "gone@nowhere", "--timeout", "1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == ["rift: worker gone@nowhere did not answer "
                                                  "within 1 s"]


def test_a_broker_not_answering_fails_in_one_line(service_env: dict[str, str]) -> None:
    port = free_port()
    result = healthcheck({**service_env, "BROKER_URL": f"redis://:secret@127.0.0.1:{port}/0"},
                         "worker@nowhere", "--timeout", "1")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "rift: BROKER_URL: the broker cannot be reached (OperationalError: "), lines
    assert "secret" not in result.stderr
