"""Count the attacked (PGD) evaluations of the interpolation stage: the full α grid against the
exact selection (``interpolation.curve: "selection"``), on real runs, and check both choose the
same α. Prints one JSON document.

Runs: ``small_cnn`` adversarially trained on scikit-learn's digits (demo config, one run per
seed), and a ResNet-18 on CIFAR-shaped synthetic data (random weights standing in for θ_AT, a
learnable class pattern plus noise, so fine-tuning moves clean accuracy). Each run fine-tunes once,
then runs the interpolation stage twice, in "full" and in "selection" mode, timing both.

    .venv/bin/python bench/interpolation.py                  # digits seeds 0-3 + ResNet-18
    .venv/bin/python bench/interpolation.py --seeds 0 --skip-resnet
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rift.checkpoints import save_safetensors
from rift.config import ArchitectureSpec, RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.evaluation import evaluate_accuracy
from rift.models import build_model
from rift.pipeline import (
    _evaluation_data,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
)


def _compare(config: RiftConfig, checkpoint: Path, name: str, module: str | None) -> dict[str, Any]:
    run = prepare_run(config, checkpoint)
    if module is None:
        module = run_mrc_stage(run).selected_module
    finetuned = run_finetune_stage(run, module).state_dict
    modes: dict[str, Any] = {}
    for curve in ("full", "selection"):
        run.config = config.model_copy(update={"interpolation": config.interpolation.model_copy(
            update={"curve": curve})})
        started = time.perf_counter()
        result = run_interpolation_stage(run, finetuned)
        modes[curve] = (result, time.perf_counter() - started)
    full, full_seconds = modes["full"]
    selection, selection_seconds = modes["selection"]
    # What the clean pass over every α costs: one clean evaluation, times the grid.
    data = _evaluation_data(run, config.interpolation.selection_split)
    started = time.perf_counter()
    evaluate_accuracy(run.model, data, attack=None, batch_size=config.evaluation.batch_size,
                      device=run.device)
    clean_seconds = (time.perf_counter() - started) * len(full.points)
    measured = {p["alpha"]: p["robust_accuracy"] for p in selection.points
                if p["robust_accuracy"] is not None}
    return {
        "run": name,
        "module": module,
        "alpha_points": len(full.points),
        "evaluation_examples": len(data),
        "pgd_evaluations_full": full.robust_evaluations,
        "pgd_evaluations_selection": selection.robust_evaluations,
        "ratio": round(selection.robust_evaluations / full.robust_evaluations, 4),
        "alpha_full": full.chosen_alpha,
        "alpha_selection": selection.chosen_alpha,
        "same_alpha": full.chosen_alpha == selection.chosen_alpha,
        # The selection's robust values are the full curve's (same seed per evaluation).
        "same_robust_values": all(
            p["robust_accuracy"] == measured[p["alpha"]] for p in full.points
            if p["alpha"] in measured),
        "seconds_full": round(full_seconds, 2),
        "seconds_selection": round(selection_seconds, 2),
        "time_ratio": round(selection_seconds / full_seconds, 4),
        "clean_pass_seconds": round(clean_seconds, 2),
        "full_curve": full.points,
    }


def _digits(seed: int, device: str, alpha_step: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_digits_checkpoint(root / "at.safetensors", seed=seed, device=device)
        spec = copy.deepcopy(DIGITS_DEMO_CONFIG)
        spec["device"] = device
        spec["interpolation"]["alpha_step"] = alpha_step
        return _compare(RiftConfig.model_validate(spec), root / "at.safetensors",
                        f"digits seed {seed}", None)


def _resnet(device: str, alpha_step: float, train: int, test: int, attack_steps: int
            ) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 32, 32, 3))

    def images(labels: np.ndarray) -> np.ndarray:
        noise = rng.integers(0, 256, (len(labels), 32, 32, 3))
        return ((templates[labels] + noise) // 2).astype(np.uint8)

    y, y_test = rng.integers(0, 10, train), rng.integers(0, 10, test)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        np.savez(root / "data.npz", x=images(y), y=y, x_test=images(y_test), y_test=y_test)
        torch.manual_seed(0)
        model = build_model(ArchitectureSpec(name="resnet18", num_classes=10))
        # Random BatchNorm statistics: with the initial ones (mean 0, var 1) an untrained
        # ResNet in eval mode predicts one class for every image and every α ties.
        generator = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator)
                                          * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator)
                                         + 0.5)
        save_safetensors(root / "model.safetensors", model.state_dict())
        config = RiftConfig.model_validate({
            "architecture": {"name": "resnet18", "num_classes": 10},
            "dataset": {"name": "npz", "path": str(root / "data.npz")},
            "finetune": {"epochs": 2, "lr": 0.05, "lr_milestones": [1], "bn_stats": "freeze"},
            "interpolation": {"alpha_step": alpha_step},
            "attack": {"steps": attack_steps},
            "evaluation": {"batch_size": 128},
            "device": device,
        })
        return _compare(config, root / "model.safetensors",
                        "resnet18 CIFAR-shaped synthetic", "linear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--alpha-step", type=float, default=0.05)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--resnet-train", type=int, default=512)
    parser.add_argument("--resnet-test", type=int, default=64)
    parser.add_argument("--resnet-attack-steps", type=int, default=10,
                        help="PGD steps of the ResNet run (fewer on a loaded CPU: the count of "
                        "attacked evaluations does not depend on it)")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    runs = [] if args.skip_digits else [_digits(s, args.device, args.alpha_step)
                                        for s in args.seeds]
    if not args.skip_resnet:
        runs.append(_resnet(args.device, args.alpha_step, args.resnet_train, args.resnet_test,
                            args.resnet_attack_steps))
    full = sum(r["pgd_evaluations_full"] for r in runs)
    selection = sum(r["pgd_evaluations_selection"] for r in runs)
    print(json.dumps({
        "benchmark": "interpolation_selection",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "alpha_step": args.alpha_step,
        "pgd_evaluations_full": full,
        "pgd_evaluations_selection": selection,
        "ratio": round(selection / full, 4),
        "max_run_ratio": max(r["ratio"] for r in runs),
        "same_alpha": all(r["same_alpha"] for r in runs),
        "resnet": None if args.skip_resnet else {
            "train": args.resnet_train, "test": args.resnet_test,
            "attack_steps": args.resnet_attack_steps},
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
