"""Tests of rift/adversarial_training.py on the scikit-learn digits (a second or so)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.config import ArchitectureSpec, DatasetSpec
from rift.data import DatasetSplits, load_dataset
from rift.errors import ConfigError, JobCancelled
from rift.evaluation import evaluate_accuracy
from rift.models import build_model

CPU = torch.device("cpu")
EVAL_ATTACK = PGD(eps=0.1, step_size=0.025, steps=10)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset(DatasetSpec(name="digits"), seed=0)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                       image_size=8)


def _train(digits: DatasetSplits, attack: PGD, seed: int = 0, epochs: int = 3) -> nn.Module:
    model = _model(seed)
    history = adversarially_train(model, digits, attack, epochs=epochs, lr=0.1, batch_size=64,
                                  device=CPU, seed=seed)
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_robust_accuracy", "seconds"}
    assert history[0]["lr"] == pytest.approx(0.1)
    if epochs > 1:
        assert history[-1]["lr"] < history[0]["lr"]  # cosine decay
    assert not model.training
    return model


def test_adversarial_training_beats_clean_training_under_attack(digits: DatasetSplits) -> None:
    # Same budget; a 0-step PGD returns the clean images, i.e. plain training.
    clean = _train(digits, PGD(eps=0.1, step_size=0.025, steps=0))
    robust = _train(digits, PGD(eps=0.1, step_size=0.025, steps=5))
    test = digits.test.head(200)
    before = evaluate_accuracy(clean, test, attack=EVAL_ATTACK, batch_size=200, device=CPU)
    after = evaluate_accuracy(robust, test, attack=EVAL_ATTACK, batch_size=200, device=CPU)
    assert before.robust_accuracy is not None and after.robust_accuracy is not None
    assert after.robust_accuracy >= before.robust_accuracy + 10.0
    assert after.clean_accuracy >= 60.0  # it still learned the digits


def test_same_seed_same_weights_and_cancellation(digits: DatasetSplits) -> None:
    attack = PGD(eps=0.1, step_size=0.05, steps=2)
    small = DatasetSplits(train=digits.train.head(128), validation=digits.validation,
                          test=digits.test, num_classes=10, image_shape=digits.image_shape,
                          name="digits", augment=digits.augment)
    first, second = (_train(small, attack, seed=4, epochs=1) for _ in range(2))
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    with pytest.raises(JobCancelled):
        adversarially_train(_model(0), small, attack, epochs=1, lr=0.1, batch_size=32,
                            device=CPU, seed=0, should_cancel=lambda: True)
    with pytest.raises(ConfigError):
        adversarially_train(_model(0), small, attack, epochs=0, lr=0.1, batch_size=32,
                            device=CPU, seed=0)
