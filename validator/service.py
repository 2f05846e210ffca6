"""One check, from request to reply (the operations of ``protocol.py``), as a forked child of the
validator server runs it, and the check a spare child warms up with. Library errors are the
upload's fault and are encoded for the API; anything else is reported as an internal failure."""

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
                                       entry=request.get("entry"),
                                       digests=bool(request.get("digests"))).to_json()
    if op == "dataset":
        from validator.dataset import inspect_dataset_file

        return inspect_dataset_file(request["path"], request["display_name"],
                                    int(request["max_unpacked_bytes"])).to_json()
    if op == "fit":
        from rift.config import RiftConfig
        from validator.fit import check_checkpoint_fits

        config = RiftConfig.model_validate(request["config"])
        shapes = {key: tuple(shape) for key, shape in request["shapes"].items()}
        answer = check_checkpoint_fits(config, shapes, dtypes=request.get("dtypes"),
                                       normalizers=request.get("normalizers"),
                                       digests=request.get("digests"),
                                       final=bool(request.get("final")),
                                       in_channels=request.get("in_channels"),
                                       image_size=request.get("image_size"),
                                       num_features=request.get("num_features"),
                                       image_width=request.get("image_width"))
        return {"unknown_values": answer.unknown_values,
                "example_flops": answer.example_flops}
    if op == "probe":
        # started/finished: CLOCK_MONOTONIC, shared by the processes of a machine.
        started = time.monotonic()
        # Read first: a server that stops may exit while its last checks still run, and their
        # parent is then another process.
        server = os.getppid()
        time.sleep(float(request.get("sleep_seconds", 0)))
        # What a hostile file could make a check do, to show that the limits stop it.
        bytearray(int(request.get("allocate_bytes", 0)))
        spin_until = time.process_time() + float(request.get("busy_seconds", 0))
        while time.process_time() < spin_until:
            pass
        return {"environment": sorted(os.environ), "limits": current_limits(),
                "pid": os.getpid(), "server_pid": server, "started": started,
                "finished": time.monotonic()}
    raise ValueError(f"unknown operation {op!r}")


def warm_up_request() -> dict[str, Any]:
    """A ``fit`` request for a small built-in model (``small_cnn`` on 8×8 grey images) that a
    spare child answers before it waits for its check (``check_pool.py``): it pays the spare's
    first touches of the memory it shares with the server, and the first-call costs of building
    and probing a model, off the request's path (about twice the cost of the check itself on
    this machine: ``bench/validator_latency.py``). Built once, in the server."""
    import torch

    from rift.config import ArchitectureSpec, RiftConfig
    from rift.models import build_model

    architecture = ArchitectureSpec(name="small_cnn", num_classes=10)
    with torch.device("meta"):
        model = build_model(architecture, in_channels=1, image_size=8)
    config = RiftConfig(architecture=architecture, dataset={"name": "digits"})  # type: ignore[arg-type]
    return {"op": "fit", "config": config.model_dump(mode="json"),
            "shapes": {key: list(value.shape) for key, value in model.state_dict().items()},
            "dtypes": {}, "in_channels": 1, "image_size": 8, "num_features": None,
            "image_width": None}


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
