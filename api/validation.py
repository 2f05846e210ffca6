"""Running checks in the sandboxed validator process (the ``validator`` package), one process per
check, so that the API process never imports torch nor holds an upload's tensors.

Each check is a fresh ``python -m validator`` child: its environment is an allow-list (no
database URL, broker URL, S3 keys or any other credential), it caps its own memory and CPU time
before reading anything (``validator/limits.py``), and it is killed after
``validation_timeout_seconds``. At most ``validation_max_concurrency`` children run at once per
API process (a semaphore); the others wait up to ``validation_queue_timeout_seconds``. The child's
memory high-water mark is logged with every check. Calls block: run them in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from api.errors import InvalidInput, ServiceUnavailable
from persistence.settings import Settings
from rift.config import RiftConfig
from validator.checkpoint import CheckpointInspection
from validator.dataset import DatasetInspection
from validator.protocol import decode_error

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The only variables the child inherits: locale and search paths, nothing that holds a secret.
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: One thread for torch and the BLAS libraries: a check is I/O bound and must not take the cores.
CHILD_VARIABLES = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
_STDERR_TAIL = 2000


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The validator's environment: the allow-listed variables of ``parent`` and fixed ones."""
    env = {name: parent[name] for name in INHERITED_VARIABLES if name in parent}
    env.update(CHILD_VARIABLES)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


class Validator:
    """Runs checks in validator processes, within the limits of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.validation_max_concurrency)

    # -------------------------------------------------------------------------- operations

    def inspect_checkpoint(self, path: Path, display_name: str) -> CheckpointInspection:
        """Validate a checkpoint file completely.

        Raises:
            RiftError: (CheckpointError) the file is not an acceptable checkpoint.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        result = self._run({"op": "checkpoint", "path": str(path), "display_name": display_name},
                           extra_memory=path.stat().st_size)
        return CheckpointInspection.from_json(result)

    def inspect_dataset(self, path: Path, display_name: str,
                        max_unpacked_bytes: int) -> DatasetInspection:
        """Validate a dataset archive completely (layout and every value).

        Raises:
            RiftError: (DatasetError) the archive is not an acceptable dataset.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        result = self._run({"op": "dataset", "path": str(path), "display_name": display_name,
                            "max_unpacked_bytes": max_unpacked_bytes})
        return DatasetInspection.from_json(result)

    def check_fit(self, config: RiftConfig, shapes: Mapping[str, tuple[int, ...]], *,
                  in_channels: int | None, image_size: int | None,
                  num_features: int | None) -> None:
        """Require the checkpoint of ``shapes`` to fit ``config``'s architecture built for the
        dataset's geometry, and the spec's module names to exist in it.

        Raises:
            RiftError: CheckpointMismatchError, ConfigError or UnknownArchitectureError.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        self._run({"op": "fit", "config": config.model_dump(mode="json"),
                   "shapes": {key: list(shape) for key, shape in shapes.items()},
                   "in_channels": in_channels, "image_size": image_size,
                   "num_features": num_features})

    def probe(self, sleep_seconds: float = 0.0) -> dict[str, Any]:
        """What a validator process sees: its environment variable names, its limits, and when
        it started and finished (``time.monotonic``) after sleeping ``sleep_seconds``."""
        return self._run({"op": "probe", "sleep_seconds": sleep_seconds})

    # ----------------------------------------------------------------------------- running

    def _run(self, request: dict[str, Any], *, extra_memory: int = 0) -> dict[str, Any]:
        settings = self._settings
        if not self._slots.acquire(timeout=settings.validation_queue_timeout_seconds):
            raise ServiceUnavailable(
                f"all {settings.validation_max_concurrency} validation slots stayed busy for "
                f"{settings.validation_queue_timeout_seconds:g} s; retry later",
                code="validation_busy")
        try:
            return self._run_child(request, settings.validation_memory_bytes + extra_memory)
        finally:
            self._slots.release()

    def _run_child(self, request: dict[str, Any], memory_bytes: int) -> dict[str, Any]:
        settings = self._settings
        command = [sys.executable, "-m", "validator", "--memory-bytes", str(memory_bytes),
                   "--cpu-seconds", str(settings.validation_cpu_seconds)]
        started = time.monotonic()
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_environment(os.environ), cwd=PROJECT_ROOT, start_new_session=True)
        try:
            out, err = child.communicate(json.dumps(request).encode(),
                                         timeout=settings.validation_timeout_seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise InvalidInput(
                f"validation took longer than the limit of "
                f"{settings.validation_timeout_seconds:g} s (VALIDATION_TIMEOUT_SECONDS)",
                code="validation_limit",
                details={"limit_seconds": settings.validation_timeout_seconds}) from None
        except BaseException:
            child.kill()
            child.communicate()
            raise
        seconds = time.monotonic() - started
        reply = self._parse(out)
        if reply is None:
            self._raise_for_exit(child.returncode, err, memory_bytes)
        peak = reply.get("peak_rss_kb", {})
        logger.info("validation %s: peak RSS %s kB (at start %s kB), %.2f s",
                    request["op"], peak.get("end"), peak.get("start"), seconds)
        if reply.get("ok"):
            result: dict[str, Any] = reply["result"]
            return result
        if "error" in reply:
            raise decode_error(reply["error"])
        if reply.get("memory"):
            raise self._memory_error(memory_bytes)
        logger.error("validation %s failed inside the validator: %s", request["op"],
                     reply.get("internal"))
        raise ServiceUnavailable("the validator failed unexpectedly; retry later",
                                 code="validation_failed")

    @staticmethod
    def _parse(out: bytes) -> dict[str, Any] | None:
        try:
            reply = json.loads(out)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def _memory_error(self, memory_bytes: int) -> InvalidInput:
        return InvalidInput(
            f"checking the file needed more memory than the validation limit of {memory_bytes} "
            "bytes (VALIDATION_MEMORY_BYTES)", code="validation_limit",
            details={"limit_bytes": memory_bytes})

    def _raise_for_exit(self, returncode: int, err: bytes, memory_bytes: int) -> NoReturn:
        settings = self._settings
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise InvalidInput(
                f"checking the file used more than the limit of {settings.validation_cpu_seconds} "
                "CPU seconds (VALIDATION_CPU_SECONDS)", code="validation_limit",
                details={"limit_cpu_seconds": settings.validation_cpu_seconds})
        tail = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
        if "MemoryError" in tail or "std::bad_alloc" in tail or returncode == -signal.SIGSEGV:
            raise self._memory_error(memory_bytes)
        logger.error("the validator exited with %s and no reply: %s", returncode, tail)
        raise ServiceUnavailable("the validator failed unexpectedly; retry later",
                                 code="validation_failed")

