"""Tests for rift.models: names, shapes, parameter counts, normalisation, meta builds, fx tracing."""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn

from rift.config import ArchitectureSpec
from rift.errors import ConfigError, UnknownArchitectureError
from rift.models import build_model, check_model_accepts, list_architectures, registry
from tests.module_factories import (
    ChannelLastNet,
    FixedInputSizeNet,
    SignalNet,
    TokenClassifier,
)

NATIVE = [
    "small_cnn",
    "resnet18",
    "resnet34",
    "preact_resnet18",
    "wide_resnet34_10",
    "wide_resnet28_10",
]
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2471, 0.2435, 0.2616]


def _build(name: str, *, meta: bool = False, **spec: object) -> nn.Module:
    arch = ArchitectureSpec(name=name, **spec)  # type: ignore[arg-type]
    if meta:
        with torch.device("meta"):
            return build_model(arch)
    return build_model(arch)


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_architectures_names_builtins_and_torchvision() -> None:
    names = list_architectures()
    assert names[: len(NATIVE)] == NATIVE
    assert "torchvision:resnet50" in names
    assert all(n in NATIVE or n == "mlp" or n.startswith("torchvision:") for n in names)


@pytest.mark.parametrize("name", [*NATIVE, "torchvision:resnet50"])
def test_builds_on_meta_device_without_allocating(name: str) -> None:
    model = _build(name, meta=True)
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors
    assert all(t.is_meta for t in tensors)


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_at_cifar_and_tiny_imagenet_sizes(name: str, size: int) -> None:
    model = _build(name, meta=True, num_classes=7, image_size=size)
    out = model(torch.zeros(3, 3, size, size, device="meta"))
    assert out.shape == (3, 7)


def test_real_forward_gives_finite_logits() -> None:
    torch.manual_seed(0)
    model = _build("small_cnn", num_classes=5).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_small_cnn_handles_8x8_digits_and_is_tiny() -> None:
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(name="small_cnn"), in_channels=1, image_size=8)
    assert model.conv1.weight.shape[1] == 1
    assert 1_000 <= _num_parameters(model) <= 100_000
    out = model(torch.rand(4, 1, 8, 8))
    assert out.shape == (4, 10)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("resnet18", 11_173_962, 11_173_962),  # the well-known CIFAR ResNet-18 count
        ("resnet34", 21_200_000, 21_400_000),
        ("preact_resnet18", 11_100_000, 11_250_000),
        ("wide_resnet34_10", 46_100_000, 46_200_000),
        ("wide_resnet28_10", 36_400_000, 36_550_000),
    ],
)
def test_parameter_counts(name: str, low: int, high: int) -> None:
    assert low <= _num_parameters(_build(name, meta=True)) <= high


def test_resnet18_key_names_match_public_checkpoints() -> None:
    keys = _build("resnet18", meta=True).state_dict().keys()
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.1.conv2.weight",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean",
        "layer4.1.bn2.weight",
        "linear.weight",
        "linear.bias",
    ]:
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys


def test_preact_resnet18_key_names_match_public_checkpoints() -> None:
    keys = _build("preact_resnet18", meta=True).state_dict().keys()
    for key in [
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_mean",
        "layer2.0.shortcut.0.weight",
        "bn.weight",
        "linear.weight",
    ]:
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys
    assert "bn1.weight" not in keys


