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
from tests.tiny_configs import random_images_config


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

    def wrong_fold(traced: nn.Module, pairs: list) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

    monkeypatch.setattr(folding, "folded_copy", wrong_fold)
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


def _batchnorm_calls_under_grad(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts (in a one-item list) of BatchNorm2d forwards with gradients enabled: PGD steps
    (clean passes run under no_grad). Counted in the class's forward, not with a hook: a module
    with hooks is never folded (a hook may change what it computes)."""
    calls = [0]
    forward = nn.BatchNorm2d.forward

    def counted(module: nn.BatchNorm2d, x: Tensor) -> Tensor:
        calls[0] += int(torch.is_grad_enabled())
        return forward(module, x)

    monkeypatch.setattr(nn.BatchNorm2d, "forward", counted)
    return calls


def test_the_interpolation_stage_attacks_a_folded_copy_with_the_same_outcomes(
        digits_checkpoint_path: Path, digits_job_config: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[], lr=0.1)
    digits_job_config["interpolation"].update(alpha_step=0.25, curve="full")
    digits_job_config["evaluation"]["max_examples"] = 120
    config = RiftConfig.model_validate(digits_job_config)
    assert config.evaluation.fold_batchnorm == "auto" and config.device in ("cpu", "auto")
    run = prepare_run(config, digits_checkpoint_path)
    assert run.device.type == "cpu"
    finetuned = run_finetune_stage(run, "fc").state_dict
    results, calls = {}, _batchnorm_calls_under_grad(monkeypatch)
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


def _set_batchnorm(model: nn.Module, generator: torch.Generator | None) -> None:
    """Every BatchNorm at its identity statistics (a fresh layer's, ``generator`` None) or at
    random ones, as a trained or fine-tuned layer has."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
            size = module.running_var.shape
            with torch.no_grad():
                module.running_mean.copy_(torch.zeros(size) if generator is None
                                          else torch.randn(size, generator=generator))
                module.running_var.copy_(torch.ones(size) if generator is None
                                         else torch.rand(size, generator=generator) * 2 + 0.2)
                if module.affine:
                    module.weight.copy_(torch.ones(size) if generator is None
                                        else torch.rand(size, generator=generator) + 0.5)
                    module.bias.copy_(torch.zeros(size) if generator is None
                                      else torch.randn(size, generator=generator))


def _output_and_input_gradient(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the cross-entropy's input gradient, what a PGD step reads (eval mode)."""
    model.eval()
    images = images.clone().requires_grad_(True)
    logits = model(images)
    loss = nn.functional.cross_entropy(logits, torch.zeros(len(images), dtype=torch.long))
    (gradient,) = torch.autograd.grad(loss, images)
    return logits.detach(), gradient


def _assert_same_for_attacks(folded: nn.Module, model: nn.Module, images: Tensor) -> None:
    logits, gradient = _output_and_input_gradient(model, images)
    got_logits, got_gradient = _output_and_input_gradient(folded, images)
    torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_gradient, gradient, rtol=1e-3, atol=1e-6)


class _LinearOnChannels(nn.Module):
    """A Linear over the last dim of (N, C, L) with out_features == C, then BatchNorm1d(C): the
    BatchNorm normalises dim 1, the Linear's features are dim 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 12)
        self.bn = nn.BatchNorm1d(12)
        self.head = nn.Linear(144, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.fc(x.reshape(x.shape[0], 12, 16)))).flatten(1))


class _WeightReadFunctionally(nn.Module):
    """The convolution's weight also used by F.conv2d: a fold would scale that use too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        other = nn.functional.conv2d(x, self.conv.weight, padding=1)
        return self.head(torch.relu(self.bn(self.conv(x)) + other).mean((2, 3)))


class _Hooked(nn.Module):
    """A forward hook on the convolution (clamps its output) or a backward hook on the
    BatchNorm (reverses the gradient through it: forward-only checks cannot see it)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        if where == "conv":
            self.conv.register_forward_hook(lambda module, inputs, output: output.clamp(min=-0.2))
        else:
            self.bn.register_full_backward_hook(lambda module, grad_in, grad_out: (-grad_in[0],))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("make", [
    _LinearOnChannels, _WeightReadFunctionally, lambda: _Hooked("conv"), lambda: _Hooked("bn")],
    ids=["linear_on_channels", "weight_read_functionally", "forward_hook", "backward_hook"])
def test_a_fold_that_is_not_the_models_function_for_every_weight_is_not_made(make) -> None:
    # θ_AT's BatchNorms at their identity statistics: there a wrong fold computes the model's
    # function exactly, and a one-time check at θ_AT passed it; a later α's statistics then
    # made the folded copy another function, silently. The forward-only check never saw the
    # backward hook at all.
    torch.manual_seed(0)
    model = make()
    _set_batchnorm(model, None)
    images = torch.rand(8, 3, 8, 8)
    folds = BatchNormFolding(model, images)
    folds.current()
    _set_batchnorm(model, torch.Generator().manual_seed(1))  # the next α's weights
    _assert_same_for_attacks(folds.current(), model, images)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 4)),
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16, affine=False),
                          nn.ReLU(), nn.Linear(16, 4)),
    lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=2, dilation=2, stride=2, groups=3),
                          nn.BatchNorm2d(6, eps=2.0, momentum=None), nn.Flatten(),
                          nn.LazyLinear(4)),
    lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect", bias=False),
                          nn.BatchNorm2d(6, affine=False), nn.Flatten(), nn.LazyLinear(4)),
    lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
                          nn.BatchNorm2d(6), nn.Flatten(), nn.LazyLinear(4)),
    lambda: nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 6, 3, padding=1), nn.BatchNorm1d(6),
                          nn.Flatten(), nn.LazyLinear(4)),
    lambda: nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv3d(1, 2, 3, padding=1),
                          nn.BatchNorm3d(2), nn.Flatten(), nn.LazyLinear(4)),
], ids=["linear", "linear_no_affine", "grouped_dilated_strided", "reflect_bias_free",
        "circular", "conv1d", "conv3d"])
def test_user_layouts_fold_into_the_models_function_and_gradient(make) -> None:
    torch.manual_seed(0)
    model = make()
    images = torch.rand(8, 3, 8, 8)
    with torch.no_grad():
        model.eval()(images)  # lazy layers take their shapes
    _set_batchnorm(model, torch.Generator().manual_seed(1))
    folds = BatchNormFolding(model, images)
    folded = folds.current()  # Linear → BatchNorm1d(affine=False) raised a TypeError here
    assert folds.folding is True
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    _assert_same_for_attacks(folded, model, images)
    _set_batchnorm(model, torch.Generator().manual_seed(2))
    _assert_same_for_attacks(folds.current(), model, images)


class _BranchAndPreActivation(nn.Module):
    """A convolution feeding a BatchNorm and a skip branch, a BatchNorm before a convolution,
    a transposed convolution before a BatchNorm: none folds, the rest of the model still does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pre_bn = nn.BatchNorm2d(6)
        self.pre = nn.Conv2d(6, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 6, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(6)
        self.last = nn.Conv2d(6, 4, 1)
        self.last_bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.conv(x)
        x = torch.relu(self.bn(skip)) + skip
        x = self.up_bn(self.up(self.pre(torch.relu(self.pre_bn(x)))))
        return self.last_bn(self.last(torch.relu(x))).mean((2, 3))


def test_only_the_batchnorm_after_a_layer_used_nowhere_else_is_folded() -> None:
    torch.manual_seed(0)
    model = _BranchAndPreActivation()
    _set_batchnorm(model, torch.Generator().manual_seed(1))
    images = torch.rand(8, 3, 8, 8)
    folds = BatchNormFolding(model, images)
    folded = folds.current()
    assert folds.folding is True
    kept = {name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert kept == {"bn", "pre_bn", "up_bn"}
    _assert_same_for_attacks(folded, model, images)


def test_a_user_architecture_gets_the_same_curve_and_alpha_folded_or_not(
        plugin_path: Path, tmp_path: Path) -> None:
    """An installed architecture with BatchNorm in each place users put it (after a Linear
    without affine parameters, which made the stage raise a TypeError with "auto"): "auto" and
    "off", "full" and "selection" choose one α, and each α's counts are the same folded or not
    (the full curve's, every point measured). θ_FT is another network with other BatchNorm
    statistics, so that the points differ."""
    config = random_images_config(tmp_path, "batchnorm_layouts_net", tuned="proj",
                                  step_size=0.01, lr=0.5, mrc={"steps": 2})
    config = config.model_copy(update={
        "interpolation": config.interpolation.model_copy(update={"alpha_step": 0.25}),
        "evaluation": config.evaluation.model_copy(update={"max_examples": 12})})
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(config.architecture, in_channels=3, image_size=8)
        _set_batchnorm(model, torch.Generator().manual_seed(seed + 1))
        states.append(model.state_dict())
    run = prepare_run(config, states[0])
    probe = run.splits.test.images[:8].float() / 255
    folds = BatchNormFolding(run.model, probe)
    folded = folds.current()
    assert folds.folding is True  # the stem, grouped and Linear BatchNorms fold
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()) == 2
    results = {}
    for fold, curve in (("off", "full"), ("auto", "full"), ("auto", "selection")):
        run.config = config.model_copy(update={
            "evaluation": config.evaluation.model_copy(update={"fold_batchnorm": fold}),
            "interpolation": config.interpolation.model_copy(update={"curve": curve})})
        results[fold, curve] = run_interpolation_stage(run, states[1])
    assert len({result.chosen_alpha for result in results.values()}) == 1
    plain = results["off", "full"].points
    assert results["auto", "full"].points == plain
    assert len({(p["clean_accuracy"], p["robust_accuracy"]) for p in plain}) > 1


def _near_ties(model: nn.Module, folded: nn.Module, images: Tensor, labels: Tensor
               ) -> tuple[Tensor, Tensor]:
    """Images on the model's decision boundary where it and its folded copy disagree on
    correctness: from each example the model gets right, bisect toward one it gets wrong until
    the step is at float resolution (the two compute the boundary with different rounding);
    all pairs at once, one batch per halving."""
    with torch.no_grad():
        right = model(images).argmax(1) == labels
    start, end, label = images[right], images[~right][:1], labels[right]
    low = torch.zeros(len(start), 1, 1, 1, dtype=torch.float64)
    high = torch.ones_like(low)

    def at(t: Tensor) -> Tensor:
        return ((1 - t) * start.double() + t * end.double()).float()

    def correct(net: nn.Module, t: Tensor) -> Tensor:
        with torch.no_grad():
            return net(at(t)).argmax(1) == label

    for _ in range(32):  # to 2^-32: below a float32 image's resolution
        middle = (low + high) / 2
        keeps = correct(model, middle).view(-1, 1, 1, 1)
        low, high = torch.where(keeps, middle, low), torch.where(keeps, high, middle)
    found = [(at(t)[differ], label[differ]) for t in (low, high)
             if (differ := correct(model, t) != correct(folded, t)).any()]
    assert found, "no near tie found: the test cannot tell the two counts apart"
    return torch.cat([f[0] for f in found])[:8], torch.cat([f[1] for f in found])[:8]


def test_a_re_evaluation_counts_clean_accuracy_as_the_curve_does(
        digits_checkpoint_path: Path, digits_job_config: dict) -> None:
    """The curve counts clean accuracy on the model and attacks a folded copy; evaluate_weights
    (a materialization's numbers, the stage's before/after on another split) counted clean on the
    folded copy, whose rounding flips an example at a near tie: re-evaluating the job's weights
    gave another clean accuracy than the job's before/after."""
    import dataclasses

    from rift.data import ImageTensors, iterate_batches
    from rift.pipeline import _evaluation_models, evaluate_weights

    digits_job_config["attack"]["steps"] = 1
    digits_job_config["interpolation"]["alpha_step"] = 1.0
    digits_job_config["preflight"] = {"examples": 0}
    run = prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    images, labels = next(iterate_batches(run.splits.test, 64, device=run.device))
    folded = _evaluation_models(run, ImageTensors(images, labels))()
    ties, tie_labels = _near_ties(run.model, folded, images, labels)
    with torch.no_grad():  # the two counts differ on these examples: the test can tell
        assert (run.model(ties).argmax(1) == tie_labels).sum() != \
            (folded(ties).argmax(1) == tie_labels).sum()
    run.splits = dataclasses.replace(run.splits, test=ImageTensors(ties, tie_labels))
    stage = run_interpolation_stage(run, run.original_state)  # θ_FT = θ_AT: every α is θ_AT
    assert stage.selection_split == "test"
    again = evaluate_weights(run)
    assert (again.clean_accuracy, again.robust_accuracy) == (
        stage.before["clean_accuracy"], stage.before["robust_accuracy"])
    tuned = evaluate_weights(run, stage.state_dict)
    assert (tuned.clean_accuracy, tuned.robust_accuracy) == (
        stage.after["clean_accuracy"], stage.after["robust_accuracy"])
