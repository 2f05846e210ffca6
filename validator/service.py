"""One check, from request to reply (the operations of ``protocol.py``), as a forked child of the
validator server runs it. Library errors are the upload's fault and are encoded for the API;
anything else is reported as an internal failure."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rift.errors import RiftError
from validator.limits import current_limits, peak_rss_kb
from validator.protocol import encode_error


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """The result of one operation.

    Raises:
        RiftError: the file or spec is not acceptable (CheckpointError, DatasetError, ...).
        ValueError: an unknown operation.
    """
    op = request.get("op")
    if op == "checkpoint":
        from validator.checkpoint import inspect_checkpoint_file

        return inspect_checkpoint_file(Path(request["path"]), request["display_name"],
                                       entry=request.get("entry")).to_json()
    if op == "dataset":
        from validator.dataset import inspect_dataset_file

        return inspect_dataset_file(request["path"], request["display_name"],
                                    int(request["max_unpacked_bytes"])).to_json()
    if op == "fit":
        from rift.config import RiftConfig
        from validator.fit import check_checkpoint_fits

        config = RiftConfig.model_validate(request["config"])
        shapes = {key: tuple(shape) for key, shape in request["shapes"].items()}
        check_checkpoint_fits(config, shapes, dtypes=request.get("dtypes"),
                              in_channels=request.get("in_channels"),
                              image_size=request.get("image_size"),
                              num_features=request.get("num_features"),
                              image_width=request.get("image_width"))
        return {}
    if op == "probe":
        # started/finished: CLOCK_MONOTONIC, shared by the processes of a machine.
        started = time.monotonic()
        time.sleep(float(request.get("sleep_seconds", 0)))
        return {"environment": sorted(os.environ), "limits": current_limits(),
                "pid": os.getpid(), "server_pid": os.getppid(), "started": started,
                "finished": time.monotonic()}
    raise ValueError(f"unknown operation {op!r}")


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``request`` (see ``protocol.py``), with this process's VmHWM before and
    after the work."""
    start = peak_rss_kb()
    reply: dict[str, Any]
    try:
        reply = {"ok": True, "result": handle(request)}
    except RiftError as exc:
        reply = {"ok": False, "error": encode_error(exc)}
    except MemoryError:
        reply = {"ok": False, "memory": True}
    except Exception as exc:  # reported to the API, which answers 503 and logs it
        reply = {"ok": False, "internal": f"{type(exc).__name__}: {exc}"[:2000]}
    reply["peak_rss_kb"] = {"start": start, "end": peak_rss_kb()}
    return reply
