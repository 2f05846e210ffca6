"""Count the attacks of the interpolation stage: the full α grid against the exact selection
(``interpolation.curve: "selection"``, which also stops each attack once its verdict against the
bar is certain), on real runs, and check both choose the same α. Costs are counted in α points
attacked at all (``pgd_evaluations_*``), in attacked examples (``pgd_examples_*``, the cost early
stopping cuts) and in PGD gradient steps (examples × steps). Prints one JSON document.

Runs: ``small_cnn`` adversarially trained on scikit-learn's digits (demo config, one run per
seed), and a ResNet-18 on CIFAR-shaped synthetic data (random weights standing in for θ_AT, a
learnable class pattern plus noise, so fine-tuning moves clean accuracy). Each run fine-tunes once,
then runs the interpolation stage twice, in "full" and in "selection" mode, timing both.

    .venv/bin/python bench/interpolation.py                  # digits seeds 0-3 + ResNet-18
    .venv/bin/python bench/interpolation.py --seeds 0 --skip-resnet
    .venv/bin/python bench/interpolation.py --seeds 0 --skip-resnet --digits-checkpoint AT.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from synthetic import write_template_dataset, write_theta_at  # bench/ is on sys.path

from rift import sequential_attack
from rift.config import RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.evaluation import evaluate_accuracy
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
    bounds = {p["alpha"]: p["robust_accuracy_at_most"] for p in selection.points
              if p["robust_accuracy_at_most"] is not None}
    chosen = next(p for p in selection.points if p["alpha"] == selection.chosen_alpha)
    chosen_full = next(p for p in full.points if p["alpha"] == full.chosen_alpha)
    return {
        "run": name,
        "module": module,
        "alpha_points": len(full.points),
        "evaluation_examples": len(data),
        "pgd_evaluations_full": full.robust_evaluations,
        "pgd_evaluations_selection": selection.robust_evaluations,
        "ratio": round(selection.robust_evaluations / full.robust_evaluations, 4),
        "pgd_examples_full": full.attacked_examples,
        "pgd_examples_selection": selection.attacked_examples,
        "example_ratio": round(selection.attacked_examples / full.attacked_examples, 4),
        "gradient_steps_full": full.gradient_steps,
        "gradient_steps_selection": selection.gradient_steps,
        "points_stopped_early": len(bounds),
        "alpha_full": full.chosen_alpha,
        "alpha_selection": selection.chosen_alpha,
        "same_alpha": full.chosen_alpha == selection.chosen_alpha,
        "same_chosen_robust_accuracy": chosen["robust_accuracy"] == chosen_full["robust_accuracy"],
        # Values measured in full are the full curve's (same order, chunks and random starts)...
        "same_robust_values": all(
            p["robust_accuracy"] == measured[p["alpha"]] for p in full.points
            if p["alpha"] in measured),
        # ...and every bound of a point cut short lies above its full value.
        "bounds_hold": all(p["robust_accuracy"] <= bounds[p["alpha"]] for p in full.points
                           if p["alpha"] in bounds),
        "seconds_full": round(full_seconds, 2),
        "seconds_selection": round(selection_seconds, 2),
        "time_ratio": round(selection_seconds / full_seconds, 4),
        "clean_pass_seconds": round(clean_seconds, 2),
        "full_curve": full.points,
    }


def _digits(seed: int, device: str, alpha_step: float,
            checkpoint: Path | None = None) -> dict[str, Any]:
    """One digits run; ``checkpoint``: θ_AT that ``make_digits_checkpoint`` already made for
    this seed (else it is trained here)."""
    with tempfile.TemporaryDirectory() as folder:
        if checkpoint is None:
            checkpoint = Path(folder) / "at.safetensors"
            make_digits_checkpoint(checkpoint, seed=seed, device=device)
        spec = copy.deepcopy(DIGITS_DEMO_CONFIG)
        spec["device"] = device
        spec["interpolation"]["alpha_step"] = alpha_step
        return _compare(RiftConfig.model_validate(spec), checkpoint, f"digits seed {seed}", None)


def _resnet(device: str, alpha_step: float, train: int, test: int, attack_steps: int,
            tuned_module: str, at_epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = write_template_dataset(root / "data.npz", train, test)
        config = RiftConfig.model_validate({
            "architecture": {"name": "resnet18", "num_classes": 10},
            "dataset": dataset.model_dump(),
            "finetune": {"epochs": 2, "lr": 0.05, "lr_milestones": [1], "bn_stats": "freeze"},
            "interpolation": {"alpha_step": alpha_step},
            "attack": {"steps": attack_steps},
            "evaluation": {"batch_size": 128},
            "device": device,
        })
        # A robust θ_AT, so that the curve is not flat (0: random weights, one class at every α).
        write_theta_at(root / "model.safetensors", "resnet18", config.dataset, config.attack,
                       at_epochs=at_epochs, device=device)
        name = "resnet18 CIFAR-shaped synthetic" + (f", AT {at_epochs} epochs" if at_epochs
                                                     else ", untrained")
        return _compare(config, root / "model.safetensors", name, tuned_module)


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
    parser.add_argument("--resnet-module", default="linear",
                        help="module the ResNet run fine-tunes (the MRC stage is skipped)")
    parser.add_argument("--resnet-at-epochs", type=int, default=0,
                        help="adversarially train the ResNet this many epochs first (0: random "
                        "weights, a flat curve: one class at every α)")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--digits-checkpoint", type=Path, default=None,
                        help="θ_AT of the (one) --seeds run, made before by rift.demo."
                        "make_digits_checkpoint with that seed on --device, instead of training "
                        "it here (the tests pass the one their session made)")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the JSON report to this file")
    parser.add_argument("--min-stop-chunk", type=int, default=None,
                        help="override the floor of the stop chunks, rift.sequential_attack."
                        "MIN_STOP_CHUNK on a CPU, ACCELERATOR_MIN_STOP_CHUNK (default: the batch "
                        "size) on a GPU (1: chunks of 1/32 of the set, the rule before the floor); "
                        "without it a CPU floor also falls for a heavy model (CPU_MIN_CHUNK_FLOPS)")
    args = parser.parse_args()
    if args.min_stop_chunk is not None:
        sequential_attack.MIN_STOP_CHUNK = args.min_stop_chunk
        sequential_attack.ACCELERATOR_MIN_STOP_CHUNK = args.min_stop_chunk
        sequential_attack.CPU_MIN_CHUNK_FLOPS = None  # exactly that floor, whatever the model
    if args.digits_checkpoint is not None and len(args.seeds) != 1:
        parser.error("--digits-checkpoint is the θ_AT of one seed: give one --seeds value")
    runs = [] if args.skip_digits else [_digits(s, args.device, args.alpha_step,
                                                args.digits_checkpoint) for s in args.seeds]
    if not args.skip_resnet:
        runs.append(_resnet(args.device, args.alpha_step, args.resnet_train, args.resnet_test,
                            args.resnet_attack_steps, args.resnet_module,
                            args.resnet_at_epochs))
    full = sum(r["pgd_evaluations_full"] for r in runs)
    selection = sum(r["pgd_evaluations_selection"] for r in runs)
    examples_full = sum(r["pgd_examples_full"] for r in runs)
    examples_selection = sum(r["pgd_examples_selection"] for r in runs)
    text = json.dumps({
        "benchmark": "interpolation_selection",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "alpha_step": args.alpha_step,
        "min_stop_chunk": sequential_attack.MIN_STOP_CHUNK,
        "accelerator_min_stop_chunk": sequential_attack.ACCELERATOR_MIN_STOP_CHUNK,
        "pgd_evaluations_full": full,
        "pgd_evaluations_selection": selection,
        "ratio": round(selection / full, 4),
        "max_run_ratio": max(r["ratio"] for r in runs),
        "pgd_examples_full": examples_full,
        "pgd_examples_selection": examples_selection,
        "example_ratio": round(examples_selection / examples_full, 4),
        "max_run_example_ratio": max(r["example_ratio"] for r in runs),
        "same_alpha": all(r["same_alpha"] for r in runs),
        "same_chosen_robust_accuracy": all(r["same_chosen_robust_accuracy"] for r in runs),
        "resnet": None if args.skip_resnet else {
            "train": args.resnet_train, "test": args.resnet_test,
            "attack_steps": args.resnet_attack_steps, "module": args.resnet_module,
            "at_epochs": args.resnet_at_epochs},
        "runs": runs,
    }, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
