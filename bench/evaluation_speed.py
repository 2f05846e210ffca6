"""Time the interpolation stage with and without ``evaluation.fold_batchnorm``, side by side in one
process, and check that both give the same curve and the same α.

A PGD-trained ResNet-18 on CIFAR-shaped template data (``bench/synthetic.py``), one fine-tune of
one module, then the interpolation stage run ``--repeats`` times per setting, the settings
interleaved (a shared machine's load hits both alike). Prints JSON: median CPU and wall seconds of
each setting, their ratio, every point's clean and robust accuracy and the chosen α of each, and
whether they agree. CPU time is the figure to compare on a shared machine.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/evaluation_speed.py \\
        --output bench/results/evaluation_fold_batchnorm_resnet18_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from synthetic import write_template_dataset, write_theta_at  # bench/ is on sys.path

from rift.config import AttackSpec, RiftConfig
from rift.pipeline import prepare_run, run_finetune_stage, run_interpolation_stage

SETTINGS = ("off", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--at-epochs", type=int, default=1)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--alpha-step", type=float, default=0.25)
    parser.add_argument("--curve", choices=["full", "selection"], default="full")
    parser.add_argument("--module", default="layer4.1.conv2", help="the module fine-tuned")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = write_template_dataset(root / "data.npz", args.train, args.test)
        write_theta_at(root / "model.safetensors", "resnet18", dataset,
                       AttackSpec(steps=args.attack_steps), at_epochs=args.at_epochs,
                       device="cpu")
        config = RiftConfig.model_validate({
            "architecture": {"name": "resnet18", "num_classes": 10},
            "dataset": dataset.model_dump(), "device": "cpu",
            "preflight": {"examples": 0},
            "attack": {"steps": args.attack_steps},
            "finetune": {"epochs": 1, "lr_milestones": [], "lr": 0.01},
            "interpolation": {"alpha_step": args.alpha_step, "curve": args.curve},
        })
        run = prepare_run(config, root / "model.safetensors")
        finetuned = run_finetune_stage(run, args.module).state_dict
        runs: dict[str, list[dict[str, Any]]] = {setting: [] for setting in SETTINGS}
        for _ in range(args.repeats):
            for setting in SETTINGS:
                run.config = config.model_copy(update={"evaluation": config.evaluation.model_copy(
                    update={"fold_batchnorm": setting})})
                wall, cpu = time.perf_counter(), time.process_time()
                stage = run_interpolation_stage(run, finetuned)
                runs[setting].append({
                    "cpu_seconds": time.process_time() - cpu,
                    "wall_seconds": time.perf_counter() - wall,
                    "chosen_alpha": stage.chosen_alpha, "points": stage.points,
                    "attacked_examples": stage.attacked_examples})
    summary = {setting: {
        "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in rows), 2),
        "median_wall_seconds": round(statistics.median(r["wall_seconds"] for r in rows), 2),
        "cpu_seconds": [round(r["cpu_seconds"], 2) for r in rows],
        "chosen_alpha": rows[0]["chosen_alpha"], "attacked_examples": rows[0]["attacked_examples"],
        "points": rows[0]["points"],
    } for setting, rows in runs.items()}
    off, auto = summary["off"], summary["auto"]
    text = json.dumps({
        "benchmark": "evaluation_fold_batchnorm", "threads": torch.get_num_threads(),
        "arch": "resnet18", "train": args.train, "test": args.test, "at_epochs": args.at_epochs,
        "attack_steps": args.attack_steps, "alpha_step": args.alpha_step, "curve": args.curve,
        "module": args.module, "repeats": args.repeats,
        "settings": summary,
        "cpu_speedup_folded": round(off["median_cpu_seconds"] / auto["median_cpu_seconds"], 3),
        "wall_speedup_folded": round(off["median_wall_seconds"] / auto["median_wall_seconds"], 3),
        "same_chosen_alpha": off["chosen_alpha"] == auto["chosen_alpha"],
        "same_points": off["points"] == auto["points"],
        "same_attacked_examples": off["attacked_examples"] == auto["attacked_examples"],
    }, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
