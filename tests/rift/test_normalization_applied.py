"""``rift.models.normalization_applied``: a run whose architecture.mean/std (or normalization)
the built network does not apply is refused, naming the setting; networks that apply them, in
RiFT's buffers or their own way, pass."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from rift.config import ArchitectureSpec, RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG
from rift.errors import ConfigError
from rift.models import registry
from rift.models.normalization_applied import refuse_ignored_normalization
from rift.models.small_cnn import SmallCNN
from tests.module_factories import PlainConvNet

Builder = Callable[..., nn.Module]


def _ignores(*, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> nn.Module:
    """The builder a user writes first: the keyword arguments are taken and dropped."""
    return PlainConvNet(num_classes)


class _OwnNormalisation(nn.Module):
    """Applies mean/std its own way: constants, or a persistent buffer (in its state dict)."""

    def __init__(self, num_classes: int, mean: Sequence[float] | None,
                 std: Sequence[float] | None, *, persistent: bool) -> None:
        super().__init__()
        self.net = PlainConvNet(num_classes)
        self.mean, self.std = (mean or [0.0])[0], (std or [1.0])[0]
        if persistent:
            self.register_buffer("shift", torch.tensor([self.mean]))

    def forward(self, x: Tensor) -> Tensor:
        shift = self.shift if hasattr(self, "shift") else self.mean
        return self.net((x - shift) / self.std)


def _own(persistent: bool) -> Builder:
    def build(*, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> nn.Module:
        return _OwnNormalisation(num_classes, mean, std, persistent=persistent)
    return build


def _install(monkeypatch: pytest.MonkeyPatch, builders: dict[str, Builder]) -> None:
    monkeypatch.setattr(registry, "_installed_builder", builders.get)


def _check(name: str, **settings: object) -> None:
    spec = ArchitectureSpec(name=name, num_classes=4, **settings)  # type: ignore[arg-type]
    model = registry.build_model(spec, in_channels=3, image_size=8)
    refuse_ignored_normalization(model, spec, (3, 8, 8))


@pytest.mark.parametrize(("settings", "field"), [
    ({"normalization": "cifar10"}, "architecture.normalization"),
    ({"mean": [0.5], "std": [0.25]}, "architecture.mean"),
])
def test_a_builder_dropping_mean_and_std_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], field: str) -> None:
    _install(monkeypatch, {"ignores": _ignores})
    _check("ignores")  # nothing set: nothing to apply
    with pytest.raises(ConfigError, match=r"'ignores' ignores the input normalisation it is "
                       r"given .*computes the same outputs.*\(x - mean\) / std") as refused:
        _check("ignores", **settings)
    assert refused.value.field == field


@pytest.mark.parametrize("name", ["constants", "persistent_buffer", "small_cnn", "mlp",
                                  "resnet18"])
def test_networks_applying_mean_and_std_pass(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _install(monkeypatch, {"constants": _own(False), "persistent_buffer": _own(True)})
    _check(name, normalization="cifar10")
    _check(name, mean=[0.5], std=[0.25])


def test_a_builder_leaving_the_input_buffers_unset_or_other_is_refused_by_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder reusing a built-in network without passing mean/std on (its input buffers
    unset: no normalisation), or passing fixed values of its own."""
    def drops(*, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> nn.Module:
        return SmallCNN(num_classes=num_classes, in_channels=in_channels)

    def fixed(*, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> nn.Module:
        return SmallCNN(num_classes=num_classes, in_channels=in_channels, mean=[0.5], std=[0.5])

    _install(monkeypatch, {"drops": drops, "fixed": fixed})
    with pytest.raises(ConfigError, match=r"input buffers \(input_mean, input_std\) are unset"):
        _check("drops", normalization="cifar10")
    with pytest.raises(ConfigError, match=r"its input buffers hold mean \[0.5, 0.5, 0.5\]"):
        _check("fixed", normalization="cifar10")
    _check("fixed", mean=[0.5], std=[0.5])


def test_pipeline_refuses_the_digits_model_under_a_builder_dropping_the_normalisation(
        digits_checkpoint_info: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the run went on with raw [0, 1] inputs (clean 92.0 % on 200 test examples, where
    the built-in small_cnn, applying MNIST's statistics, scores 77.5 %) while its config and
    results said normalization 'mnist'."""
    from rift.pipeline import prepare_run

    def plain_cnn(*, num_classes: int, in_channels: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> nn.Module:
        model = SmallCNN(num_classes=num_classes, in_channels=in_channels)
        for buffer in ("input_mean", "input_std"):  # a network of the user's own, no buffers
            del model._buffers[buffer]
        return model

    _install(monkeypatch, {"plain_cnn": plain_cnn})
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    raw["architecture"]["name"] = "plain_cnn"
    assert prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])
    raw["architecture"]["normalization"] = "mnist"
    with pytest.raises(ConfigError, match="'plain_cnn' ignores the input normalisation") as error:
        prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])
    assert error.value.field == "architecture.normalization"
