"""Time a whole RiFT job (MRC → fine-tune → interpolate) with the reference protocol's defaults on
CIFAR-shaped synthetic data, and print JSON with the seconds of each stage.

The data are random (uint8 32×32×3 images, random labels) and the weights randomly initialised:
accuracies are meaningless here, only the time is measured. On a GPU:

    .venv/bin/python bench/pipeline.py --train 10000 --test 2000
    .venv/bin/python bench/pipeline.py --train 10000 --test 2000 --precision bf16 --channels-last

``--reference-cost`` also runs the job the way the reference code costs, on the same data and
config, and prints both: MRC with ``bench/reference_cost.py`` (a model copy per module, full
forwards, reshuffled batches, a separate measuring pass), the same fine-tuning, and the full α
curve (robust accuracy at every α). A CPU-sized comparison (a few minutes on two cores):

    PYTHONPATH=. .venv/bin/python bench/pipeline.py --reference-cost --device cpu --train 1000 \
        --test 64 --mrc-examples 128 --mrc-batch-size 64 --mrc-steps 10 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from reference_cost import reference_cost_mrc  # bench/ is on sys.path when run as a script

from rift.checkpoints import save_safetensors
from rift.config import ArchitectureSpec, RiftConfig
from rift.models import build_model
from rift.pipeline import (
    make_mrc_inputs,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_pipeline,
)


def _reference_flow(config: RiftConfig, checkpoint: Path) -> dict[str, float]:
    """The job at the reference code's cost: seconds per stage."""
    run = prepare_run(config, checkpoint)
    started = time.perf_counter()
    inputs = make_mrc_inputs(run)
    values = reference_cost_mrc(run.model, inputs.adversarial, inputs.labels, config.mrc,
                                seed=config.seed)
    module = min(values, key=values.__getitem__)
    mrc_seconds = time.perf_counter() - started
    started = time.perf_counter()
    finetuned = run_finetune_stage(run, module).state_dict
    finetune_seconds = time.perf_counter() - started
    run.config = config.model_copy(update={"interpolation": config.interpolation.model_copy(
        update={"curve": "full"})})
    interpolation = run_interpolation_stage(run, finetuned)
    return {"mrc_seconds": round(mrc_seconds, 2), "finetune_seconds": round(finetune_seconds, 2),
            "interpolation_seconds": round(interpolation.seconds, 2),
            "total_seconds": round(mrc_seconds + finetune_seconds + interpolation.seconds, 2),
            "robust_evaluations": interpolation.robust_evaluations,
            "selected_module": module, "chosen_alpha": interpolation.chosen_alpha}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--alpha-step", type=float, default=0.05)
    parser.add_argument("--reference-cost", action="store_true",
                        help="also run the job at the reference code's cost and compare")
    parser.add_argument("--mrc-examples", type=int, default=1024)
    parser.add_argument("--mrc-batch-size", type=int, default=512)
    parser.add_argument("--mrc-steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--attack-steps", type=int, default=10,
                        help="PGD steps (adversarial set and robust evaluations)")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="allow non-deterministic GPU kernels (config.deterministic=false)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        total = args.train + args.test
        np.savez(root / "data.npz",
                 x=rng.integers(0, 256, (args.train, 32, 32, 3), dtype=np.uint8),
                 y=rng.integers(0, 10, args.train),
                 x_test=rng.integers(0, 256, (args.test, 32, 32, 3), dtype=np.uint8),
                 y_test=rng.integers(0, 10, args.test))
        torch.manual_seed(0)
        model = build_model(ArchitectureSpec(name=args.arch, num_classes=10))
        save_safetensors(root / "model.safetensors", model.state_dict())
        config = RiftConfig.model_validate({
            "architecture": {"name": args.arch, "num_classes": 10},
            "dataset": {"name": "npz", "path": str(root / "data.npz")},
            "interpolation": {"alpha_step": args.alpha_step},
            "attack": {"steps": args.attack_steps},
            "mrc": {"num_examples": args.mrc_examples, "batch_size": args.mrc_batch_size,
                    "steps": args.mrc_steps},
            "finetune": {"epochs": args.epochs,
                         "lr_milestones": [max(1, args.epochs // 2)] if args.epochs > 1 else []},
            "device": args.device, "precision": args.precision,
            "channels_last": args.channels_last, "deterministic": not args.nondeterministic,
        })
        started = time.perf_counter()
        result = run_pipeline(config, root / "model.safetensors", root / "out")
        seconds = time.perf_counter() - started
        reference = (_reference_flow(config, root / "model.safetensors")
                     if args.reference_cost else None)
    device = result["device"]
    print(json.dumps({
        "benchmark": "pipeline",
        "arch": args.arch,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "deterministic": config.deterministic,
        "examples": total,
        "train_examples_after_validation_split": args.train - round(args.train * 0.1),
        "mrc_examples": result["mrc"]["examples"],
        "mrc_steps": config.mrc.steps,
        "attack_steps": config.attack.steps,
        "finetune_epochs": config.finetune.epochs,
        "alpha_points": len(result["interpolation"]["points"]),
        "mrc_seconds": round(result["mrc"]["seconds"], 2),
        "finetune_seconds": round(result["finetune"]["seconds"], 2),
        "interpolation_seconds": round(result["interpolation"]["seconds"], 2),
        "total_seconds": round(seconds, 2),
        "selected_module": result["selected_module"],
        "robust_evaluations": result["interpolation"]["robust_evaluations"],
        "chosen_alpha": result["chosen_alpha"],
        **({} if reference is None else {
            "reference_cost": reference,
            "ratio_reference_over_library": {
                key: round(reference[f"{key}_seconds"] / max(value, 1e-9), 3)
                for key, value in (("mrc", result["mrc"]["seconds"]),
                                   ("finetune", result["finetune"]["seconds"]),
                                   ("interpolation", result["interpolation"]["seconds"]),
                                   ("total", seconds))}}),
    }, indent=2))


if __name__ == "__main__":
    main()
