"""The preflight's comparison of input normalisations (``rift.normalization_check``): a
checkpoint run with another normalisation than it was trained with is named, with the one that
fits, and a checkpoint run with its own is left alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rift import checkpoints
from rift.config import NAMED_NORMALIZATIONS, RiftConfig
from rift.data import ImageTensors, load_dataset
from rift.demo import DIGITS_DEMO_CONFIG
from rift.models import build_model
from rift.normalization_check import MIN_EXAMPLES, better_normalization
from rift.pipeline import PipelineCallbacks, prepare_run, run_preflight_stage


class TrainedNormalized(nn.Module):
    """The digits θ_AT as if trained on inputs normalised by ``mean``/``std``: it takes
    ``z = (x − mean) / std`` and gives the digits model ``z · std + mean`` (averaged over
    channels, for a colour copy of the digits), so its accuracy is the digits model's exactly
    when given the normalised inputs it expects."""

    def __init__(self, digits: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.digits = digits
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.digits((z * self.std + self.mean).mean(1, keepdim=True))


@pytest.fixture(scope="module")
def digits(digits_checkpoint_info: dict) -> tuple[nn.Module, ImageTensors]:
    config = RiftConfig.model_validate(DIGITS_DEMO_CONFIG)
    model = build_model(config.architecture, in_channels=1, image_size=8)
    checkpoints.load_into(model, checkpoints.load_state_dict(digits_checkpoint_info["path"]))
    test = load_dataset(config.dataset, config.seed).test.head(256)
    images = test.images.float() / 255 if test.images.dtype == torch.uint8 else test.images
    return model.eval(), ImageTensors(images, test.labels)


def _accuracy(model: nn.Module, data: ImageTensors) -> float:
    with torch.no_grad():
        return 100.0 * float((model(data.images).argmax(1) == data.labels).float().mean())


def _find(model: nn.Module, data: ImageTensors, mean: Any = None, std: Any = None) -> Any:
    # The configured normalisation inside the model, as the registry builds it.
    configured = (model if mean is None else nn.Sequential(_Normalize(mean, std), model)).eval()
    return better_normalization(
        configured, data, mean=mean, std=std, configured_accuracy=_accuracy(configured, data),
        batch_size=128, device=torch.device("cpu"))


class _Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def test_the_digits_checkpoint_with_its_own_inputs_is_left_alone(
        digits: tuple[nn.Module, ImageTensors]) -> None:
    model, data = digits
    assert _find(model, data) is None


@pytest.mark.parametrize(("channels", "trained_with", "named"), [
    (1, NAMED_NORMALIZATIONS["mnist"], "architecture.normalization 'mnist'"),
    # ImageNet's and CIFAR-100's statistics are close: the best of them is named with the
    # others within two points (measured: 27.0 % without, 90.6 % with ImageNet's, 91.4 % with
    # CIFAR-100's).
    (3, NAMED_NORMALIZATIONS["imagenet"], "architecture.normalization 'imagenet'"),
    (3, ([0.0] * 3, [1 / 255] * 3), "the [0, 255] pixel scale"),
    # Normalize((0.5,) * 3, (0.5,) * 3) (PyTorch's CIFAR tutorial, Hugging Face's ViT): the
    # sample's own statistics were named instead (84.8 % against 90.6 %).
    (1, ([0.5], [0.5]), "the [-1, 1] scale (mean 0.5, std 0.5)"),
    (3, ([0.5] * 3, [0.5] * 3), "the [-1, 1] scale (mean 0.5, std 0.5)")])
def test_a_checkpoint_trained_with_a_usual_normalisation_run_without_it_is_named(
        digits: tuple[nn.Module, ImageTensors], channels: int,
        trained_with: tuple[list[float], list[float]], named: str) -> None:
    """Measured (256 digits test examples, 1 channel): 77.0 % without MNIST's normalisation
    against 90.6 % with it."""
    model, data = digits
    data = ImageTensors(data.images.repeat(1, channels, 1, 1), data.labels)
    mean, std = trained_with
    trained = TrainedNormalized(model, mean, std).eval()
    finding = _find(trained, data)
    assert finding is not None and finding.configured == "no normalisation"
    assert named in [finding.better.name, *(name for name, _ in finding.near)]
    assert named in finding.sentence()
    assert finding.accuracy >= finding.configured_accuracy + 10
    # Given what it was trained with, it is left alone.
    assert _find(trained, data, mean, std) is None


def test_a_normalisation_the_checkpoint_was_not_trained_with_is_named(
        digits: tuple[nn.Module, ImageTensors]) -> None:
    """The digits θ_AT (trained on [0, 1] inputs) configured with MNIST's mean/std (measured on
    the preflight's sample of 256: 78.5 % against 91.8 % without)."""
    model, data = digits
    finding = _find(model, data, *NAMED_NORMALIZATIONS["mnist"])
    assert finding is not None and finding.better.name == "no normalisation"
    assert "leave architecture.normalization and architecture.mean/std out" in finding.sentence()


def test_too_few_examples_are_not_compared(digits: tuple[nn.Module, ImageTensors]) -> None:
    model, data = digits
    trained = TrainedNormalized(model, *NAMED_NORMALIZATIONS["mnist"]).eval()
    assert _find(trained, data) is not None
    assert _find(trained, data.head(MIN_EXAMPLES - 1)) is None


def test_the_preflight_warns_naming_the_setting(
        digits_checkpoint_info: dict) -> None:
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    found = {}
    events: list[tuple[str, dict]] = []
    callbacks = PipelineCallbacks(on_event=lambda k, d: events.append((k, d)))
    for normalization in (None, "mnist"):
        raw["architecture"]["normalization"] = normalization
        events.clear()
        run_preflight_stage(prepare_run(RiftConfig.model_validate(raw),
                                        digits_checkpoint_info["path"]), callbacks)
        found[normalization] = [payload["message"] for kind, payload in events
                                if kind == "warning" and "normalisation" in payload["message"]]
    assert found[None] == []
    (warning,) = found["mnist"]
    assert "with the configured mean [0.1307], std [0.3081]" in warning
    assert "leave architecture.normalization and architecture.mean/std out" in warning
