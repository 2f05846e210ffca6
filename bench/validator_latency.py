"""Latency of one validator check as the API sees it (``api.validation.Validator``, a private
server): the ``fit`` check that ``POST /v1/jobs`` runs (the digits demo job against its
``small_cnn`` checkpoint, 8×8 grey images) and the ``probe`` check (no work: what a check costs
before its own work), ``--repeats`` of each, ``--pause`` seconds apart (the pace of job
creation, not a burst: a server that forks its next child after a check has had the time to).

For the probe, the span from the client's connect to the child's first statement
(``to_child_seconds``: the fork, or the hand-off to a child forked earlier, and the child's
set-up) is split from the rest (reading the request, limits, the reply), on the monotonic clock
both processes share. Prints JSON:

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/validator_latency.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from api.validation import Validator
from persistence.settings import Settings
from rift.config import RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG


def digits_shapes() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the demo job's checkpoint (``small_cnn`` for 8×8 grey digits)."""
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                        image_size=8)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "all": [round(value, 4) for value in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between two checks")
    args = parser.parse_args()
    config = RiftConfig.model_validate({**DIGITS_DEMO_CONFIG, "device": "cpu"})
    shapes = digits_shapes()
    validator = Validator(Settings())
    try:
        validator.probe()  # starts the server; not timed
        time.sleep(1.0)
        fit: list[float] = []
        probe: list[float] = []
        to_child: list[float] = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            validator.check_fit(config, shapes, in_channels=1, image_size=8, num_features=None)
            fit.append(time.perf_counter() - started)
            time.sleep(args.pause)
            sent, started = time.monotonic(), time.perf_counter()
            reply = validator.probe()
            probe.append(time.perf_counter() - started)
            to_child.append(reply["started"] - sent)
            time.sleep(args.pause)
    finally:
        validator.close()
    print(json.dumps({
        "benchmark": "validator_latency", "repeats": args.repeats, "pause_seconds": args.pause,
        "fit_seconds": _summary(fit), "probe_seconds": _summary(probe),
        "probe_to_child_seconds": _summary(to_child),
    }, indent=2))


if __name__ == "__main__":
    main()