def test_wide_resnet34_10_names_match_trades_checkpoints() -> None:
    model = _build("wide_resnet34_10", meta=True)
    modules = dict(model.named_modules())
    assert isinstance(modules["block1.layer.3.conv2"], nn.Conv2d)
    assert isinstance(modules["block1.layer.0.relu1"], nn.ReLU)
    assert len(model.block1.layer) == 5
    keys = model.state_dict().keys()
    for key in [
        "conv1.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.4.conv2.weight",
        "block3.layer.0.bn1.running_mean",
        "bn1.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert len(_build("wide_resnet28_10", meta=True).block1.layer) == 4


@pytest.mark.parametrize("name", NATIVE)
def test_normalisation_buffers_stay_out_of_the_state_dict(name: str) -> None:
    model = _build(name, meta=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert not any("input_" in key for key in model.state_dict())
    assert model.input_mean.shape == (1, 3, 1, 1)


def test_normalisation_happens_inside_forward() -> None:
    torch.manual_seed(0)
    normalised = _build("small_cnn", mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    plain = _build("small_cnn").eval()
    plain.load_state_dict(normalised.state_dict())
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    expected = plain((images - mean) / std)
    torch.testing.assert_close(normalised(images), expected)
    assert not torch.allclose(plain(images), expected)


def test_single_value_statistics_broadcast_and_wrong_length_is_rejected() -> None:
    model = build_model(ArchitectureSpec(name="small_cnn", mean=[0.5], std=[0.25]), in_channels=2)
    assert model.input_std.flatten().tolist() == [0.25, 0.25]
    with pytest.raises(ConfigError, match="mean"):
        build_model(ArchitectureSpec(name="small_cnn", mean=[0.1, 0.2], std=[1.0, 1.0]))


def test_spec_channels_and_size_win_over_keyword_defaults() -> None:
    spec = ArchitectureSpec(name="small_cnn", in_channels=1, image_size=8)
    model = build_model(spec, in_channels=3, image_size=32)
    assert model.conv1.weight.shape[1] == 1


def test_torchvision_model_keeps_its_names_and_normalises_with_imagenet_stats() -> None:
    torch.manual_seed(0)
    model = _build("torchvision:resnet18", num_classes=4).eval()
    reference = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    assert isinstance(model, torchvision.models.ResNet)
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    images = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(images), reference((images - mean) / std))


def test_torchvision_model_adapts_input_channels() -> None:
    model = _build("torchvision:resnet18", meta=True, in_channels=1)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model(torch.zeros(2, 1, 64, 64, device="meta")).shape == (2, 10)


def test_torchvision_builder_that_reads_tensors_still_builds_on_meta() -> None:
    # RegNet computes its widths with tensors, which meta tensors cannot give back.
    model = _build("torchvision:regnet_y_400mf", meta=True)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", [*NATIVE, "torchvision:resnet50"])
def test_every_architecture_is_fx_traceable(name: str) -> None:
    model = _build(name, meta=True)
    graph = torch.fx.symbolic_trace(model)
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
    conv_names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    # Every weight module the MRC engine may perturb is called as a module in the traced graph.
    assert conv_names <= called


def test_vision_transformer_is_fx_traceable() -> None:
    model = _build("torchvision:vit_b_16", meta=True, image_size=64)
    traced = torch.fx.symbolic_trace(model)
    assert traced(torch.zeros(1, 3, 64, 64, device="meta")).shape == (1, 10)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "torchvision:mobilenet_v3_small"])
def test_traced_model_computes_the_same_function(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]).eval()
    traced = torch.fx.symbolic_trace(model)
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(traced(images), model(images))


def test_unknown_architecture_lists_known_names() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        build_model(ArchitectureSpec(name="resnet19"))
    for name in NATIVE:
        assert name in info.value.message
    assert "torchvision:" in info.value.message
    assert info.value.field == "architecture.name"
    # Before: the names listed, none suggested.
    with pytest.raises(UnknownArchitectureError) as typo:
        build_model(ArchitectureSpec(name="ResNet-18"))
    assert "unknown architecture 'ResNet-18'; did you mean 'resnet18'?" in typo.value.message
    with pytest.raises(UnknownArchitectureError) as far:
        build_model(ArchitectureSpec(name="transformer"))
    assert "did you mean" not in far.value.message


def test_unknown_torchvision_model_lists_torchvision_names() -> None:
    with pytest.raises(UnknownArchitectureError, match="resnet50"):
        build_model(ArchitectureSpec(name="torchvision:resnet51"))


def test_a_builder_that_refuses_its_options_is_a_config_error() -> None:
    # torchvision checks a vision transformer's image size with a bare assert.
    with pytest.raises(ConfigError, match=r"vit_b_32.*image_size=8.*AssertionError") as error:
        _build("torchvision:vit_b_32", in_channels=1, image_size=8)
    assert error.value.field == "architecture"


@pytest.mark.parametrize(("name", "spec", "image_shape", "words"), [
    ("torchvision:squeezenet1_1", {}, (3, 8, 8), "3×8×8"),  # pools away an 8×8 image
    ("small_cnn", {"in_channels": 3}, (1, 8, 8), "1×8×8"),  # in_channels unlike the data's
    ("torchvision:vit_b_16", {"image_size": 16}, (3, 16, 32), "3×16×32"),  # not square
])
def test_check_model_accepts_names_the_architecture_and_the_input_shape(
        name: str, spec: dict, image_shape: tuple[int, int, int], words: str) -> None:
    arch = ArchitectureSpec(name=name, **spec)
    model = build_model(arch, in_channels=image_shape[0], image_size=image_shape[1])
    with pytest.raises(ConfigError, match=f"{name}.*{words}") as error:
        check_model_accepts(model, arch, image_shape, device=torch.device("cpu"))
    assert error.value.field == "architecture"


