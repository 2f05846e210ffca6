"""BatchNorm folded into convolutions for evaluations (``rift.batchnorm_folding``): the same
function as the model, used by the interpolation stage's PGD evaluations, never when unsafe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import rift.batchnorm_folding as folding
from rift.batchnorm_folding import BatchNormFolding, folds_on
from rift.config import ArchitectureSpec, RiftConfig
from rift.models import build_model
from rift.pipeline import prepare_run, run_finetune_stage, run_interpolation_stage


def _resnet_with_batchnorm_statistics() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(name="resnet18", num_classes=10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(images)


def test_a_folded_copy_computes_the_models_function_with_its_present_weights() -> None:
    model = _resnet_with_batchnorm_statistics().train()
    images = torch.rand(4, 3, 8, 8)
    folds = BatchNormFolding(model, images)
    folded = folds.current()
    assert folds.folding is True and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    # The model itself is untouched: its mode and gradient flags are back.
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    expected = _logits(model, images)
    torch.testing.assert_close(_logits(folded, images), expected, rtol=1e-4, atol=1e-4)
    # New weights loaded into the model (the next α) reach the next folded copy.
    with torch.no_grad():
        model.bn1.running_mean.add_(0.5)
        model.layer4[1].bn2.weight.mul_(3)
    changed = _logits(model, images)
    assert not torch.allclose(changed, expected, atol=1e-3)
    torch.testing.assert_close(_logits(folds.current(), images), changed, rtol=1e-4, atol=1e-4)


class _SharedConv(nn.Module):
    """One convolution called twice, once before a BatchNorm: folding it would change both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


class _Branching(nn.Module):
    """A forward that branches on values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(self.conv(x))
        return out if float(out.sum()) > 0 else -out


@pytest.mark.parametrize("model_type", [_SharedConv, _Branching])
def test_a_model_that_cannot_be_folded_safely_is_evaluated_itself(model_type: type) -> None:
    model = model_type()
    folds = BatchNormFolding(model, torch.rand(2, 3, 4, 4))
    assert folds.current() is model
    assert folds.folding is False
    assert folds.current() is model  # decided once


def test_a_folded_graph_that_computes_something_else_is_never_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _resnet_with_batchnorm_statistics()

    def wrong_fold(traced: nn.Module, no_trace: bool) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

    monkeypatch.setattr(folding, "fuse", wrong_fold)
    folds = BatchNormFolding(model, torch.rand(2, 3, 8, 8))
    assert folds.current() is model and folds.folding is False


def test_auto_folds_on_a_cpu_in_fp32_only() -> None:
    assert folds_on(torch.device("cpu"), "fp32")
    assert not folds_on(torch.device("cpu"), "bf16")
    assert not folds_on(torch.device("cuda"), "fp32")
    with pytest.raises(ValueError, match="fold_batchnorm"):
        RiftConfig.model_validate({"architecture": {"name": "small_cnn"},
                                   "dataset": {"name": "digits"},
                                   "evaluation": {"fold_batchnorm": "always"}})


def _batchnorm_calls_under_grad(model: nn.Module) -> list[int]:
    """Counts (in a one-item list) of BatchNorm forwards of ``model`` with gradients enabled:
    PGD steps (clean passes run under no_grad)."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += int(torch.is_grad_enabled())

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(count)
    return calls


def test_the_interpolation_stage_attacks_a_folded_copy_with_the_same_outcomes(
        digits_checkpoint_path: Path, digits_job_config: dict) -> None:
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[], lr=0.1)
    digits_job_config["interpolation"].update(alpha_step=0.25, curve="full")
    digits_job_config["evaluation"]["max_examples"] = 120
    config = RiftConfig.model_validate(digits_job_config)
    assert config.evaluation.fold_batchnorm == "auto" and config.device in ("cpu", "auto")
    run = prepare_run(config, digits_checkpoint_path)
    assert run.device.type == "cpu"
    finetuned = run_finetune_stage(run, "fc").state_dict
    results, calls = {}, _batchnorm_calls_under_grad(run.model)
    for setting in ("off", "auto"):
        calls[0] = 0
        run.config = config.model_copy(update={"evaluation": config.evaluation.model_copy(
            update={"fold_batchnorm": setting})})
        results[setting] = (run_interpolation_stage(run, finetuned), calls[0])
    (plain, plain_calls), (folded, folded_calls) = results["off"], results["auto"]
    assert plain_calls > 0 and folded_calls == 0  # PGD ran on the folded copy
    assert folded.chosen_alpha == plain.chosen_alpha
    assert folded.points == plain.points  # every α's clean and robust accuracy
    assert folded.attacked_examples == plain.attacked_examples == 5 * 120
    assert folded.before == plain.before and folded.after == plain.after
