"""Tests of rift/finetune.py: only the chosen module learns, BatchNorm statistics follow
``bn_stats``, the best validation epoch is kept, cancellation and determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rift.config import ArchitectureSpec, FinetuneSpec
from rift.data import DatasetSplits, ImageTensors
from rift.errors import ConfigError, FinetuneDiverged, JobCancelled, NumericalError
from rift.evaluation import evaluate_accuracy
from rift.finetune import EpochMetrics, finetune_module
from rift.models import build_model
from tests.module_factories import (
    AttentionNet,
    GatedBranch,
    HiddenRunningScale,
    TrainModeTuple,
    VersionedLinear,
)

CPU = torch.device("cpu")


def _synthetic(n: int, seed: int) -> ImageTensors:
    """Ten classes of 8×8 images: a class-specific bright pixel block plus noise (learnable)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.rand(n, 1, 8, 8, generator=gen) * 0.5
    rows, cols = labels // 4, labels % 4
    for i in range(n):
        r, c = 2 * int(rows[i]), 2 * int(cols[i])
        images[i, 0, r:r + 2, c:c + 2] += 0.5
    return ImageTensors(images.clamp(0, 1), labels)


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    return DatasetSplits(
        train=_synthetic(192, 1), validation=_synthetic(80, 2), test=_synthetic(80, 3),
        num_classes=10, image_shape=(1, 8, 8), name="synthetic", augment="none",
    )


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                       image_size=8)


def _spec(**overrides: object) -> FinetuneSpec:
    values: dict[str, object] = {"epochs": 2, "lr": 0.05, "batch_size": 32, "lr_milestones": [1]}
    values.update(overrides)
    return FinetuneSpec(**values)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_the_chosen_module_changes_and_bn_stats_update(splits: DatasetSplits) -> None:
    model = _model()
    model.fc.bias.requires_grad_(False)  # a flag that must survive fine-tuning
    before = _snapshot(model)
    seen: list[EpochMetrics] = []
    result = finetune_module(model, "conv2", splits, _spec(), device=CPU, seed=0,
                             on_epoch=seen.append)
    after = model.state_dict()
    assert result.module == "conv2"
    assert not torch.equal(after["conv2.weight"], before["conv2.weight"])
    for name, _ in model.named_parameters():
        if name != "conv2.weight":
            assert torch.equal(after[name], before[name]), name
    for name in ("bn1.running_mean", "bn2.running_var", "bn3.num_batches_tracked"):
        assert not torch.equal(after[name], before[name]), name
    assert model.fc.bias.requires_grad is False
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc.bias")
    assert model.training
    assert [m.epoch for m in result.epochs] == [1, 2]
    assert seen == result.epochs
    assert [m.lr for m in result.epochs] == pytest.approx([0.05, 0.005])
    assert set(result.epochs[0].as_dict()) == {
        "epoch", "lr", "train_loss", "train_accuracy", "val_accuracy", "seconds"}


def test_frozen_bn_statistics_stay_put(splits: DatasetSplits) -> None:
    model = _model()
    before = _snapshot(model)
    finetune_module(model, "fc", splits, _spec(bn_stats="freeze"), device=CPU, seed=0)
    after = model.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["fc.bias"], before["fc.bias"])
    for name, value in before.items():
        if not name.startswith("fc."):
            assert torch.equal(after[name], value), name


def test_best_epoch_is_the_validation_argmax(splits: DatasetSplits) -> None:
    model = _model(1)
    # A large lr on the head makes the validation accuracy jump around (here it plateaus, so the
    # tie rule — the earlier epoch — is exercised too); list.index gives the first maximum.
    result = finetune_module(model, "fc", splits, _spec(epochs=4, lr=0.5, lr_milestones=[3]),
                             device=CPU, seed=3)
    accuracies = [m.val_accuracy for m in result.epochs]
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1
    assert result.best_val_accuracy == max(accuracies)
    # The returned weights (and the model's) are those of the best epoch.
    for key, value in model.state_dict().items():
        assert torch.equal(result.state_dict[key], value), key
        assert result.state_dict[key].device.type == "cpu"
    report = evaluate_accuracy(model, splits.validation, attack=None, batch_size=256,
                               device=CPU, seed=3)
    assert report.clean_accuracy == max(accuracies)


