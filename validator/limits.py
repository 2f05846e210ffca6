"""The validator's resource limits, applied by the child to itself before it reads any input, and
its own memory high-water mark. Imports no torch."""

from __future__ import annotations

import resource
import signal

#: Open files: torch's import opens its libraries one at a time; checks open one or two files.
MAX_OPEN_FILES = 256
#: Largest file the child may write: a check writes nothing, but importing torch probes the temp
#: folder with a small file (tempfile.gettempdir), which fails when no write is allowed at all.
MAX_FILE_BYTES = 1024 * 1024


def apply_limits(*, memory_bytes: int, cpu_seconds: int) -> None:
    """Cap this process: ``memory_bytes`` of data segment (RLIMIT_DATA: heap and private writable
    mappings, the memory a hostile file could make it allocate; read-only file mappings and the
    code of shared libraries do not count), ``cpu_seconds`` of CPU time (SIGXCPU, then SIGKILL a
    second later), no core dumps, no file larger than :data:`MAX_FILE_BYTES` (a longer write fails
    with EFBIG instead of killing the process), and a bounded number of open files."""
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))


def current_limits() -> dict[str, int]:
    """The soft limits :func:`apply_limits` sets, as this process sees them (-1: unlimited)."""
    names = {"data": resource.RLIMIT_DATA, "cpu": resource.RLIMIT_CPU,
             "fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE,
             "core": resource.RLIMIT_CORE}
    return {name: int(resource.getrlimit(limit)[0]) for name, limit in names.items()}


def peak_rss_kb() -> int:
    """This process's resident-set high-water mark (VmHWM), in kB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
