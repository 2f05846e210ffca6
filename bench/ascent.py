"""Compare the two MRC ascent rules, "sgd" (lr · g) and "normalized" (lr · radius · g/||g||), on
three models, and print one JSON document.

For each model: the worst robust loss each rule finds per module (both are lower bounds of the true
maximum, so higher is the better approximation), the largest loss after a pass (Δ = 0 not
counted), the Spearman correlation of the two rankings, the chosen module of each, and the RiFT
outcome (clean / robust accuracy before and after interpolation) when the pipeline runs with each.

Models (all CPU-sized):
- digits: ``small_cnn`` adversarially trained on scikit-learn's digits (``rift.demo``);
- resnet18: ResNet-18 adversarially trained briefly (2 epochs) on CIFAR-shaped synthetic data
  (3 × 32 × 32, 10 classes: a class colour and stripe orientation plus noise; 256 training
  images), PGD-2 for speed, MRC on 32 adversarial examples, α step 0.5; the preflight check is
  off because so short a training may leave the model near chance;
- tabular: ``mlp`` adversarially trained on scikit-learn's breast-cancer features
  (``rift.demo_tabular``).

    .venv/bin/python bench/ascent.py --out bench/results/ascent_cpu.json

Timings and accuracies on a shared CPU are noisy; the comparison is what matters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from rift import checkpoints
from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.config import RiftConfig
from rift.data import load_dataset
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.models import build_model
from rift.pipeline import (
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
)

ASCENTS = ("sgd", "normalized")


def _synthetic_cifar(path: Path, train: int, test: int, seed: int) -> Path:
    """uint8 N×32×32×3 images: per class a colour and a stripe orientation, plus noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices((32, 32)).astype(np.float32)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        colours = rng.uniform(0.2, 0.8, size=(10, 3)).astype(np.float32)
        images = np.empty((count, 32, 32, 3), dtype=np.float32)
        for index, label in enumerate(labels):
            angle = np.pi * label / 10
            stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * grid[0] + np.sin(angle) * grid[1]) / 2)
            images[index] = colours[label] * stripes[..., None]
        images += rng.normal(scale=0.25, size=images.shape)
        return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)

    x, y = make(train)
    x_test, y_test = make(test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def _resnet_case(folder: Path, seed: int) -> tuple[dict[str, Any], Path]:
    npz = _synthetic_cifar(folder / "synthetic.npz", train=320, test=64, seed=seed)
    config: dict[str, Any] = {
        "architecture": {"name": "resnet18", "num_classes": 10},
        "dataset": {"name": "npz", "path": str(npz), "validation_fraction": 0.2},
        "attack": {"eps": 8 / 255, "step_size": 4 / 255, "steps": 2},
        "mrc": {"batch_size": 32, "num_examples": 32, "steps": 10},
        "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 64, "lr_milestones": []},
        "interpolation": {"alpha_step": 0.5},
        "evaluation": {"batch_size": 64},
        "preflight": {"examples": 0},
        "seed": seed, "device": "cpu",
    }
    parsed = RiftConfig.model_validate(config)
    splits = load_dataset(parsed.dataset, parsed.seed)
    torch.manual_seed(seed)
    model = build_model(parsed.architecture, in_channels=3, image_size=32)
    adversarially_train(model, splits, PGD.from_spec(parsed.attack), epochs=2, lr=0.05,
                        batch_size=64, device=torch.device("cpu"), seed=seed)
    path = folder / "resnet18.safetensors"
    checkpoints.save_safetensors(path, model.state_dict(), {"arch": "resnet18"})
    return config, path


def _digits_case(folder: Path, seed: int) -> tuple[dict[str, Any], Path]:
    path = folder / "digits.safetensors"
    make_digits_checkpoint(path, seed=seed, device="cpu")
    return {**DIGITS_DEMO_CONFIG, "device": "cpu"}, path


def _tabular_case(folder: Path, seed: int) -> tuple[dict[str, Any], Path]:
    npz = write_breast_cancer_npz(folder / "breast_cancer.npz")
    path = folder / "tabular.safetensors"
    make_tabular_checkpoint(path, npz, seed=seed)
    return tabular_demo_config(npz), path


def _compare(config_json: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    base = RiftConfig.model_validate(config_json)
    run = prepare_run(base, checkpoint)
    outcome: dict[str, Any] = {}
    for ascent in ASCENTS:
        config = base.model_copy(update={"mrc": base.mrc.model_copy(update={"ascent": ascent})})
        ascent_run = dataclasses.replace(run, config=config)
        started = time.perf_counter()
        mrc = run_mrc_stage(ascent_run)
        finetune = run_finetune_stage(ascent_run, mrc.selected_module)
        interpolation = run_interpolation_stage(ascent_run, finetune.state_dict)
        outcome[ascent] = {
            "baseline_robust_loss": mrc.baseline_robust_loss,
            "worst_loss": {row["name"]: row["worst_robust_loss"] for row in mrc.rows},
            "max_ascent_loss": {row["name"]: row["max_ascent_loss"] for row in mrc.rows},
            "mrc": {row["name"]: row["mrc"] for row in mrc.rows},
            "chosen_module": mrc.selected_module,
            "chosen_alpha": interpolation.chosen_alpha,
            "before": interpolation.before,
            "after": interpolation.after,
            "mrc_seconds": mrc.seconds,
            "seconds": time.perf_counter() - started,
        }
    sgd, normalized = outcome["sgd"], outcome["normalized"]
    names = list(sgd["worst_loss"])
    higher = [n for n in names if normalized["worst_loss"][n] > sgd["worst_loss"][n] + 1e-9]
    lower = [n for n in names if normalized["worst_loss"][n] < sgd["worst_loss"][n] - 1e-9]
    rho = spearmanr([sgd["mrc"][n] for n in names], [normalized["mrc"][n] for n in names])
    return {
        **outcome,
        "modules": len(names),
        "normalized_finds_higher_loss": len(higher),
        "sgd_finds_higher_loss": len(lower),
        "mean_worst_loss_gain_of_normalized": float(np.mean(
            [normalized["worst_loss"][n] - sgd["worst_loss"][n] for n in names])),
        "spearman_mrc_rankings": float(rho.statistic),
        "same_chosen_module": sgd["chosen_module"] == normalized["chosen_module"],
    }


def _theorem_a4(seed: int) -> dict[str, Any]:
    """MRC of the first and middle layer of a bias-free 3-layer ReLU MLP on the standardised
    breast-cancer features, after scaling that layer by β and the next by 1/β (the same function),
    for each ascent. The true MRC does not depend on β."""
    import torch.nn.functional as F
    from sklearn.datasets import load_breast_cancer
    from torch import nn

    from rift.config import MRCSpec
    from rift.mrc import module_robust_criticality

    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor((features - features.mean(0)) / features.std(0), dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(30, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                          nn.ReLU(), nn.Linear(16, 2, bias=False))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    table: dict[str, Any] = {}
    for layer, label in ((0, "first"), (2, "middle")):
        for beta in (1.0, 0.01, 2.0, 100.0):
            scaled = nn.Sequential(*[nn.Linear(m.in_features, m.out_features, bias=False)
                                     if isinstance(m, nn.Linear) else nn.ReLU() for m in model])
            scaled.load_state_dict(model.state_dict())
            with torch.no_grad():
                scaled[layer].weight.mul_(beta)
                scaled[layer + 2].weight.div_(beta)
            for ascent in ASCENTS:
                spec = MRCSpec(ascent=ascent, modules=[str(layer)], batch_size=128)
                row = module_robust_criticality(scaled.eval(), x, y, spec).modules[0]
                table.setdefault(f"{label}/{ascent}", {})[f"beta={beta:g}"] = row.mrc
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,tabular,resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases = {"digits": _digits_case, "tabular": _tabular_case, "resnet18": _resnet_case}
    results: dict[str, Any] = {"torch": torch.__version__, "machine": platform.processor()
                               or platform.machine(), "threads": torch.get_num_threads()}
    results["theorem_a4_mrc"] = _theorem_a4(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        for name in filter(None, args.models.split(",")):
            started = time.perf_counter()
            config, checkpoint = cases[name](Path(folder), args.seed)
            results[name] = {**_compare(config, checkpoint),
                             "total_seconds": time.perf_counter() - started}
            print(f"done {name}", flush=True, file=__import__("sys").stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
