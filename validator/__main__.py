"""Entry point of the validator process (see the package docstring): limits first, then one
request from stdin, one reply to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from validator.limits import apply_limits, current_limits, peak_rss_kb


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "checkpoint":
        from validator.checkpoint import inspect_checkpoint_file

        return inspect_checkpoint_file(Path(request["path"]), request["display_name"]).to_json()
    if op == "dataset":
        from validator.dataset import inspect_dataset_file

        return inspect_dataset_file(request["path"], request["display_name"],
                                    int(request["max_unpacked_bytes"])).to_json()
    if op == "fit":
        from rift.config import RiftConfig
        from validator.fit import check_checkpoint_fits

        config = RiftConfig.model_validate(request["config"])
        shapes = {key: tuple(shape) for key, shape in request["shapes"].items()}
        check_checkpoint_fits(config, shapes, in_channels=request.get("in_channels"),
                              image_size=request.get("image_size"),
                              num_features=request.get("num_features"))
        return {}
    if op == "probe":
        # started/finished: CLOCK_MONOTONIC, shared by the processes of a machine.
        started = time.monotonic()
        time.sleep(float(request.get("sleep_seconds", 0)))
        return {"environment": sorted(os.environ), "limits": current_limits(),
                "torch_imported": "torch" in sys.modules, "started": started,
                "finished": time.monotonic()}
    raise ValueError(f"unknown operation {op!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validator")
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    args = parser.parse_args(argv)
    apply_limits(memory_bytes=args.memory_bytes, cpu_seconds=args.cpu_seconds)
    start = peak_rss_kb()
    from rift.errors import RiftError
    from validator.protocol import encode_error

    reply: dict[str, Any]
    try:
        reply = {"ok": True, "result": _handle(json.load(sys.stdin))}
    except RiftError as exc:
        reply = {"ok": False, "error": encode_error(exc)}
    except MemoryError:
        reply = {"ok": False, "memory": True}
    except Exception as exc:  # reported to the API, which answers 503 and logs it
        reply = {"ok": False, "internal": f"{type(exc).__name__}: {exc}"[:2000]}
    reply["peak_rss_kb"] = {"start": start, "end": peak_rss_kb()}
    json.dump(reply, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