def test_cancellation_raises_and_restores_flags(splits: DatasetSplits) -> None:
    model = _model()
    before = _snapshot(model)
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(JobCancelled):
        finetune_module(model, "conv1", splits, _spec(), device=CPU, seed=0,
                        should_cancel=should_cancel)
    assert len(calls) == 3
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.state_dict()["conv3.weight"], before["conv3.weight"])


def test_same_seed_same_weights(splits: DatasetSplits) -> None:
    spec = _spec(epochs=1)
    states = []
    for seed in (5, 5, 6):
        model = _model()
        states.append(finetune_module(model, "conv2", splits, spec, device=CPU, seed=seed)
                      .state_dict)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["conv2.weight"], states[2]["conv2.weight"])


def test_unknown_or_parameterless_module(splits: DatasetSplits) -> None:
    with pytest.raises(ConfigError) as info:
        finetune_module(_model(), "layer9.conv", splits, _spec(), device=CPU, seed=0)
    assert info.value.field == "finetune.module"
    assert "conv1" in info.value.message and "fc" in info.value.message
    relu_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
    with pytest.raises(ConfigError, match="'2' is a ReLU, which MRC does not score"):
        finetune_module(relu_net, "2", splits, _spec(), device=CPU, seed=0)


class _ScaledLinear(nn.Linear):
    """A custom layer MRC scores: a Linear subclass (its ``weight`` is perturbed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(x)


class _Gain(nn.Module):
    """A custom layer MRC does not score: a raw Parameter of its own code."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


def test_finetune_module_must_be_a_module_mrc_scores(splits: DatasetSplits) -> None:
    """RiFT fine-tunes a module the MRC table can rank. Before: any module with parameters of
    its own was tuned, a BatchNorm (``bn1``) or a custom gain included, though MRC never
    scores one; ``mrc.modules`` refused the same names."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), _Gain(),
                          nn.Flatten(), _ScaledLinear(16 * 64, 10))
    for name, kind in (("1", "BatchNorm2d"), ("2", "_Gain")):
        with pytest.raises(ConfigError) as info:
            finetune_module(model, name, splits, _spec(), device=CPU, seed=0)
        assert info.value.field == "finetune.module"
        assert f"'{name}' is a {kind}, which MRC does not score" in info.value.message
        assert info.value.message.endswith("modules MRC scores (one of these may be "
                                           "fine-tuned): 0, 4")
    # A custom subclass of a scored kind is a row, and may be tuned.
    result = finetune_module(model, "4", splits, _spec(epochs=1, lr_milestones=[]), device=CPU, seed=0)
    assert result.module == "4"


def _one_by_one_bn_model() -> nn.Module:
    """BatchNorm after an 8×8 convolution: one value per channel for each example."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 8), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 10))


def test_a_final_batch_of_one_is_left_out_where_batchnorm_cannot_train_on_it(
        splits: DatasetSplits) -> None:
    # 193 examples in batches of 32 leave one: before, BatchNorm raised ValueError ("Expected
    # more than 1 value per channel when training") at the end of the first epoch.
    odd = DatasetSplits(train=_synthetic(193, 1), validation=splits.validation,
                        test=splits.test, num_classes=10, image_shape=(1, 8, 8),
                        name="synthetic", augment="none")
    result = finetune_module(_one_by_one_bn_model(), "4", odd, _spec(), device=CPU, seed=0)
    assert len(result.epochs) == 2


def test_batches_of_one_for_such_batchnorm_are_a_config_error(splits: DatasetSplits) -> None:
    with pytest.raises(ConfigError, match=r"BatchNorm layer '1'.*batches of one") as error:
        finetune_module(_one_by_one_bn_model(), "4", splits, _spec(batch_size=1, epochs=1),
                        device=CPU, seed=0)
    assert error.value.field == "finetune.batch_size"
    # Frozen statistics: BatchNorm runs in eval mode and takes a batch of one.
    small = DatasetSplits(train=_synthetic(12, 1), validation=splits.validation,
                          test=splits.test, num_classes=10, image_shape=(1, 8, 8),
                          name="synthetic", augment="none")
    finetune_module(_one_by_one_bn_model(), "4", small,
                    _spec(batch_size=1, epochs=1, bn_stats="freeze"), device=CPU, seed=0)


