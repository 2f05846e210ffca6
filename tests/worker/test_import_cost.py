"""What a worker process pays before its first task: the worker module must import without
torchvision (whose import pulls in torch._dynamo, seconds on a small CPU) and without reading the
database or the broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import sys
import worker.celery_app
import rift.pipeline, rift.cli
print(sorted(name for name in ("torchvision", "torch._dynamo") if name in sys.modules))
"""


def test_worker_module_imports_without_torchvision_or_touching_the_database(tmp_path: Path) -> None:
    # An empty SQLite file and a broker nobody listens on: reading either at import would log a
    # warning with a traceback (the metrics collector used to query both when registered).
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
           "BROKER_URL": "redis://127.0.0.1:9/0", "STORE_ROOT": str(tmp_path / "objects"),
           "WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
    assert "could not be" not in done.stderr, done.stderr
