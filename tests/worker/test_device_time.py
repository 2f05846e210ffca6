"""Device time of a worker's tasks (``WorkerMetrics``): a stage attempt and an MRC shard or sweep
candidate task count their seconds alike, as GPU seconds where they ran on CUDA (this machine
has no GPU: the CUDA path is checked with the device string a CUDA job records; the real
worker's CPU path is ``tests/api/test_part_device_time.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from persistence.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import PartRun, WorkerResources


def test_parts_count_as_device_time_as_stages_do(sqlite_url: str, tmp_path: Path) -> None:
    resources = WorkerResources(Settings(database_url=sqlite_url, store_root=tmp_path / "objects",
                                         work_dir=tmp_path / "work", worker_device="cpu"))
    metrics = WorkerMetrics(resources, lambda queue: 0)
    cuda = "cuda:0 (NVIDIA H100 80GB HBM3)"
    metrics.observe_stage("mrc", "sharded", 2.0, cuda)
    assert metrics.timed_part("mrc", lambda: PartRun("done", cuda)) == "done"
    assert metrics.timed_part("finetune", lambda: PartRun("merged", "cpu")) == "merged"
    # Ended before it resolved a device (a duplicate message): timed, on no device.
    assert metrics.timed_part("finetune", lambda: PartRun("duplicate")) == "duplicate"
    found = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
             for family in text_string_to_metric_families(
                 generate_latest(metrics.registry).decode())
             for sample in family.samples}
    parts = sum(value for (name, labels), value in found.items()
                if name == "rift_part_duration_seconds_sum" and ("stage", "mrc") in labels)
    assert parts > 0
    gpu = found[("rift_gpu_seconds_total", (("stage", "mrc"),))]
    assert gpu == 2.0 + parts  # the shard's time too, not the stage attempt's alone
    assert found[("rift_device_seconds_total", (("device", "cuda"), ("stage", "mrc")))] == gpu
    assert ("rift_gpu_seconds_total", (("stage", "finetune"),)) not in found
    assert found[("rift_device_seconds_total", (("device", "cpu"), ("stage", "finetune")))] > 0


def test_a_worker_given_the_apis_metrics_folder_counts_into_it(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` (the API's setting) given to a worker, as a shared
    environment file does: prometheus_client reads it at import in every process, and the
    worker's first metric failed with FileNotFoundError where the folder did not exist."""
    folder = tmp_path / "not" / "made"
    script = (
        "from pathlib import Path\n"
        "from persistence.settings import Settings\n"
        "from worker.metrics import WorkerMetrics\n"
        "from worker.runtime import WorkerResources\n"
        f"root = Path({str(tmp_path)!r})\n"
        f"resources = WorkerResources(Settings(database_url={sqlite_url!r}, "
        "store_root=root / 'objects', work_dir=root / 'work', worker_device='cpu'))\n"
        "metrics = WorkerMetrics(resources, lambda queue: 0)\n"
        "metrics.observe_stage('mrc', 'done', 2.0, 'cpu')\n"
        "print('counted')\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "counted", done.stderr[-2000:]
    assert any(folder.glob("*.db"))  # its values went to the folder, as the variable says