def test_check_model_accepts_wants_num_classes_logits_and_restores_the_mode() -> None:
    arch = ArchitectureSpec(name="small_cnn", num_classes=4)
    model = build_model(arch, in_channels=1, image_size=8).train()
    check_model_accepts(model, arch, (1, 8, 8), device=torch.device("cpu"))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert int(model.bn1.num_batches_tracked) == 0  # eval mode: BatchNorm statistics untouched
    with pytest.raises(ConfigError, match=r"returns \(1, 4\).*\(1, 7\)"):
        check_model_accepts(model, ArchitectureSpec(name="small_cnn", num_classes=7), (1, 8, 8),
                            device=torch.device("cpu"))


@pytest.mark.parametrize(("model", "image_shape", "words"), [
    # A model for flat vectors (a Linear first), given images or (N, F, 1, 1) feature vectors.
    (nn.Sequential(nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, 4)), (3, 8, 8),
     "it does take flat vectors of 192 features, (N, 192): RiFT passes every input as "
     "(N, C, H, W) (images), so flatten at the start of forward (x = x.flatten(1))"),
    (nn.Sequential(nn.Linear(30, 4)), (30, 1, 1),
     "it does take flat vectors of 30 features, (N, 30): RiFT passes every input as "
     "(N, C, H, W) (feature vectors as (N, F, 1, 1))"),
    # An RGB network given grey images, and a grey one given colour images.
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (1, 8, 8),
     "it does take 3-channel images: the data has 1 channel(s) (grey)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 8, 8),
     "it does take 1-channel images: the data has 3 channel(s) (colour)"),
])
def test_a_refused_input_names_the_form_the_model_takes(
        model: nn.Module, image_shape: tuple[int, int, int], words: str) -> None:
    arch = ArchitectureSpec(name="own", num_classes=4)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(model, arch, image_shape, device=torch.device("cpu"))
    assert words in error.value.message


def test_a_refused_input_with_no_other_form_gives_no_hint() -> None:
    arch = ArchitectureSpec(name="own", num_classes=4)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(nn.Linear(5, 4), arch, (3, 8, 8), device=torch.device("cpu"))
    assert "does take" not in error.value.message


def test_a_checkpoint_for_colour_images_on_grey_data_names_both_channel_counts() -> None:
    from rift.config import RiftConfig
    from rift.errors import CheckpointMismatchError
    from rift.pipeline import prepare_run

    config = RiftConfig.model_validate({"architecture": {"name": "small_cnn"},
                                        "dataset": {"name": "digits"}, "device": "cpu"})
    rgb = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(CheckpointMismatchError) as error:
        prepare_run(config, rgb)
    assert error.value.message.endswith(
        "conv1.weight takes 3-channel inputs in the checkpoint, and the data's images have 1 "
        "channel(s): the checkpoint was trained on other images; RiFT does not convert "
        "channels, give the data with 3 (e.g. an npz x repeated along its channel axis)")


def test_googlenet_with_auxiliary_heads_in_its_checkpoint_keeps_them_and_returns_logits() -> None:
    """A GoogLeNet trained from scratch with torchvision's defaults holds aux1/aux2: the model
    is built with them, so the checkpoint loads (before: 20 unexpected keys), and in train mode
    it still returns the logits alone (fine-tuning reads a tensor)."""
    trained = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)
    state = trained.state_dict()
    arch = ArchitectureSpec(name="torchvision:googlenet")
    model = build_model(arch, in_channels=3, image_size=32, checkpoint_keys=state)
    assert sorted(model.state_dict()) == sorted(state)
    model.load_state_dict(state)
    assert tuple(model.train()(torch.rand(2, 3, 32, 32)).shape) == (2, 10)
    assert build_model(arch, in_channels=3, image_size=32).aux1 is None  # no heads, no keys


