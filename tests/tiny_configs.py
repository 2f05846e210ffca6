"""A quick CPU run on random 8×8 RGB images of 4 classes, shared by the architecture,
parametrization and materialization tests (each names the parts it varies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rift.config import RiftConfig


def random_images_config(folder: Path, architecture: str, *, tuned: str, step_size: float,
                         lr: float, mrc: dict[str, Any]) -> RiftConfig:
    """Writes 48 random images to ``folder/d.npz`` and returns a config that runs
    ``architecture`` on them, fine-tuning ``tuned``."""
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8),
             y=np.arange(48) % 4)
    return RiftConfig.model_validate({
        "architecture": {"name": architecture, "num_classes": 4},
        "dataset": {"name": "npz", "path": str(folder / "d.npz"), "validation_fraction": 0.25},
        "attack": {"eps": 0.03, "step_size": step_size, "steps": 2},
        "mrc": {"num_examples": 16, "batch_size": 16, **mrc},
        "finetune": {"module": tuned, "epochs": 1, "batch_size": 8, "lr": lr,
                     "lr_milestones": []},
        "interpolation": {"alpha_step": 0.5}, "evaluation": {"max_examples": 8},
        "preflight": {"examples": 0}, "device": "cpu"})
