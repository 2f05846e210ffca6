"""The worker process's C allocator settings (glibc ``mallopt``), made once at its start.

PyTorch takes a CPU tensor's memory from ``malloc``. glibc maps a block above its mmap threshold
with ``mmap`` and unmaps it on ``free``, and gives the heap's free top back to the system beyond
its trim threshold; both thresholds start low (128 KiB, 256 KiB) and only rise as large mapped
blocks are freed, so which blocks fault their pages in again at every step depends on what the
process happened to free before. A CPU stage allocates and frees the same activations and
gradients every batch: in the worker each MRC stage of the demo job took ~25,000 page faults and
each interpolation ~13,000 (``getrusage``, CPU ~10 % above ``run_pipeline``'s), none with the
thresholds set (``WORKER_MALLOC_THRESHOLD_BYTES``). Setting them fixes them at the values glibc
slides to by itself after freeing a block of that size, so the memory a worker keeps is what a
long-running process keeps anyway. CUDA tensors do not come from ``malloc`` (PyTorch caches
them), so this changes CPU runs only; on another C library it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(threshold_bytes: int) -> bool:
    """Set glibc's mmap threshold to ``threshold_bytes`` and its trim threshold to twice that
    (0: change nothing). Returns whether both were set; False without glibc."""
    if threshold_bytes <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc refuses an mmap threshold above 32 MiB (HEAP_MAX_SIZE / 2 on 64-bit systems).
    done = (mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1
            and mallopt(M_TRIM_THRESHOLD, 2 * threshold_bytes) == 1)
    if not done:
        logger.warning("mallopt refused an mmap threshold of %d bytes", threshold_bytes)
    return done