@pytest.mark.parametrize(("model", "image_shape", "words"), [
    # An ImageNet-size head on CIFAR-size images; an MNIST MLP on 8×8 digits; an MNIST MLP on
    # colour CIFAR (size and channels).
    (FixedInputSizeNet(size=224), (3, 32, 32),
     "it runs on 224×224 inputs (sizes tried: 28, 32, 64, 96, 128, 224, 256, 299, 384), and "
     "the dataset's images are 32×32: the model was built for 224×224 inputs. Resize the "
     "dataset's images to a size it takes (dataset.image_size for an ImageFolder"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), (1, 8, 8),
     "it runs on 28×28 inputs (sizes tried: 16, 28,"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), (3, 32, 32),
     "it runs on 28×28 inputs with 1 channel(s) (the data has 3)"),
    # Non-square data for a model built for its height (as a torchvision ViT is built): its
    # sides were not among the sizes tried, so no hint at all.
    (FixedInputSizeNet(size=16), (3, 16, 12),
     "it runs on 16×16 inputs (sizes tried: 12, 16, 28,"),
    (ChannelLastNet(), (3, 32, 32),
     "it does take channel-last images, (N, 32, 32, 3) (N, H, W, C): RiFT passes images "
     "channel-first"),
    # (N, 2, 64) signals in a 3-D npz array, read as one-channel 2×64 images.
    (SignalNet(channels=2), (1, 2, 64),
     "it does take (N, 2, 64) inputs (channels, steps: a 1-D signal's form): RiFT passes every "
     "input as (N, C, H, W) = (N, 1, 2, 64) (a 3-D npz array is read as N×H×W images of one "
     "channel), so merge C and H at the start of forward (x = x.flatten(1, 2))"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_model_for_another_input_size_or_layout_is_named(
        model: nn.Module, image_shape: tuple[int, int, int], words: str, device: str) -> None:
    """Before: the framework's shape error alone ("mat1 and mat2 shapes cannot be
    multiplied"). On the meta device as the API's fit check runs it."""
    model = model.to(device)
    arch = ArchitectureSpec(name="own", num_classes=4)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(model, arch, image_shape, device=torch.device(device))
    assert words in error.value.message and error.value.field == "architecture"


def test_a_minimum_size_lists_the_sizes_that_run_and_names_architecture_image_size() -> None:
    arch = ArchitectureSpec(name="torchvision:squeezenet1_1", num_classes=4, image_size=16)
    with torch.device("meta"):
        model = build_model(arch, in_channels=3, image_size=8)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(model, arch, (3, 8, 8), device=torch.device("meta"))
    assert "it runs on 28×28, 32×32, 64×64" in error.value.message
    assert "the model needs other sizes than 8×8" in error.value.message
    assert "architecture.image_size 16 builds it for 16×16" in error.value.message


def test_the_input_form_hint_keeps_to_its_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "HINT_SECONDS", 0.0)
    arch = ArchitectureSpec(name="own", num_classes=4)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(FixedInputSizeNet(size=224), arch, (3, 32, 32),
                            device=torch.device("cpu"))
    assert "mat1 and mat2" in error.value.message and "it runs on" not in error.value.message


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_model_looking_its_input_up_as_token_ids_is_refused_naming_the_embedding(
        device: str) -> None:
    """Before: "Expected tensor for argument #1 'indices' to have one of the following scalar
    types" (on the CPU), and nothing at all on the meta device (the API's fit check)."""
    arch = ArchitectureSpec(name="own", num_classes=4)
    with pytest.raises(ConfigError) as error:
        check_model_accepts(TokenClassifier().to(device), arch, (12, 1, 1),
                            device=torch.device(device))
    assert "looks its input up in an embedding table ('tokens')" in error.value.message
    assert "cannot attack token ids" in error.value.message
    assert error.value.__cause__ is None  # the fit check must not take it for a meta limitation


def test_a_single_logit_binary_head_is_told_how_to_give_two_logits() -> None:
    """A sigmoid/BCE classifier returns (N, 1): cross-entropy on one column is 0 for every
    input. Before: only "needs logits of shape (1, 2)", no word of the usual cause."""
    single = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
    with pytest.raises(ConfigError, match=r"returns \(1, 1\).*single-logit binary head.*"
                       r"torch.cat\(\[torch.zeros_like\(z\), z\], 1\)") as error:
        check_model_accepts(single, ArchitectureSpec(name="mine", num_classes=2), (3, 8, 8),
                            device=torch.device("cpu"))
    assert error.value.field == "architecture"


class _SqueezedLogits(nn.Module):
    """A 1×1 convolution as the head, then ``squeeze()``: (N, C) for N > 1, (C,) for one."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(F.adaptive_avg_pool2d(F.relu(self.stem(x)), 1))
        return logits.squeeze() if self.squeeze else logits


@pytest.mark.parametrize(("squeeze", "words"), [
    (True, r"returns \(4,\).*drops the batch dimension for a batch of one.*x.flatten\(1\)"),
    (False, r"returns \(1, 4, 1, 1\).*spatial dimensions of size 1.*x.flatten\(1\)"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_logits_in_another_shape_are_told_how_to_flatten(squeeze: bool, words: str,
                                                          device: str) -> None:
    """Before: only "needs logits of shape (1, 4)", where the squeezed model gives (N, 4) on
    any batch but one."""
    with pytest.raises(ConfigError, match=words) as error:
        check_model_accepts(_SqueezedLogits(squeeze).to(device),
                            ArchitectureSpec(name="mine", num_classes=4), (3, 8, 8),
                            device=torch.device(device))
    assert error.value.field == "architecture"
