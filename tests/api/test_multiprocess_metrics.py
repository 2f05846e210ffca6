"""The files of ``PROMETHEUS_MULTIPROC_DIR``, written by real processes: a process that is gone
keeps its counters in the sums and loses its live gauges; the start empties the directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from api.multiprocess_metrics import forget_dead_processes, reset_directory, shared_exposition

#: A process that counts 3 requests and holds a live gauge at 5, then exits.
_ONE_PROCESS = """
from prometheus_client import CollectorRegistry, Counter, Gauge
registry = CollectorRegistry()
Counter("served", "Requests served.", registry=registry).inc(3)
Gauge("busy", "Requests in progress.", multiprocess_mode="livesum", registry=registry).set(5)
"""


def _run_process(directory: Path) -> None:
    subprocess.run([sys.executable, "-c", _ONE_PROCESS], check=True, timeout=60,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})


def test_a_dead_process_keeps_its_counters_and_loses_its_live_gauges(tmp_path: Path) -> None:
    _run_process(tmp_path)
    _run_process(tmp_path)
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 2
    page = shared_exposition(tmp_path).decode()
    assert "served_total 6.0" in page  # both processes' counts, though both are gone
    assert "\nbusy " not in page, page
    assert not list(tmp_path.glob("gauge_livesum_*.db"))


def test_a_live_process_keeps_its_gauges(tmp_path: Path) -> None:
    _run_process(tmp_path)
    (gauge_file,) = tmp_path.glob("gauge_livesum_*.db")
    # Named as this (running) process's file: it is not dropped.
    gauge_file.rename(tmp_path / f"gauge_livesum_{os.getpid()}.db")
    assert forget_dead_processes(tmp_path) == []
    assert "\nbusy 5.0\n" in shared_exposition(tmp_path).decode()


def test_reset_removes_the_metric_files_only(tmp_path: Path) -> None:
    directory = tmp_path / "absent" / "metrics"
    reset_directory(directory)  # created
    _run_process(directory)
    (directory / "notes.txt").write_text("not ours")
    reset_directory(directory)
    assert [path.name for path in directory.iterdir()] == ["notes.txt"]
    assert "served_total" not in shared_exposition(directory).decode()
