"""CIFAR-shaped synthetic jobs for the benchmarks: data a network can learn, and a θ_AT.

Nothing can be downloaded here, so the benchmarks that need a ResNet on 32×32×3 images make one:
each class has a fixed random template and an image is (template + uniform noise) / 2, so clean
accuracy can rise and robust accuracy is not at chance after a few epochs of PGD training. With
``at_epochs=0`` the weights stay random (only the BatchNorm statistics are randomised, or an
untrained ResNet in eval mode predicts one class everywhere). :func:`job_config` is the whole
job's config on such data. Used by ``bench/interpolation.py``, ``bench/pipeline.py`` and
``bench/service_overhead.py``; not part of the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.checkpoints import save_safetensors
from rift.config import ArchitectureSpec, AttackSpec, DatasetSpec
from rift.data import load_dataset
from rift.device import resolve_device
from rift.models import build_model


def write_template_dataset(path: Path, train: int, test: int, seed: int = 0,
                           image_size: int = 32) -> DatasetSpec:
    """Write an npz of ``train`` + ``test`` template-plus-noise images (uint8, NHWC, square of
    ``image_size``) and random labels; returns the dataset spec that reads it."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, image_size, image_size, 3))

    def images(labels: np.ndarray) -> np.ndarray:
        noise = rng.integers(0, 256, (len(labels), image_size, image_size, 3))
        return ((templates[labels] + noise) // 2).astype(np.uint8)

    y, y_test = rng.integers(0, 10, train), rng.integers(0, 10, test)
    np.savez(path, x=images(y), y=y, x_test=images(y_test), y_test=y_test)
    return DatasetSpec(name="npz", path=str(path))


def write_theta_at(path: Path, arch: str, dataset: DatasetSpec, attack: AttackSpec, *,
                   at_epochs: int, device: str, seed: int = 0) -> None:
    """Save a ``arch`` checkpoint for ``dataset``: PGD-trained ``at_epochs`` epochs (lr 0.05,
    batch 128, cosine), or random weights with random BatchNorm statistics when 0."""
    torch.manual_seed(seed)
    model = build_model(ArchitectureSpec(name=arch, num_classes=10))
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    if at_epochs:
        adversarially_train(model, load_dataset(dataset, seed), PGD.from_spec(attack),
                            epochs=at_epochs, lr=0.05, batch_size=128,
                            device=resolve_device(device), seed=seed)
        model.cpu()
    save_safetensors(path, model.state_dict())


def job_config(arch: str, dataset: DatasetSpec, *, trained: bool, alpha_step: float,
               attack_steps: int, mrc_examples: int, mrc_batch_size: int, mrc_steps: int,
               epochs: int, device: str, mrc_table: str = "full", precision: str = "fp32",
               channels_last: bool = False, deterministic: bool = True) -> dict[str, Any]:
    """The whole job's config (JSON, as ``RiftConfig`` reads it) on ``dataset`` for a 10-class
    ``arch``; ``trained``: θ_AT was PGD-trained (:func:`write_theta_at` with ``at_epochs`` > 0).
    Fine-tuning drops its learning rate once, halfway."""
    return {
        "architecture": {"name": arch, "num_classes": 10},
        "dataset": dataset.model_dump(mode="json"),
        # Random weights on random labels sit at chance, which the preflight check refuses.
        **({} if trained else {"preflight": {"examples": 0}}),
        "interpolation": {"alpha_step": alpha_step},
        "attack": {"steps": attack_steps},
        "mrc": {"num_examples": mrc_examples, "batch_size": mrc_batch_size, "steps": mrc_steps,
                "table": mrc_table},
        "finetune": {"epochs": epochs, "lr_milestones": [max(1, epochs // 2)] if epochs > 1 else []},
        "device": device, "precision": precision, "channels_last": channels_last,
        "deterministic": deterministic,
    }
