"""PGD and accuracy evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rift.attacks import PGD
from rift.data import ImageTensors
from rift.errors import ConfigError
from rift.evaluation import evaluate_accuracy, seeded_generator


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 8, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_image_range(norm: str, batch) -> None:
    images, labels = batch
    attack = PGD(eps=0.1 if norm == "linf" else 0.5, step_size=0.05, steps=5, norm=norm)
    adversarial = attack.perturb(_model(), images, labels, generator=seeded_generator(
        torch.device("cpu"), 0))
    delta = (adversarial - images).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= attack.eps + 1e-6
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    assert adversarial.dtype == torch.float32


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_raises_the_loss(norm: str, batch) -> None:
    images, labels = batch
    model = _model().eval()
    attack = PGD(eps=0.2 if norm == "linf" else 1.0, step_size=0.05, steps=10, norm=norm)
    adversarial = attack.perturb(model, images, labels)
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), labels) > F.cross_entropy(model(images), labels)


def test_pgd_restores_mode_and_leaves_parameters_alone(batch) -> None:
    images, labels = batch
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PGD(eps=0.1, step_size=0.02, steps=3).perturb(model, images, labels)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # eval mode: BN statistics untouched



def test_attack_and_evaluation_keep_a_frozen_batchnorm_frozen(batch) -> None:
    """A caller fine-tuning with BatchNorm frozen (model in train mode, ``bn.eval()``) gets each
    submodule's mode back, not the top-level one: the BatchNorm came back in train mode, and its
    running statistics then silently followed the caller's next batches."""
    images, labels = batch
    model = _model().train()
    model[1].eval()
    data, cpu = ImageTensors(images, labels), torch.device("cpu")
    PGD(eps=0.1, step_size=0.02, steps=2).perturb(model, images, labels)
    assert model.training and not model[1].training
    evaluate_accuracy(model, data, attack=PGD(0.1, 0.02, 1), batch_size=8, device=cpu)
    assert model.training and not model[1].training
    statistics = model[1].running_mean.clone()
    model(images)  # the caller's next training batch
    assert torch.equal(model[1].running_mean, statistics)

