"""Model mode handling (``rift.model_state``) and the measurements that only read a model."""

from __future__ import annotations

import torch
from torch import nn

from rift.config import PreflightSpec
from rift.data import ImageTensors
from rift.model_state import eval_mode
from rift.mrc_shards import estimate_module_costs
from rift.normalization_check import better_normalization
from rift.preflight import collapsed_predictions


def _training_model_with_a_frozen_batchnorm() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 3)).train()
    model[1].eval()  # the caller fine-tunes with this BatchNorm's statistics frozen
    return model


def _modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def test_eval_mode_puts_every_submodule_back() -> None:
    model = _training_model_with_a_frozen_batchnorm()
    before = _modes(model)
    with eval_mode(model):
        assert not any(_modes(model))
    assert _modes(model) == before


def test_read_only_measurements_keep_a_frozen_batchnorm_frozen() -> None:
    """The preflight's collapse check, the normalisation comparison and the MRC shard planner
    measure the model in eval mode; each put the mode back with ``model.train(was_training)``,
    which switched a BatchNorm frozen inside a training model back to train mode: its running
    statistics then followed the caller's next batches."""
    model = _training_model_with_a_frozen_batchnorm()
    before = _modes(model)
    generator = torch.Generator().manual_seed(0)
    sample = ImageTensors(torch.rand(120, 1, 8, 8, generator=generator),
                          torch.randint(0, 3, (120,), generator=generator))
    cpu = torch.device("cpu")
    collapsed_predictions(model, sample, PreflightSpec(examples=120), batch_size=64, device=cpu,
                          seed=0)
    assert _modes(model) == before
    better_normalization(model, sample, mean=None, std=None, configured_accuracy=0.0,
                         batch_size=64, device=cpu)
    assert _modes(model) == before
    estimate_module_costs(model, sample.images[:1], ["0", "5"])
    assert _modes(model) == before
    statistics = model[1].running_mean.clone()
    model(sample.images[:8])  # the caller's next training batch
    assert torch.equal(model[1].running_mean, statistics)
