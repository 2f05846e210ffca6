"""PGD adversarial training (Madry et al., 2018): produces the θ_AT that RiFT starts from.

RiFT itself never trains adversarially; this exists to make small demo and test checkpoints (e.g.
``small_cnn`` on the scikit-learn digits) without shipping weight files.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rift.attacks import PGD
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.data import DatasetSplits, iterate_batches
from rift.device import autocast
from rift.errors import ConfigError
from rift.evaluation import correct_predictions

Schedule = Literal["cosine", "step"]


def adversarially_train(
    model: nn.Module,
    splits: DatasetSplits,
    attack: PGD,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    schedule: Schedule = "cosine",
    precision: str = "fp32",
    should_cancel: ShouldCancel | None = None,
) -> list[dict[str, float | int]]:
    """Train every parameter of ``model`` on PGD adversarial examples of the training split.

    Each step: ``attack`` turns the clean batch (float in [0, 1], NCHW, augmented as
    ``splits.augment`` says) into adversarial images against the current weights (model in eval
    mode during the attack, as :class:`PGD` does), then one SGD step (``momentum``,
    ``weight_decay``) on their cross-entropy with the model in train mode. The learning rate follows
    ``schedule``, updated every step: ``"cosine"`` anneals ``lr`` to 0 over all steps; ``"step"``
    multiplies it by 0.1 at 50 % and again at 75 % of the epochs (the Madry-style decay).

    Shuffling, augmentation, the attack's random start and dropout all draw from ``seed``, without
    changing the caller's global random state. The model is moved to ``device``, trained in place
    and left in eval mode.

    Returns:
        One dict per epoch: ``epoch`` (from 1), ``lr`` (at the epoch's start), ``train_loss``
        (mean adversarial cross-entropy), ``train_robust_accuracy`` (percent of adversarial
        training images classified correctly, measured before each step) and ``seconds``.

    Raises:
        ConfigError: ``epochs``, ``lr`` or ``batch_size`` out of range, or an unknown schedule.
        JobCancelled: ``should_cancel()`` returned True before a batch.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(
            f"adversarial training needs epochs ≥ 1, batch_size ≥ 1 and lr > 0; got epochs={epochs},"
            f" batch_size={batch_size}, lr={lr}", field="adversarial_training")
    if schedule not in ("cosine", "step"):
        raise ConfigError(f"schedule must be 'cosine' or 'step', got {schedule!r}",
                          field="adversarial_training.schedule")
    model.to(device)
    steps_per_epoch = math.ceil(len(splits.train) / batch_size)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(schedule, step, total_steps)
    )
    # Batch order and crops from a CPU generator (the same on every device); the attack's random
    # start, a full image-sized draw per batch, from a generator on the device.
    shuffle_generator = torch.Generator()
    shuffle_generator.manual_seed(seed)
    attack_generator = torch.Generator(device=device)
    attack_generator.manual_seed(seed + 1)
    history: list[dict[str, float | int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            epoch_lr = float(optimizer.param_groups[0]["lr"])
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for images, labels in iterate_batches(
                splits.train, batch_size, device=device, shuffle=True,
                generator=shuffle_generator, augment=splits.augment,
            ):
                raise_if_cancelled(should_cancel)
                adversarial = attack.perturb(
                    model, images, labels, generator=attack_generator, precision=precision,
                    should_cancel=should_cancel)
                model.train()
                with autocast(device, precision):
                    logits = model(adversarial)
                loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().double() * labels.numel()
                correct += correct_predictions(logits.detach(), labels).sum()
                seen += labels.numel()
            history.append({
                "epoch": epoch,
                "lr": epoch_lr,
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_robust_accuracy": 100.0 * int(correct) / max(seen, 1),
                "seconds": time.perf_counter() - started,
            })
    model.eval()
    return history


def _lr_factor(schedule: Schedule, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based)."""
    progress = step / max(total_steps, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.01 if progress >= 0.75 else 0.1 if progress >= 0.5 else 1.0
