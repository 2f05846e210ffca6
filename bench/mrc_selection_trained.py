"""MRC of a PGD-trained ResNet-18 (the whole-job bench's ``--at-epochs 2`` θ_AT: template data, 512
train / 64 test, PGD-5) with ``mrc.table`` "selection" then "full", in one process; prints one JSON
document: each table's CPU seconds, selected module and rows (mrc, max_ascent_loss, passes,
exact), the passes of each, and whether the selection chose the full table's module with its
exact rows identical to the full table's.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/mrc_selection_trained.py \\
        --output bench/results/mrc_selection_resnet18_trained_cpu.json

The defaults are the README's run (about 3 minutes of CPU); the size flags shrink it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from synthetic import write_template_dataset, write_theta_at  # bench/ is on sys.path

from rift.config import AttackSpec, RiftConfig
from rift.pipeline import prepare_run, run_mrc_stage


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=512, help="template training images")
    parser.add_argument("--test", type=int, default=64, help="template test images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--at-epochs", type=int, default=2,
                        help="PGD training epochs of θ_AT (0: random weights)")
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--examples", type=int, default=32, help="mrc.num_examples")
    parser.add_argument("--batch-size", type=int, default=16, help="mrc.batch_size")
    parser.add_argument("--steps", type=int, default=10, help="mrc.steps (ascent passes)")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    return parser.parse_args()


def _table(run_config: dict[str, Any], checkpoint: Path, table: str) -> dict[str, Any]:
    config = json.loads(json.dumps(run_config))
    config["mrc"]["table"] = table
    run = prepare_run(RiftConfig.model_validate(config), checkpoint)
    started = time.process_time()
    mrc = run_mrc_stage(run)
    return {"cpu": time.process_time() - started, "selected": mrc.selected_module,
            "rows": {row["name"]: [row["mrc"], row["max_ascent_loss"], row.get("passes"),
                                   row.get("exact")] for row in mrc.rows}}


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = write_template_dataset(root / "data.npz", args.train, args.test,
                                         image_size=args.image_size)
        write_theta_at(root / "model.safetensors", "resnet18", dataset,
                       AttackSpec(steps=args.attack_steps), at_epochs=args.at_epochs,
                       device="cpu")
        base = {"architecture": {"name": "resnet18", "num_classes": 10},
                "dataset": dataset.model_dump(), "interpolation": {"alpha_step": 0.05},
                "attack": {"steps": args.attack_steps},
                "mrc": {"num_examples": args.examples, "batch_size": args.batch_size,
                        "steps": args.steps},
                "device": "cpu"}
        selection = _table(base, root / "model.safetensors", "selection")
        full = _table(base, root / "model.safetensors", "full")
    passes_selection = sum(row[2] or 0 for row in selection["rows"].values())
    passes_full = sum(row[2] or 0 for row in full["rows"].values())
    report = {
        "benchmark": "mrc_selection_resnet18_trained",
        "script": "bench/mrc_selection_trained.py",
        "threads": torch.get_num_threads(),
        "settings": {key: value for key, value in vars(args).items() if key != "output"},
        "selection": selection,
        "full": full,
        "passes_selection": passes_selection,
        "passes_full": passes_full,
        "cpu_speedup_selection_over_full": round(full["cpu"] / selection["cpu"], 3),
        "same_selected_module": selection["selected"] == full["selected"],
        # A row the selection completed is the full table's, bit for bit (rift.mrc_selection).
        "exact_rows_identical": all(row[:2] == full["rows"][name][:2]
                                    for name, row in selection["rows"].items() if row[3]),
    }
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
