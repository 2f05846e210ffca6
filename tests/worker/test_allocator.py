"""The worker's malloc settings (worker/allocator.py): with them, freeing and allocating the same
CPU blocks again, as every step of a CPU stage does, takes no new page faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from persistence.settings import Settings
from worker.allocator import tune_malloc

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Three 8 MiB blocks made (and written) and freed 20 times, as a step's activations are; prints
# the page faults they took after two warm-up rounds.
_SCRIPT = """
import resource, sys
from worker.allocator import tune_malloc
tuned = tune_malloc(int(sys.argv[1]))
def rounds(count):
    for _ in range(count):
        blocks = [bytearray(8 * 1024**2) for _ in range(3)]
        del blocks
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(threshold: int) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(threshold)], cwd=PROJECT_ROOT,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          capture_output=True, text=True, timeout=60, check=True)
    tuned, count = done.stdout.split()
    return tuned, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_reuses_freed_blocks_without_page_faults() -> None:
    left, untuned = faults(0)
    assert left == "False"  # 0: malloc left as it is
    tuned, count = faults(Settings().worker_malloc_threshold_bytes)
    assert tuned == "True"
    # 60 blocks of 2,048 pages: glibc's own thresholds give most of them back and fault them in
    # again; tuned, the heap keeps them.
    assert untuned > 20_000
    assert count < untuned / 20


def test_nothing_is_changed_for_zero_and_glibc_limit_is_the_settings_bound() -> None:
    assert tune_malloc(0) is False
    with pytest.raises(ValidationError, match="worker_malloc_threshold_bytes"):
        Settings(worker_malloc_threshold_bytes=64 * 1024**2)


# The worker's entry module imported as ``celery -A worker.celery_app`` does, then torch; prints
# the huge-pages setting torch saw and the page faults of one 64 MiB tensor (every page written).
_ENTRY_THEN_TENSOR = """
import os, resource
import worker.celery_app
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(64 << 20, dtype=torch.uint8)
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_the_worker_backs_large_cpu_tensors_with_huge_pages(tmp_path: Path) -> None:
    """Blocks above glibc's 32 MiB mmap ceiling (a ResNet's activations at batch 128) are mapped
    afresh at every step whatever mallopt says; the worker's entry module asks torch for huge
    pages before torch starts, so such a block faults in 2 MiB pages, not 16,384 of 4 KiB."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    # The embedded defaults (SQLite, local store) under tmp_path: only the import is exercised.
    done = subprocess.run([sys.executable, "-c", _ENTRY_THEN_TENSOR], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    setting, faults = done.stdout.split()
    assert setting == "1"
    if _HUGE_PAGES.exists() and "[never]" not in _HUGE_PAGES.read_text():
        assert int(faults) < 4096, faults  # 16,384 without huge pages


def test_an_operators_huge_pages_setting_is_kept(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "THP_MEM_ALLOC_ENABLE": "0"}
    done = subprocess.run([sys.executable, "-c", _ENTRY_THEN_TENSOR], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0"
