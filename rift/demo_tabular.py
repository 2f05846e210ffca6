"""A tabular RiFT demo: scikit-learn's bundled breast-cancer data (569 × 30 features, 2 classes) as
an npz of feature vectors, and an adversarially trained ``mlp`` checkpoint for it.

The features are standardised (z-scores over the whole file) so that one L∞ radius means the same
for every feature; the attack domain is then 'none' (z-scores have no natural bounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rift import checkpoints
from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.config import RiftConfig, check_seed
from rift.data import load_dataset
from rift.evaluation import evaluate_accuracy
from rift.models import build_model

# 0.25 standard deviations per feature, in L∞: a real attack for this data (robust accuracy drops
# by about 10 points on the checkpoint below) that adversarial training survives.
TABULAR_ATTACK: dict[str, Any] = {"norm": "linf", "eps": 0.25, "step_size": 0.0625, "steps": 10,
                                  "random_start": True, "domain": "none"}


def tabular_demo_config(npz_path: str | Path) -> dict[str, Any]:
    """A small RiftConfig (as JSON) for the breast-cancer npz at ``npz_path``."""
    return {
        "architecture": {"name": "mlp", "num_classes": 2, "hidden": [32, 32]},
        "dataset": {"name": "npz", "path": str(npz_path), "validation_fraction": 0.2},
        "attack": TABULAR_ATTACK,
        "mrc": {"batch_size": 128, "num_examples": 256, "steps": 10},
        "finetune": {"epochs": 4, "lr": 0.01, "batch_size": 32, "lr_milestones": [3]},
        "interpolation": {"alpha_step": 0.1},
        "evaluation": {"batch_size": 256},
        "seed": 0,
        "device": "cpu",
    }


def write_breast_cancer_npz(path: str | Path) -> Path:
    """Write the standardised breast-cancer features as ``x`` (N, 30) float32 and ``y`` (N,)."""
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    standardised = (features - features.mean(0)) / features.std(0)
    path = Path(path)
    np.savez(path, x=standardised.astype(np.float32), y=labels.astype(np.int64))
    return path


def make_tabular_checkpoint(checkpoint_path: str | Path, npz_path: str | Path, *, seed: int = 0,
                            epochs: int = 8) -> dict[str, float]:
    """Adversarially train the demo config's ``mlp`` on the npz's training split and save it.
    Returns the test clean and robust accuracy in percent."""
    check_seed(seed)
    config = RiftConfig.model_validate(tabular_demo_config(npz_path))
    splits = load_dataset(config.dataset, config.seed)
    attack = PGD.from_spec(config.attack, feature_vectors=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config.architecture, in_channels=splits.in_channels,
                            image_size=splits.image_size)
        adversarially_train(model, splits, attack, epochs=epochs, lr=0.05, batch_size=32,
                            device=torch.device("cpu"), seed=seed)
    report = evaluate_accuracy(model, splits.test, attack=attack, batch_size=256,
                               device=torch.device("cpu"), seed=seed)
    checkpoints.save_safetensors(checkpoint_path, model.state_dict(), {"arch": "mlp"})
    return {"clean_accuracy": report.clean_accuracy,
            "robust_accuracy": float(report.robust_accuracy or 0.0)}