def test_pgd_is_deterministic_for_a_seeded_generator(batch) -> None:
    images, labels = batch
    model, attack = _model().eval(), PGD(eps=0.1, step_size=0.02, steps=3)
    cpu = torch.device("cpu")
    first = attack.perturb(model, images, labels, generator=seeded_generator(cpu, 5))
    second = attack.perturb(model, images, labels, generator=seeded_generator(cpu, 5))
    other = attack.perturb(model, images, labels, generator=seeded_generator(cpu, 6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_bf16_attack_keeps_fp32_arithmetic(batch) -> None:
    images, labels = batch
    attack = PGD(eps=2 / 255, step_size=0.5 / 255, steps=3)
    adversarial = attack.perturb(_model().eval(), images, labels, precision="bf16")
    assert adversarial.dtype == torch.float32
    # bf16 has 8 bits of mantissa: a step of 0.5/255 on a pixel near 1 would be lost in bf16.
    assert float((adversarial - images).abs().max()) <= 2 / 255 + 1e-6
    assert float((adversarial - images).abs().max()) > 1 / 255


def test_zero_steps_or_eps_returns_the_clean_images(batch) -> None:
    images, labels = batch
    assert torch.equal(PGD(0.0, 0.01, 5).perturb(_model(), images, labels), images)
    assert torch.equal(PGD(0.1, 0.01, 0).perturb(_model(), images, labels), images)


def test_evaluate_accuracy_matches_a_direct_count(batch) -> None:
    images, labels = batch
    model = _model().eval()
    data = ImageTensors(images, labels)
    cpu = torch.device("cpu")
    attack = PGD(eps=0.1, step_size=0.02, steps=3)
    report = evaluate_accuracy(model, data, attack=attack, batch_size=5, device=cpu, seed=3)
    with torch.no_grad():
        clean = float((model(images).argmax(1) == labels).float().mean()) * 100
    assert report.clean_accuracy == pytest.approx(clean)
    assert report.examples == 16
    assert report.robust_accuracy is not None and report.robust_accuracy <= 100
    again = evaluate_accuracy(model, data, attack=attack, batch_size=5, device=cpu, seed=3)
    assert again == report  # a seeded random start: the same weights give the same numbers
    no_attack = evaluate_accuracy(model, data, attack=None, batch_size=16, device=cpu)
    assert no_attack.robust_accuracy is None and no_attack.clean_accuracy == report.clean_accuracy


def test_check_inputs_refuses_data_the_domain_would_move() -> None:
    """Every step clamps into the domain, so clean inputs outside it (or bounds that do not fit
    the channels) would give 'adversarial' examples far outside the eps ball: refused up front."""
    features = torch.tensor([[0.1, -3.0], [0.3, 2.5]]).view(2, 2, 1, 1)
    PGD(0.1, 0.05, 2, bounds=((0.1, -3.0), (0.3, 2.5))).check_inputs(features, "train inputs")
    PGD(0.1, 0.05, 2, bounds=None).check_inputs(features, "train inputs")
    with pytest.raises(ConfigError, match=r"train inputs lie outside.*feature 1") as error:
        PGD(0.1, 0.05, 2).check_inputs(features, "train inputs")  # [0, 1] default
    assert error.value.field == "attack.domain"
    with pytest.raises(ConfigError, match="3 bounds but the test inputs have 2") as error:
        PGD(0.1, 0.05, 2, bounds=((0.0,) * 3, (1.0,) * 3)).check_inputs(features, "test inputs")
    assert error.value.field == "attack.domain"
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    PGD(0.1, 0.05, 2).check_inputs(pixels, "test inputs")  # uint8 read as value / 255
    with pytest.raises(ConfigError, match="outside"):
        PGD(0.1, 0.05, 2, bounds=((0.0,), (0.5,))).check_inputs(pixels, "test inputs")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_returns_points_inside_the_domain_bit_for_bit(norm: str, batch) -> None:
    """Every coordinate of the returned point lies within the domain's float32 bounds: the last
    step returned x + (clamp(x + δ) − x), which in floating point fell one float step outside
    (an L2 attack in [0.1, 0.9] returned 0.099999994 below float32(0.1))."""
    images, labels = batch
    images = images * 0.8 + 0.1
    low, high = torch.tensor(0.1), torch.tensor(0.9)
    for seed in range(4):
        attack = PGD(eps=0.3 if norm == "linf" else 1.5, step_size=0.1, steps=4, norm=norm,
                     bounds=((0.1,), (0.9,)))
        adversarial = attack.perturb(_model().eval(), images, labels,
                                     generator=seeded_generator(torch.device("cpu"), seed))
        assert bool((adversarial >= low).all()) and bool((adversarial <= high).all())


def test_attacks_and_evaluations_run_under_no_grad_and_inference_mode(batch) -> None:
    """PGD needs the input gradient; an evaluation loop wrapped in ``torch.no_grad()`` (or
    ``inference_mode``) failed with "element 0 of tensors does not require grad". Now the
    numbers are those of a call outside it."""
    images, labels = batch
    model, cpu = _model().eval(), torch.device("cpu")
    attack = PGD(eps=0.1, step_size=0.02, steps=3)
    data = ImageTensors(images, labels)
    expected = attack.perturb(model, images, labels, generator=seeded_generator(cpu, 2))
    report = evaluate_accuracy(model, data, attack=attack, batch_size=8, device=cpu, seed=1)
    with torch.no_grad():
        assert torch.equal(attack.perturb(model, images, labels,
                                          generator=seeded_generator(cpu, 2)), expected)
        assert evaluate_accuracy(model, data, attack=attack, batch_size=8, device=cpu,
                                 seed=1) == report
    with torch.inference_mode():
        inference_images = images.clone()
        assert torch.equal(attack.perturb(model, inference_images, labels,
                                          generator=seeded_generator(cpu, 2)), expected)
        assert evaluate_accuracy(model, ImageTensors(inference_images, labels), attack=attack,
                                 batch_size=8, device=cpu, seed=1) == report
