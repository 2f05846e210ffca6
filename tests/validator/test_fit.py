"""The fit check (``validator/fit.py``): the model is built on the meta device for the dataset's
geometry; a feature dataset's width is the channel count of 1×1 images; a model that cannot take
the data's shape is refused, one whose ops cannot run on meta tensors is left to the job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import rift.models
from rift.config import RiftConfig
from rift.errors import CheckpointMismatchError, ConfigError
from validator import fit
from validator.fit import check_checkpoint_fits


def _config(name: str = "small_cnn") -> RiftConfig:
    return RiftConfig.model_validate({"architecture": {"name": name, "num_classes": 10},
                                      "dataset": {"name": "digits"}})


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_image_geometry_decides_the_first_layer() -> None:
    with torch.device("meta"):
        one_channel = rift.models.build_model(_config().architecture, in_channels=1,
                                              image_size=8)
    check_checkpoint_fits(_config(), _shapes(one_channel), in_channels=1, image_size=8)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight"):
        check_checkpoint_fits(_config(), _shapes(one_channel), in_channels=3, image_size=8)


def test_a_feature_dataset_is_built_as_one_pixel_images_of_its_width() -> None:
    # (N, F) arrays load as (N, F, 1, 1), so an mlp without 'input_features' takes F inputs.
    config = RiftConfig.model_validate({
        "architecture": {"name": "mlp", "num_classes": 2, "hidden": [16]},
        "dataset": {"name": "npz", "path": "features.npz"}})
    with torch.device("meta"):
        thirty = rift.models.build_model(config.architecture, in_channels=30, image_size=1)
    assert _shapes(thirty)["layers.0.weight"] == (16, 30)
    check_checkpoint_fits(config, _shapes(thirty), in_channels=None, image_size=None,
                          num_features=30)
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.weight"):
        check_checkpoint_fits(config, _shapes(thirty), in_channels=None, image_size=None,
                              num_features=29)


def test_feature_vectors_given_to_an_image_checkpoint_name_the_cause_in_both(
        tmp_path: Path) -> None:
    # Before: the library said the data's "images have 5 channel(s)" and to repeat an npz x
    # along its channel axis; the job creation's check named no cause.
    import numpy as np

    from rift.pipeline import prepare_run

    says = (r"conv1\.weight \(checkpoint \[16, 1, 3, 3\] vs model \[16, 5, 3, 3\]\); the dataset "
            r"holds feature vectors of 5 values \(an npz x of shape \(N, F\)\), which an image "
            r"model takes as 5-channel 1×1 images: use a model for feature vectors "
            r"\({field} 'mlp', or an installed one\)")
    config = RiftConfig.model_validate({
        "architecture": {"name": "small_cnn", "num_classes": 4},
        "dataset": {"name": "npz", "path": str(tmp_path / "f.npz")}, "device": "cpu"})
    torch.manual_seed(0)
    image_model = rift.models.build_model(config.architecture, in_channels=1, image_size=8)
    with pytest.raises(CheckpointMismatchError, match=says.format(field="config.architecture.name")):
        check_checkpoint_fits(config, _shapes(image_model), in_channels=None, image_size=None,
                              num_features=5)
    np.savez(tmp_path / "f.npz", x=np.random.default_rng(0).random((20, 5)), y=np.arange(20) % 4)
    with pytest.raises(CheckpointMismatchError, match=says.format(field="architecture.name")):
        prepare_run(config, image_model.state_dict())


def _mlp_config(**architecture: int) -> RiftConfig:
    return RiftConfig.model_validate({
        "architecture": {"name": "mlp", "num_classes": 10, "hidden": [8], **architecture},
        "dataset": {"name": "digits"}})


def test_an_mlp_for_non_square_images_takes_their_width() -> None:
    """The built-in mlp's input features are C·H·W of the data: it was built for C·H·H, so
    8×12 images were refused at job creation and in the job ("mat1 and mat2 shapes cannot be
    multiplied (1x96 and 64x8)") with the mlp's own checkpoint for them."""
    config = _mlp_config()
    with torch.device("meta"):
        mlp = rift.models.build_model(config.architecture, in_channels=1, image_size=8,
                                      image_width=12)
    assert _shapes(mlp)["layers.0.weight"] == (8, 96)
    check_checkpoint_fits(config, _shapes(mlp), in_channels=1, image_size=8, image_width=12)


def test_a_model_that_cannot_take_the_data_is_refused_naming_the_shape() -> None:
    # An mlp for 64 input features has the same weights whatever the width it will be fed, so
    # the shapes match; only running an input of the data's 8×12 shape shows it cannot work.
    config = _mlp_config(input_features=64)
    with torch.device("meta"):
        mlp = rift.models.build_model(config.architecture, in_channels=1, image_size=8)
    check_checkpoint_fits(config, _shapes(mlp), in_channels=1, image_size=8)
    check_checkpoint_fits(config, _shapes(mlp), in_channels=1, image_size=8, image_width=8)
    with pytest.raises(ConfigError, match=r"'mlp' cannot take the dataset's 1×8×12") as caught:
        check_checkpoint_fits(config, _shapes(mlp), in_channels=1, image_size=8, image_width=12)
    assert caught.value.field == "architecture"


class _ReadsValues(nn.Module):
    """Reads a value in forward (as data-dependent code does): impossible on meta tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if x.abs().max().item() > 1 else 1.0
        return self.fc(x.flatten(1)) * scale


def test_an_op_meta_tensors_cannot_run_is_left_to_the_job() -> None:
    with torch.device("meta"):
        model = _ReadsValues()
    config = _mlp_config()
    # No error: the job's real-tensor check decides; and no FLOP count (the pass stopped).
    assert fit._probe(model, config, (4, 1, 1)) is None
    with torch.device("meta"):
        wrong = nn.Sequential(nn.Flatten(), nn.Linear(5, 10))
    with pytest.raises(ConfigError, match="cannot take"):
        fit._probe(wrong, config, (4, 1, 1))


def test_unknown_channels_accept_a_one_or_three_channel_checkpoint() -> None:
    # A tree whose channels are not known before the job (a grey first image in an archive
    # stored before its geometry was) is read with 3 or 1: either checkpoint passes, others not.
    for channels in (1, 3):
        with torch.device("meta"):
            model = rift.models.build_model(_config().architecture, in_channels=channels,
                                            image_size=8)
        check_checkpoint_fits(_config(), _shapes(model), in_channels=None, image_size=8)
    with torch.device("meta"):
        two = rift.models.build_model(_config().architecture, in_channels=2, image_size=8)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight.*\[16, 3, 3, 3\]"):
        check_checkpoint_fits(_config(), _shapes(two), in_channels=None, image_size=8)


def test_weights_of_another_kind_than_the_models_are_refused() -> None:
    # Before: only shapes were compared, so integer weights passed job creation and the job
    # failed when it loaded them.
    with torch.device("meta"):
        model = rift.models.build_model(_config().architecture, in_channels=1, image_size=8)
    dtypes = {key: str(value.dtype).removeprefix("torch.")
              for key, value in model.state_dict().items()}
    check_checkpoint_fits(_config(), _shapes(model), dtypes=dtypes, in_channels=1, image_size=8)
    lower = {key: "bfloat16" if name == "float32" else name for key, name in dtypes.items()}
    check_checkpoint_fits(_config(), _shapes(model), dtypes=lower, in_channels=1, image_size=8)
    with pytest.raises(CheckpointMismatchError,
                       match=r"conv1\.weight \(integer torch\.int8; the model's is torch\.float32"):
        check_checkpoint_fits(_config(), _shapes(model), dtypes={**dtypes, "conv1.weight": "int8"},
                              in_channels=1, image_size=8)
    # Unknown names (a dtype torch lacks, an old validator's answer without dtypes) go unchecked.
    check_checkpoint_fits(_config(), _shapes(model), dtypes={"conv1.weight": "float4_packed"},
                          in_channels=1, image_size=8)


@pytest.mark.parametrize(("architecture", "words"), [
    ("batch_statistics_net", r"BatchNorm layer\(s\) without running statistics.*\['batch'\]"),
    ("two_logits_net", r"returns a tuple \(tensor \(1, 4\), tensor \(1, 4\)\)"),
    # Token ids for an embedding (before: accepted, a dtype error when the job ran); an
    # ImageNet-size head for 8×8 images (before: the framework's shape error alone).
    ("token_classifier_net", r"looks its input up in an embedding table \('tokens'\)"),
    ("imagenet_size_net", r"it runs on 224×224 inputs.*dataset's images are 8×8"),
])
def test_an_installed_architecture_the_job_would_refuse_is_refused_at_creation(
        plugin_path: Path, architecture: str, words: str) -> None:
    """The same refusals as the job's own check (``check_model_accepts``), on meta tensors; the
    batch statistics even while the data's geometry is unknown (no forward pass needed)."""
    config = RiftConfig.model_validate({"architecture": {"name": architecture, "num_classes": 4},
                                        "dataset": {"name": "digits"}})
    with torch.device("meta"):
        model = rift.models.build_model(config.architecture, in_channels=3, image_size=8)
    with pytest.raises(ConfigError, match=words) as caught:
        check_checkpoint_fits(config, _shapes(model), in_channels=3, image_size=8)
    assert caught.value.field == "architecture"
    if architecture == "batch_statistics_net":
        with pytest.raises(ConfigError, match=words):
            check_checkpoint_fits(config, _shapes(model), in_channels=None, image_size=None)


def test_an_installed_architecture_returning_a_dict_with_logits_is_accepted(
        plugin_path: Path) -> None:
    config = RiftConfig.model_validate({"architecture": {"name": "dict_output_net",
                                                         "num_classes": 4},
                                        "dataset": {"name": "digits"}})
    with torch.device("meta"):
        model = rift.models.build_model(config.architecture, in_channels=3, image_size=8)
    check_checkpoint_fits(config, _shapes(model), in_channels=3, image_size=8)


def test_an_installed_builder_dropping_the_normalisation_given_is_refused_at_creation(
        plugin_path: Path) -> None:
    """A builder that reuses a built-in network and drops ``mean``/``std``: the job refuses it
    (``rift.models.normalization_applied``), and the meta model's unset input buffers already
    say so here (before: accepted, and the job ran unnormalised with no word)."""
    raw = {"architecture": {"name": "drops_normalization_net", "num_classes": 4},
           "dataset": {"name": "digits"}}
    with torch.device("meta"):
        model = rift.models.build_model(RiftConfig.model_validate(raw).architecture,
                                        in_channels=3, image_size=8)
    check_checkpoint_fits(RiftConfig.model_validate(raw), _shapes(model), in_channels=3,
                          image_size=8)
    raw["architecture"]["normalization"] = "cifar10"
    with pytest.raises(ConfigError, match=r"'drops_normalization_net' ignores the input "
                       r"normalisation it is given .*input buffers .* are unset") as caught:
        check_checkpoint_fits(RiftConfig.model_validate(raw), _shapes(model), in_channels=3,
                              image_size=8)
    assert caught.value.field == "architecture.normalization"


def test_a_googlenet_trained_with_its_auxiliary_heads_fits() -> None:
    """torchvision's GoogLeNet trained from scratch keeps aux1/aux2 in its state dict; the
    model is built with them (before: 20 unexpected keys, a 422 at creation)."""
    import torchvision

    config = RiftConfig.model_validate({"architecture": {"name": "torchvision:googlenet"},
                                        "dataset": {"name": "digits"}})
    with torch.device("meta"):
        trained = torchvision.models.googlenet(num_classes=10, aux_logits=True,
                                               init_weights=False)
    check_checkpoint_fits(config, _shapes(trained), in_channels=3, image_size=32)


def test_a_checkpoint_of_another_built_in_architecture_is_named() -> None:
    with torch.device("meta"):
        small = rift.models.build_model(_config().architecture, in_channels=1, image_size=8)
    with pytest.raises(CheckpointMismatchError) as caught:
        check_checkpoint_fits(_config("resnet18"), _shapes(small), in_channels=1, image_size=8)
    # Before: 97 missing keys, 14 unexpected, 5 shape mismatches, and no word of small_cnn.
    assert caught.value.message.startswith(
        "these weights fit the architecture 'small_cnn', not 'resnet18': set architecture.name "
        "to 'small_cnn'. the checkpoint does not fit")
    assert caught.value.missing and caught.value.unexpected  # the lists are kept


def _real_forward_flops(config: RiftConfig, shape: tuple[int, int, int]) -> int:
    """torch's count of one real example through the real model (as the library's
    ``rift.sequential_attack.example_flops`` counts it)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = rift.models.build_model(config.architecture, in_channels=shape[0],
                                    image_size=shape[1]).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, *shape))
    return int(counter.get_total_flops())


def test_the_fit_check_counts_the_models_forward_flops_on_the_datas_geometry() -> None:
    """The unit of the compute estimate (``persistence.cost``): a ResNet-18 example costs
    what a real forward pass of it costs, about 198 times one of small_cnn at 3×32×32, where
    the example-pass count alone made them equal."""
    counts = {}
    for name in ("small_cnn", "resnet18"):
        config = _config(name)
        with torch.device("meta"):
            model = rift.models.build_model(config.architecture, in_channels=3, image_size=32)
        answer = check_checkpoint_fits(config, _shapes(model), in_channels=3, image_size=32)
        assert answer.unknown_values == []
        assert answer.example_flops == _real_forward_flops(config, (3, 32, 32))
        counts[name] = answer.example_flops
    assert counts["resnet18"] / counts["small_cnn"] == pytest.approx(198.2, abs=0.1)
    # The count follows the input's size, as a real pass's does.
    config = _config()
    with torch.device("meta"):
        model = rift.models.build_model(config.architecture, in_channels=3, image_size=16)
    smaller = check_checkpoint_fits(config, _shapes(model), in_channels=3, image_size=16)
    assert smaller.example_flops == _real_forward_flops(config, (3, 16, 16))
    # Without the geometry no input goes through the model: nothing is counted.
    assert check_checkpoint_fits(config, _shapes(model), in_channels=None,
                                 image_size=None).example_flops is None
