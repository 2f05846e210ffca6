"""The paper's quantities against answers worked out by hand on models small enough to solve.

Nothing here asks the library for an expected value: each one is a formula written below.

* PGD (Madry et al.) on a two-class model that is linear in its input (a Linear after an
  eval-mode BatchNorm1d and a dropout). The input gradient of the cross-entropy is
  p_other · (w_other − w_true), one direction for every input, so L∞ PGD whose steps can cover
  the ball's width ends at the corner x* = clip(x + ε·sign(w_other − w_true), box): the exact
  worst case, since the margin is linear and the ball ∩ box is a product of intervals. L2 PGD
  ends at x + ε·d/‖d‖ where that point lies in the box. Robust accuracy is then the share of
  examples whose margin at x* is positive. BatchNorm in train mode or an active dropout would
  move every answer, so the numbers also pin eval mode.
* MRC (Algorithm 1) of a two-class Linear layer on one example: the robust loss is
  softplus(−m(Δ)) with m linear in Δ, so its maximum over the Frobenius ball
  ‖Δ‖_F ≤ ε‖W‖_F (the weight alone: biases are neither perturbed nor in the norm) lowers the
  margin by √2·r·‖x‖ (Cauchy–Schwarz), and over the L∞ ball ‖Δ‖_∞ ≤ ε·max|W| by 2·r·‖x‖₁.
* Theorem A.4 with biases and BatchNorm: rescaling a convolution's weight and bias by β and
  the BatchNorm after it to match is the same function, and every row of the table, not only
  the rescaled layer's, keeps its MRC.
* Fine-tuning (step 2) against a plain loop written from docs/algorithm.md: the whole model in
  train mode (every BatchNorm's statistics follow the batches), SGD with momentum 0.9 and weight
  decay over the module's own weight and bias only, the rate × 0.1 after the milestone epoch,
  batches in the order of one ``randperm`` per epoch from a generator seeded with the seed, and
  the epoch of best validation accuracy kept (the earlier on ties).
* The α rule's bar: with θ_FT = θ_AT every θ_α is θ_AT, so every point of the curve must give
  θ_AT's own clean and robust accuracy, although each α > 0 is attacked in another example
  order and chunking than the bar: the same attack, the same per-example starts and the same
  (BatchNorm-folded) model, or the comparison with the bar measures noise.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rift.attacks import PGD
from rift.config import MRCSpec, RiftConfig
from rift.data import ImageTensors
from rift.evaluation import evaluate_accuracy
from rift.mrc import module_robust_criticality
from rift.pipeline import (
    evaluate_weights,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
)

_CPU = torch.device("cpu")
_PIXELS = 16  # 1×4×4 images


def _linear_in_input_model(seed: int) -> nn.Sequential:
    """Flatten → BatchNorm1d (running statistics far from a batch's) → Dropout → Linear(16, 2),
    handed over in train mode, as a caller in the middle of training holds it: the attack and the
    evaluation must switch it to eval mode themselves."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(_PIXELS), nn.Dropout(0.5),
                          nn.Linear(_PIXELS, 2))
    with torch.no_grad():
        model[1].running_mean.uniform_(0.3, 0.7)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.1, 0.1)
    return model.train()


