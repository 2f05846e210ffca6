"""Device time of a worker's tasks (``WorkerMetrics``): a stage attempt and an MRC shard or sweep
candidate task count their seconds alike, as GPU seconds where they ran on CUDA (this machine
has no GPU: the CUDA path is checked with the device string a CUDA job records; the real
worker's CPU path is ``tests/api/test_part_device_time.py``)."""

from __future__ import annotations

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
