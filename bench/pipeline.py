"""Time a whole RiFT job (MRC → fine-tune → interpolate) with the reference protocol's defaults on
CIFAR-shaped synthetic data, and print JSON with the seconds of each stage.

The data are random (uint8 32×32×3 images, random labels) and the weights randomly initialised:
accuracies are meaningless here, only the time is measured. On a GPU:

    .venv/bin/python bench/pipeline.py --train 10000 --test 2000
    .venv/bin/python bench/pipeline.py --train 10000 --test 2000 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rift.checkpoints import save_safetensors
from rift.config import ArchitectureSpec, RiftConfig
from rift.models import build_model
from rift.pipeline import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--alpha-step", type=float, default=0.05)
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
            "device": args.device, "precision": args.precision,
            "channels_last": args.channels_last, "deterministic": not args.nondeterministic,
        })
        started = time.perf_counter()
        result = run_pipeline(config, root / "model.safetensors", root / "out")
        seconds = time.perf_counter() - started
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
        "finetune_epochs": config.finetune.epochs,
        "alpha_points": len(result["interpolation"]["points"]),
        "mrc_seconds": round(result["mrc"]["seconds"], 2),
        "finetune_seconds": round(result["finetune"]["seconds"], 2),
        "interpolation_seconds": round(result["interpolation"]["seconds"], 2),
        "total_seconds": round(seconds, 2),
        "selected_module": result["selected_module"],
    }, indent=2))


if __name__ == "__main__":
    main()
