"""A demo θ_AT made in seconds: ``small_cnn`` adversarially trained on scikit-learn's 8×8 digits.

Public RiFT checkpoints (CIFAR ResNets) take hours to make; this one lets tests, the CLI and the
service run the whole pipeline on a laptop CPU. ``DIGITS_DEMO_CONFIG`` is a matching fast job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rift import checkpoints
from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.config import ArchitectureSpec, AttackSpec, DatasetSpec, RiftConfig, check_seed
from rift.data import load_dataset
from rift.device import deterministic_kernels, resolve_device
from rift.evaluation import evaluate_accuracy
from rift.models import build_model

# A fast RiftConfig for the digits checkpoint. Digits pixels are multiples of 1/16 in [0, 1], so
# an L∞ radius of 0.1 (1.6 grey levels) is a real but survivable attack for an 8×8 image.
DIGITS_DEMO_CONFIG: dict[str, Any] = {
    "architecture": {"name": "small_cnn", "num_classes": 10},
    # A fifth of the training images for validation: with 10 % (135 images) one image is 0.74
    # points and the best fine-tuning epoch is mostly decided by ties.
    "dataset": {"name": "digits", "validation_fraction": 0.2},
    "attack": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 10, "random_start": True},
    "mrc": {"eps": 0.1, "p": 2, "steps": 10, "lr": 1.0, "batch_size": 256, "num_examples": 256},
    "finetune": {"epochs": 5, "lr": 0.01, "batch_size": 64, "lr_milestones": [3],
                 "lr_gamma": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "interpolation": {"alpha_step": 0.1, "robust_tolerance": 0.0},
    "evaluation": {"batch_size": 512},
    "seed": 0,
    "device": "auto",
}

# Adversarial training of the demo θ_AT. Short on purpose: a model trained to convergence leaves
# clean accuracy no room to grow, and then RiFT has nothing to show.
DIGITS_AT_ATTACK = AttackSpec(norm="linf", eps=0.1, step_size=0.025, steps=10)
DIGITS_AT_EPOCHS = 6
DIGITS_AT_LR = 0.1
DIGITS_AT_BATCH_SIZE = 64


def make_digits_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    epochs: int = DIGITS_AT_EPOCHS,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Adversarially train ``small_cnn`` on the digits and save it as safetensors at ``path``.

    The data splits are those of ``DIGITS_DEMO_CONFIG`` (its dataset spec and seed), so the demo
    job's validation and test images are never trained on; ``seed`` sets the initial weights and
    the training randomness. Training: PGD (``DIGITS_AT_ATTACK``) adversarial training, SGD lr
    ``DIGITS_AT_LR`` with cosine decay, ``epochs`` epochs. ``device`` None means
    :func:`rift.device.resolve_device` ("auto").

    The file's metadata holds ``arch``, ``dataset``, ``attack`` (JSON of the training attack),
    ``seed``, ``epochs`` and the measured test accuracies.

    Returns:
        ``{"path", "arch", "dataset", "seed", "epochs", "seconds", "clean_accuracy",
        "robust_accuracy", "history"}``: test accuracies in percent under the demo config's
        attack, and the per-epoch training metrics.
    """
    # Before the training, which takes seconds to minutes.
    check_seed(seed)  # torch overflows past int64
    checkpoints.check_save_target(path)
    config = RiftConfig.model_validate(DIGITS_DEMO_CONFIG)
    resolved = resolve_device("auto") if device is None else torch.device(device)
    splits = load_dataset(config.dataset, config.seed)
    with torch.random.fork_rng(devices=[resolved] if resolved.type == "cuda" else []):
        torch.manual_seed(seed)  # initial weights; the caller's random state is left alone
        model = build_model(config.architecture, in_channels=splits.in_channels,
                            image_size=splits.image_size)
    started = time.perf_counter()
    with deterministic_kernels(True):  # the same seed gives the same θ_AT on a GPU too
        history = adversarially_train(
            model, splits, PGD.from_spec(DIGITS_AT_ATTACK), epochs=epochs, lr=DIGITS_AT_LR,
            batch_size=DIGITS_AT_BATCH_SIZE, device=resolved, seed=seed,
        )
    seconds = time.perf_counter() - started
    report = evaluate_accuracy(
        model, splits.test, attack=PGD.from_spec(config.attack),
        batch_size=config.evaluation.batch_size, device=resolved, seed=config.seed,
    )
    arch = ArchitectureSpec.model_validate(DIGITS_DEMO_CONFIG["architecture"])
    dataset = DatasetSpec.model_validate(DIGITS_DEMO_CONFIG["dataset"])
    metadata = {
        "arch": arch.name,
        "dataset": dataset.name,
        "attack": DIGITS_AT_ATTACK.model_dump_json(),
        "seed": str(seed),
        "epochs": str(epochs),
        "clean_accuracy": f"{report.clean_accuracy:.4f}",
        "robust_accuracy": f"{report.robust_accuracy:.4f}",
    }
    checkpoints.save_safetensors(path, model.state_dict(), metadata)
    return {
        "path": str(path),
        "arch": arch.name,
        "dataset": dataset.name,
        "seed": seed,
        "epochs": epochs,
        "seconds": seconds,
        "clean_accuracy": report.clean_accuracy,
        "robust_accuracy": report.robust_accuracy,
        "history": history,
    }
