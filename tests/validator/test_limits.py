"""The validator's own limits (``validator/limits.py``): memory and CPU time are capped."""

from __future__ import annotations

import signal
import subprocess
import sys

_PREFIX = "from validator.limits import apply_limits, peak_rss_kb\n"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PREFIX + code], capture_output=True, text=True,
                          timeout=60)


def test_memory_past_the_limit_is_refused() -> None:
    result = run("apply_limits(memory_bytes=64 * 2**20, cpu_seconds=30)\n"
                 "try:\n    bytearray(256 * 2**20)\nexcept MemoryError:\n    print('refused')\n"
                 "print(peak_rss_kb() > 0)")
    assert result.stdout.split() == ["refused", "True"], result.stderr


def test_cpu_time_past_the_limit_kills_the_process() -> None:
    result = run("apply_limits(memory_bytes=256 * 2**20, cpu_seconds=1)\nwhile True:\n    pass")
    assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