def test_the_best_epoch_is_loaded_back_with_the_modules_format_versions(
        splits: DatasetSplits) -> None:
    # Before: the best epoch's weights went back through a plain dict, so a module that needs
    # its format version to load (torchvision's MNASNet) raised ValueError after training.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), VersionedLinear(64, 10))
    result = finetune_module(model, "1", splits, _spec(epochs=1), device=CPU, seed=0)
    torch.testing.assert_close(model[1].weight, result.state_dict["1.weight"])


def _rgb_splits(classes: int = 4) -> DatasetSplits:
    gen = torch.Generator().manual_seed(0)

    def part(n: int) -> ImageTensors:
        return ImageTensors(torch.rand(n, 3, 8, 8, generator=gen), torch.arange(n) % classes)

    return DatasetSplits(train=part(32), validation=part(16), test=part(16),
                         num_classes=classes, image_shape=(3, 8, 8), name="synthetic",
                         augment="none")


def test_a_model_that_returns_a_tuple_in_train_mode_is_a_config_error() -> None:
    """Eval mode gives logits (the pipeline's shape probe passes), train mode a tuple. Before:
    AttributeError ("'tuple' object has no attribute 'float'") from inside the training loop."""
    model = TrainModeTuple()
    with pytest.raises(ConfigError, match=r"train mode.*tuple") as info:
        finetune_module(model, "head", _rgb_splits(), _spec(), device=CPU, seed=0)
    assert info.value.field == "architecture"


def test_a_module_the_output_does_not_depend_on_is_refused_not_tuned(
        splits: DatasetSplits) -> None:
    """A branch behind a zero gate scores MRC exactly 0, so it is chosen; its weights then got
    exactly zero gradients and "fine-tuning" it changed nothing but other layers' statistics,
    with no word (digits θ_AT with such a branch: a reported gain of 0.5 clean and 1.6 robust
    points, all from BatchNorm statistics). The same branch with the gate open trains."""
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"fine-tuning 'branch' would change nothing: .*"
                       r"\(branch.weight, branch.bias\) is exactly zero on all 32 examples"
                       ) as refused:
        finetune_module(GatedBranch(), "branch", splits, _spec(), device=CPU, seed=0)
    assert refused.value.field == "finetune.module"
    model = GatedBranch(gate=1.0)
    before = _snapshot(model)
    finetune_module(model, "branch", splits, _spec(), device=CPU, seed=0)
    assert not torch.equal(model.branch.weight, before["branch.weight"])


def test_fine_tuning_an_attention_module_moves_only_its_own_projection() -> None:
    """``attn`` owns the packed ``in_proj_weight``/``in_proj_bias``; its ``out_proj`` is a
    module of its own (a separate MRC row) and stays put."""
    torch.manual_seed(0)
    model = AttentionNet()
    before = _snapshot(model)
    finetune_module(model, "attn", _rgb_splits(), _spec(lr=0.5), device=CPU, seed=0)
    changed = {key for key, value in model.state_dict().items()
               if not torch.equal(value, before[key])}
    assert changed == {"attn.in_proj_weight", "attn.in_proj_bias"}


def test_buffers_outside_the_state_dict_are_put_back() -> None:
    """θ_FT and every θ_α are state dicts: a non-persistent buffer that training moved would
    make the evaluated model differ from the saved weights (and θ_α at α = 0 from θ_AT)."""
    torch.manual_seed(0)
    model = HiddenRunningScale()
    result = finetune_module(model, "head", _rgb_splits(), _spec(), device=CPU, seed=0)
    assert "scale" not in result.state_dict
    assert torch.equal(model.scale, torch.ones(1))