def _affine_map(model: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with model(x) = W x + b in eval mode, from the layers' own definitions."""
    bn, linear = model[1], model[3]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    weight = linear.weight * scale
    return weight.detach().double(), (linear.weight @ shift + linear.bias).detach().double()


def _margins(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor
             ) -> torch.Tensor:
    logits = x.flatten(1).double() @ weight.T + bias
    return logits.gather(1, y.view(-1, 1)).squeeze(1) - logits.gather(1, (1 - y).view(-1, 1)).squeeze(1)


def _images_and_labels(model: nn.Sequential, count: int, low: float, high: float, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = low + (high - low) * torch.rand(count, 1, 4, 4, generator=generator)
    weight, bias = _affine_map(model)
    labels = (images.flatten(1).double() @ weight.T + bias).argmax(1)
    labels[::5] = 1 - labels[::5]  # some misclassified clean: they stay wrong under attack
    return images, labels


@pytest.mark.parametrize("random_start", [False, True])
def test_linf_pgd_reaches_the_worst_corner_of_a_linear_classifier(random_start: bool) -> None:
    model = _linear_in_input_model(0)
    images, labels = _images_and_labels(model, 300, 0.0, 1.0, seed=1)
    eps = 0.08
    weight, bias = _affine_map(model)
    direction = (weight[1 - labels] - weight[labels]).view_as(images)
    worst = (images.double() + eps * direction.sign()).clamp(0, 1)
    margin = _margins(weight, bias, worst, labels)
    decided = margin.abs() > 1e-4  # a margin at rounding level may fall either way
    assert int(decided.sum()) >= 290
    robust = margin > 0
    assert 0 < int(robust.sum()) < int((_margins(weight, bias, images, labels) > 0).sum())

    # Steps of ε/2: four cover the ball's width 2ε from any start; six leave room.
    attack = PGD(eps, eps / 2, 6, "linf", random_start)
    adversarial = attack.perturb(model, images, labels, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(adversarial.double(), worst, rtol=0, atol=1e-6)

    state = copy.deepcopy(model.state_dict())
    data = ImageTensors(images, labels)
    counts = set()
    for batch_size in (7, 64, 300):  # 300 = 42·7 + 6 = 4·64 + 44: partial last batches
        report = evaluate_accuracy(model, data, attack=attack, batch_size=batch_size,
                                   device=_CPU, seed=5)
        assert report.examples == 300
        counts.add(round(report.robust_accuracy * 3))  # percent of 300 → a count
    # Every example is counted once whatever the batches; the undecided ones may go either way.
    low, high = int((robust & decided).sum()), int((robust | ~decided).sum())
    assert len(counts) == 1 and low <= counts.pop() <= high
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm statistics and counter untouched
    assert all(parameter.grad is None for parameter in model.parameters())
    assert model.training  # the caller's mode back


@pytest.mark.parametrize("random_start", [False, True])
def test_l2_pgd_reaches_the_worst_point_of_a_linear_classifier(random_start: bool) -> None:
    model = _linear_in_input_model(2)
    # Inside [0.3, 0.7] an L2 step of 0.2 moves no pixel out of [0, 1]: the box is not reached.
    images, labels = _images_and_labels(model, 200, 0.3, 0.7, seed=4)
    eps = 0.2
    weight, bias = _affine_map(model)
    direction = (weight[1 - labels] - weight[labels]).view(len(labels), -1)
    unit = (direction / direction.norm(dim=1, keepdim=True)).view_as(images)
    worst = images.double() + eps * unit
    assert float(worst.min()) > 0 and float(worst.max()) < 1
    margin = _margins(weight, bias, worst, labels)
    # The closed form: the margin falls by ε·‖w_true − w_other‖ exactly.
    torch.testing.assert_close(margin, _margins(weight, bias, images, labels)
                               - eps * direction.norm(dim=1))
    decided = margin.abs() > 1e-4
    robust = margin > 0
    assert 0 < int(robust.sum()) < len(labels)

    # Steps of ε: the first one from Δ = 0 lands on the optimum; from a random start inside the
    # ball the projected iterates turn towards it and are there after a few dozen steps.
    attack = PGD(eps, eps, 40, "l2", random_start)
    adversarial = attack.perturb(model, images, labels, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(adversarial.double(), worst, rtol=0, atol=1e-5)
    report = evaluate_accuracy(model, ImageTensors(images, labels), attack=attack, batch_size=32,
                               device=_CPU, seed=7)
    count = round(report.robust_accuracy * len(labels) / 100)
    assert int((robust & decided).sum()) <= count <= int((robust | ~decided).sum())


@pytest.mark.parametrize("p", [2, "inf"])
@pytest.mark.parametrize("ascent", ["normalized", "sgd"])
def test_mrc_of_a_linear_layer_is_the_closed_form_maximum(p: object, ascent: str) -> None:
    torch.manual_seed(8)
    layer = nn.Linear(6, 2)
    with torch.no_grad():
        # A bias of the weight's size: counted in the ball's norm, it would move the radius.
        layer.bias.copy_(torch.tensor([0.3, -0.3]))
    model = nn.Sequential(layer).eval()
    x = torch.randn(1, 6)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    logits = (x.double() @ weight.double().T + bias.double())[0]
    label = int(logits.argmax())
    y = torch.tensor([label])
    margin = float(logits[label] - logits[1 - label])
    eps = 0.5
    if p == 2:  # ‖Δ‖_F ≤ ε‖W‖_F: the bias is not part of the ball's norm
        radius = eps * float(weight.double().norm())
        fall = math.sqrt(2) * radius * float(x.double().norm())
    else:
        radius = eps * float(weight.double().abs().max())
        fall = 2 * radius * float(x.double().abs().sum())
    baseline = math.log1p(math.exp(-margin))
    expected = math.log1p(math.exp(fall - margin)) - baseline

    # The normalized step of lr · radius lands on the optimum at once (the gradient of one
    # two-class example points at it); a plain step of lr · g does with a rate large enough to
    # reach the sphere, and the projection keeps it there.
    spec = MRCSpec(p=p, ascent=ascent, eps=eps, steps=3, batch_size=1,
                   lr=1.0 if ascent == "normalized" else 1e6)
    row = module_robust_criticality(model, x, y, spec).modules[0]
    assert row.mrc == pytest.approx(expected, rel=1e-5)
    assert row.worst_robust_loss == pytest.approx(baseline + expected, rel=1e-5)
    assert row.robust_accuracy_at_worst == (0.0 if fall > margin else 100.0)
    assert row.robust_accuracy_drop == 100.0 - row.robust_accuracy_at_worst
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)


class _ConvNet(nn.Module):
    """Convolutions with biases, a BatchNorm, a residual sum and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x)) + x
        return self.fc(x.mean((2, 3)))


def _fitted_conv_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(9)
    model = _ConvNet()
    images, labels = torch.rand(48, 3, 6, 6), torch.randint(0, 4, (48,))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):  # train mode: the BatchNorm gets statistics of its own
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model.eval(), images, labels


def _rescaled(model: nn.Module, beta: float) -> nn.Module:
    """conv1's weight and bias × β; bn1's mean × β, variance and ε × β²: the same function."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.conv1.weight.mul_(beta)
        scaled.conv1.bias.mul_(beta)
        scaled.bn1.running_mean.mul_(beta)
        scaled.bn1.running_var.mul_(beta**2)
    scaled.bn1.eps *= beta**2
    return scaled


@pytest.mark.parametrize("engine", ["cached", "full"])
@pytest.mark.parametrize("p", [2, "inf"])
def test_every_row_keeps_its_mrc_when_a_layer_with_bias_and_batchnorm_is_rescaled(
        engine: str, p: object) -> None:
    model, images, labels = _fitted_conv_net()
    scaled = _rescaled(model, 10.0)
    with torch.no_grad():
        torch.testing.assert_close(scaled(images), model(images), rtol=1e-4, atol=1e-4)
    spec = MRCSpec(p=p, ascent="normalized", steps=3, batch_size=32, engine=engine)
    rows = module_robust_criticality(model, images, labels, spec).modules
    scaled_rows = module_robust_criticality(scaled, images, labels, spec).modules
    assert [row.name for row in rows] == ["conv1", "conv2", "conv3", "fc"]
    for row, other in zip(rows, scaled_rows, strict=True):
        assert row.mrc > 0.01, row.name
        assert other.mrc == pytest.approx(row.mrc, rel=1e-4), row.name


@pytest.mark.parametrize("fold_batchnorm", ["auto", "off"])
def test_a_curve_of_identical_weights_meets_the_bar_with_equality_at_every_alpha(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any],
        fold_batchnorm: str) -> None:
    raw = digits_job_config
    raw["attack"].update(steps=3, step_size=0.04)
    raw["interpolation"].update(curve="full", alpha_step=0.5)
    # 45 = 6·7 + 3: the bar's chunks and the other points' orders cut the set differently.
    raw["evaluation"].update(max_examples=45, batch_size=7, fold_batchnorm=fold_batchnorm)
    raw["preflight"] = {"examples": 0}
    run = prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_path)
    stage = run_interpolation_stage(run, {key: value.clone()
                                          for key, value in run.original_state.items()})
    bar = (stage.points[0]["clean_accuracy"], stage.points[0]["robust_accuracy"])
    assert bar[1] is not None and 0 < bar[1] < bar[0]  # the attack flips some examples
    assert [point["alpha"] for point in stage.points] == [0.0, 0.5, 1.0]
    for point in stage.points:
        assert (point["clean_accuracy"], point["robust_accuracy"]) == bar, point
    assert stage.chosen_alpha == 0.0
    # The bar is what evaluating θ_AT alone gives (a materialization's numbers).
    alone = evaluate_weights(run)
    assert (alone.clean_accuracy, alone.robust_accuracy) == bar


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def test_fine_tuning_is_the_plain_loop_of_the_protocol(digits_checkpoint_path: Path,
                                                       digits_job_config: dict[str, Any]) -> None:
    raw = digits_job_config
    raw["dataset"]["augment"] = "none"  # batches then depend on the shuffle alone
    raw["finetune"].update(module="conv2", epochs=4, lr=0.05, lr_milestones=[2], lr_gamma=0.1,
                           batch_size=64, momentum=0.9, weight_decay=5e-4)
    raw["preflight"] = {"examples": 0}
    run = prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_path)
    result = run_finetune_stage(run, "conv2")

    model = copy.deepcopy(run.model)
    model.load_state_dict(run.original_state)
    train, validation = run.splits.train, run.splits.validation
    images, labels = _pixels(train.images), train.labels
    tuned = [model.conv2.weight]  # small_cnn's conv2 has no bias
    assert list(model.conv2.parameters()) == tuned
    for parameter in model.parameters():
        parameter.requires_grad_(any(parameter is t for t in tuned))
    optimiser = torch.optim.SGD(tuned, lr=0.05, momentum=0.9, weight_decay=5e-4)
    shuffle = torch.Generator().manual_seed(0)
    best, best_epoch, best_state, accuracies = -1.0, 0, {}, []
    for epoch in range(1, 5):
        if epoch == 3:  # after milestone epoch 2
            for group in optimiser.param_groups:
                group["lr"] = 0.005
        model.train()
        order = torch.randperm(len(labels), generator=shuffle)
        for start in range(0, len(labels), 64):
            index = order[start:start + 64]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            hits = int((model(_pixels(validation.images)).argmax(1) == validation.labels).sum())
        accuracies.append(100.0 * hits / len(validation.labels))
        if accuracies[-1] > best:
            best, best_epoch = accuracies[-1], epoch
            best_state = {key: value.clone() for key, value in model.state_dict().items()}

    assert [epoch["val_accuracy"] for epoch in result.epochs] == accuracies
    assert result.best_epoch == best_epoch
    moved = {key for key in best_state if not torch.equal(best_state[key], run.original_state[key])}
    assert "conv2.weight" in moved and "bn1.running_mean" in moved and "bn3.running_var" in moved
    assert all(key == "conv2.weight" or "running" in key or "num_batches" in key for key in moved)
    for key, value in best_state.items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=1e-6, atol=1e-7,
                                   msg=key)
