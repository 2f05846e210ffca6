"""Cancellation inside the library's loops, and the model state each loop puts back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rift.attacks import PGD
from rift.cancellation import raise_if_cancelled
from rift.errors import JobCancelled, TimeLimitExceeded
from rift.model_state import frozen_except
from rift.mrc import make_adversarial_set


class CancelAfter:
    """A ``should_cancel`` that answers True from its ``n``-th call on, counting the calls."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=generator), torch.randint(0, 4, (n,),
                                                                      generator=generator)


def test_raise_if_cancelled_stops_or_passes_the_callbacks_own_error() -> None:
    raise_if_cancelled(None)
    raise_if_cancelled(lambda: False)
    with pytest.raises(JobCancelled):
        raise_if_cancelled(lambda: True)

    def past_deadline() -> bool:
        raise TimeLimitExceeded("over")

    with pytest.raises(TimeLimitExceeded):
        raise_if_cancelled(past_deadline)


def test_pgd_stops_between_steps_and_restores_the_model() -> None:
    model = _model().train()
    model[0].weight.requires_grad_(False)  # a flag that must come back as it was
    images, labels = _data()
    should_cancel = CancelAfter(3)
    with pytest.raises(JobCancelled):
        PGD(eps=0.1, step_size=0.05, steps=1000).perturb(model, images, labels,
                                                         should_cancel=should_cancel)
    assert should_cancel.calls == 3  # stopped at the third step, not after 1,000
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5


def test_the_adversarial_set_stops_inside_its_first_batch() -> None:
    images, labels = _data(64)
    should_cancel = CancelAfter(5)
    with pytest.raises(JobCancelled):
        make_adversarial_set(_model(), images, labels, PGD(eps=0.1, step_size=0.05, steps=1000),
                             batch_size=64, should_cancel=should_cancel)
    assert should_cancel.calls == 5  # one check before the batch, then one per attack step


def test_frozen_except_restores_mode_and_flags_after_an_error() -> None:
    model = _model().train()
    trainable = model[5].weight
    with pytest.raises(RuntimeError), frozen_except(model, [trainable]):
        assert not model.training
        assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True, False]
        raise RuntimeError("mid-way")
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    with frozen_except(model, eval_mode=False):
        assert model.training