class RunningInstanceNorm(nn.Module):
    """An InstanceNorm keeping running statistics (used in eval mode), beside a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.instance = nn.InstanceNorm2d(6, affine=True, track_running_stats=True)
        self.batch = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.batch(self.instance(self.conv(x)))).mean((2, 3)))


def test_frozen_statistics_include_an_instance_norm_that_keeps_them(
        splits: DatasetSplits) -> None:
    """Before: with ``bn_stats: "freeze"`` only BatchNorm stayed in eval mode, and the
    InstanceNorm's running statistics (which eval mode normalises with) moved."""
    torch.manual_seed(0)
    model = RunningInstanceNorm()
    before = _snapshot(model)
    finetune_module(model, "conv", splits, _spec(bn_stats="freeze"), device=CPU, seed=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"conv.weight", "conv.bias"}
    finetune_module(model, "conv", splits, _spec(), device=CPU, seed=0)  # "update" moves both
    assert not torch.equal(model.instance.running_mean, before["instance.running_mean"])
    assert not torch.equal(model.batch.running_mean, before["batch.running_mean"])


def test_tied_parameters_of_the_tuned_module_are_named_with_their_other_modules() -> None:
    from rift.finetune import tied_elsewhere
    from tests.module_factories import TiedWeights

    model = TiedWeights()
    assert tied_elsewhere(model, "b") == {"b.weight": ["a"]}
    assert tied_elsewhere(model, "a") == {"a.weight": ["b"]}
    assert tied_elsewhere(model, "twice") == {}  # one module called twice: nothing else moves
    # A name that is no module: the ConfigError of finetune.module (was torch's AttributeError).
    for name in ("nope", "b ", "a.weight"):
        with pytest.raises(ConfigError) as error:
            tied_elsewhere(model, name)
        assert error.value.field == "finetune.module"


@pytest.mark.parametrize(("overrides", "field"), [
    ({}, "finetune.lr"),
    ({"lr_grid": [10.0]}, "finetune.lr_grid"),
])
def test_a_diverging_fine_tune_is_a_numerical_error_naming_the_rate(
        splits: DatasetSplits, overrides: dict[str, object], field: str) -> None:
    """The schema's largest rate with momentum and weight decay that amplify it (found by the
    config fuzz): before, training went on with a NaN loss, θ_FT was saved with NaN weights (no
    reader takes them back) and the α curve measured a model answering one class."""
    spec = _spec(epochs=2, lr=10.0, momentum=0.999, weight_decay=1.0, batch_size=4,
                 bn_stats="freeze", **overrides)
    with pytest.raises(NumericalError, match="fine-tuning diverged in epoch 1") as error:
        finetune_module(_model(), "conv1", splits, spec, device=CPU, seed=0)
    assert error.value.field == field
    # No finite epoch to keep: the error a sweep excludes a candidate on (rift.sweep).
    assert isinstance(error.value, FinetuneDiverged)


def test_a_fine_tune_that_diverges_after_a_finite_epoch_keeps_the_best_finite_epoch(
        splits: DatasetSplits) -> None:
    """The reference protocol keeps the best validation epoch: a later epoch's NaN used to fail
    the whole run although epoch 1 was fine. Now training stops at the diverged epoch and θ_FT is
    epoch 1's weights, bit for bit those of a run that stopped there."""
    # No momentum, weight decay 1 at rate 10: each step scales the weights by about -9, so the
    # 24 steps of epoch 1 stay finite and epoch 2 overflows.
    diverging = _spec(epochs=3, lr=10.0, momentum=0.0, weight_decay=1.0, batch_size=8,
                      bn_stats="freeze", lr_milestones=[5])
    model = _model()
    seen: list[EpochMetrics] = []
    result = finetune_module(model, "conv1", splits, diverging, device=CPU, seed=0,
                             on_epoch=seen.append)
    assert result.diverged is not None
    assert (result.diverged.epoch, result.diverged.kept_epoch, result.best_epoch) == (2, 1, 1)
    assert result.diverged.field == "finetune.lr"
    assert "diverged in epoch 2 at lr 10; kept epoch 1" in result.diverged.message()
    assert "consider a smaller finetune.lr" in result.diverged.message()
    assert [m.epoch for m in result.epochs] == [1] and seen == result.epochs
    one_epoch = finetune_module(_model(), "conv1", splits, diverging.model_copy(
        update={"epochs": 1}), device=CPU, seed=0)
    assert one_epoch.diverged is None
    for name, value in one_epoch.state_dict.items():
        assert torch.equal(result.state_dict[name], value), name
        assert torch.equal(model.state_dict()[name], value), name  # the model holds θ_FT too
