"""Time the sharded MRC stage with 1, 2 and 4 worker processes (one thread each) and print JSON.

Each run does what the service does for ``mrc.shards = N``: the prepare step (make the adversarial
set once on θ_AT and store it in a file, standing in for the object store), then N worker processes
that each build the run from the checkpoint and data, load the stored set and score one shard of
modules (balanced by ``rift.mrc_shards``), then the merge. The time is the whole stage, from the
prepare step to the merged table, so the workers' start-up (spawning Python, importing torch,
loading the data) counts. Processes replace Celery here; the queue adds milliseconds per message.
ResNet-18 on CIFAR-shaped synthetic data, random weights (the cost does not depend on the values).

    PYTHONPATH=. .venv/bin/python bench/mrc_workers.py --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rift import checkpoints
from rift.config import ArchitectureSpec, RiftConfig
from rift.models import build_model
from rift.mrc import select_modules
from rift.mrc_shards import plan_shards
from rift.pipeline import MRCInputs, MRCStageResult, make_mrc_inputs, prepare_run, score_modules


def _score_shard(task: tuple[str, str, str, list[str]]) -> dict[str, Any]:
    config_json, checkpoint, inputs_path, modules = task
    torch.set_num_threads(1)
    started = time.perf_counter()
    run = prepare_run(RiftConfig.model_validate_json(config_json), checkpoint)
    stored = checkpoints.load_state_dict(inputs_path)
    result = score_modules(run, MRCInputs(stored["adversarial"], stored["labels"]), modules)
    return {**result.to_json(), "wall_seconds": time.perf_counter() - started}


def _stage(config: RiftConfig, checkpoint: Path, folder: Path, workers: int,
           start_method: str = "spawn") -> dict[str, Any]:
    started = time.perf_counter()
    run = prepare_run(config, checkpoint)
    inputs = make_mrc_inputs(run)
    inputs_path = folder / f"inputs-{workers}.safetensors"
    checkpoints.save_safetensors(inputs_path, {"adversarial": inputs.adversarial,
                                               "labels": inputs.labels})
    names = select_modules(run.model, config.mrc)
    groups = plan_shards(run.model, config.mrc.model_copy(update={"shards": workers}),
                         inputs.adversarial).groups
    prepared = time.perf_counter() - started
    tasks = [(config.model_dump_json(), str(checkpoint), str(inputs_path), g) for g in groups]
    context = multiprocessing.get_context(start_method)
    with context.Pool(len(groups)) as pool:
        parts = pool.map(_score_shard, tasks)
    merged = MRCStageResult.merge(
        [MRCStageResult.from_json({k: v for k, v in p.items() if k != "wall_seconds"})
         for p in parts], names)
    return {"workers": workers, "stage_seconds": round(time.perf_counter() - started, 2),
            "prepare_seconds": round(prepared, 2),
            "shard_wall_seconds": [round(p["wall_seconds"], 2) for p in parts],
            "shard_modules": [len(g) for g in groups],
            "table": [(row["name"], row["mrc"]) for row in merged.rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of the random images (ResNet-18 pools adaptively)")
    parser.add_argument("--start-method", choices=["spawn", "fork"], default="spawn",
                        help="how the worker processes start: spawn (a fresh interpreter each, "
                        "as on a worker machine; their start-up is timed) or fork (copies of "
                        "this process, torch already imported: seconds less per worker, for a "
                        "smoke run that checks the merged tables, not the times)")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        np.savez(folder / "data.npz", x=rng.integers(0, 256, (512, args.image_size, args.image_size, 3),
                                         dtype=np.uint8),
                 y=rng.integers(0, 10, 512))
        torch.manual_seed(0)
        model = build_model(ArchitectureSpec(name="resnet18", num_classes=10))
        checkpoints.save_safetensors(folder / "model.safetensors", model.state_dict())
        config = RiftConfig.model_validate({
            "architecture": {"name": "resnet18", "num_classes": 10},
            "dataset": {"name": "npz", "path": str(folder / "data.npz")},
            "mrc": {"num_examples": args.examples, "batch_size": args.batch_size,
                    "steps": args.steps},
            "device": "cpu"})
        runs = [_stage(config, folder / "model.safetensors", folder, n, args.start_method)
                for n in args.workers]
    base = runs[0]["stage_seconds"]
    same = all(r["table"] == runs[0]["table"] for r in runs)
    for r in runs:
        r["speedup"] = round(base / r["stage_seconds"], 3)
        del r["table"]
    text = json.dumps({
        "benchmark": "mrc_workers", "arch": "resnet18", "device": "cpu",
        "cpu_cores": os.cpu_count(), "threads_per_worker": 1,
        "examples": args.examples, "batch_size": args.batch_size, "steps": args.steps,
        "image_size": args.image_size, "start_method": args.start_method,
        "same_table_for_every_worker_count": same, "runs": runs,
        "note": "shared 2-core machine: more than 2 workers cannot run at once, and other "
                "processes compete for the cores, so figures are noisy",
    }, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
