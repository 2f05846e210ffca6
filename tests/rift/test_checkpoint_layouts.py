"""Checkpoints saved by adversarial-training code bases with the network inside a wrapper
(``rift/checkpoint_layouts.py``): small replicas of each layout, written with ``torch.save`` or
safetensors as those projects write them, run through ``prepare_run`` (the library, the CLI and
the workers' path) and the job-creation fit check."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from rift.checkpoint_layouts import check_normalizers, fit_layout
from rift.checkpoints import check_compatible
from rift.config import NAMED_NORMALIZATIONS
from rift.errors import CheckpointMismatchError
from rift.models import build_model
from rift.pipeline import prepare_run
from tests.tiny_configs import random_images_config
from validator.fit import check_checkpoint_fits

# robustness's CIFAR statistics: its std is not CIFAR-10's usual one (NAMED_NORMALIZATIONS).
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2023, 0.1994, 0.2010]


def _config(folder: Path, tuned: str = "fc", **architecture: Any) -> Any:
    config = random_images_config(folder, "small_cnn", tuned=tuned, step_size=0.01, lr=0.01,
                                  mrc={})
    settings = config.model_dump()
    settings["architecture"] = {"name": "small_cnn", "num_classes": 4, **architecture}
    return type(config).model_validate(settings)


def _network(in_channels: int = 3) -> dict[str, Tensor]:
    """A small_cnn's weights with BatchNorm statistics unlike a fresh model's."""
    torch.manual_seed(3)
    model = build_model(_config_spec(), in_channels=in_channels, image_size=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.num_batches_tracked.fill_(7)
    return {key: value.clone() for key, value in model.state_dict().items()}


def _config_spec() -> Any:
    from rift.config import ArchitectureSpec

    return ArchitectureSpec(name="small_cnn", num_classes=4)


def _prefixed(prefix: str, state: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    return OrderedDict((prefix + key, value) for key, value in state.items())


def _robustness_checkpoint(network: dict[str, Tensor]) -> dict[str, Any]:
    """What robustness's train_model saves: the AttackerModel's state dict from DataParallel
    (normalizer, model, and the attacker's normalize and model: the same tensors again), the
    optimizer's state dict, the schedule and the epoch."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    state = OrderedDict([("module.normalizer.new_mean", mean), ("module.normalizer.new_std", std)])
    state.update(_prefixed("module.model.", network))
    state.update([("module.attacker.normalize.new_mean", mean),
                  ("module.attacker.normalize.new_std", std)])
    state.update(_prefixed("module.attacker.model.", network))
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}
    return {"model": state, "optimizer": optimizer, "schedule": None, "epoch": 150}


def _loaded(run: Any, network: dict[str, Tensor]) -> bool:
    held = run.model.state_dict()
    return set(held) == set(network) and all(torch.equal(held[key].cpu(), value)
                                             for key, value in network.items())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_robustness_library_checkpoint_runs_with_its_normalisation(
        tmp_path: Path, legacy: bool) -> None:
    network = _network()
    path = tmp_path / "checkpoint.pt.best"
    torch.save(_robustness_checkpoint(network), path,
               _use_new_zipfile_serialization=not legacy)
    run = prepare_run(_config(tmp_path, mean=MEAN, std=STD), path)
    # The network's weights, BatchNorm statistics and counters included, not the fresh model's.
    assert _loaded(run, network)
    assert any("'model.'" in warning and "'attacker.model.'" in warning
               and "normalizer.new_mean/normalizer.new_std" in warning
               for warning in run.model_warnings)


@pytest.mark.parametrize(("architecture", "configured"), [
    ({}, r"architecture\.mean/std are not set"),
    ({"normalization": "cifar10"}, r"the model applies mean \[0\.4914, 0\.4822, 0\.4465\], std "
                                   r"\[0\.2471, 0\.2435, 0\.2616\] \(architecture\.mean/std\)"),
])
def test_a_normaliser_unlike_the_configured_one_is_refused_naming_both(
        tmp_path: Path, architecture: dict[str, Any], configured: str) -> None:
    # Before: a mismatch listing 44 keys, with advice to check architecture.name.
    path = tmp_path / "checkpoint.pt"
    torch.save(_robustness_checkpoint(_network()), path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"normalizer\.new_mean \[0\.4914, 0\.4822, 0\.4465\], "
                       r"normalizer\.new_std \[0\.2023, 0\.1994, 0\.201\].*" + configured
                       + r".*set architecture\.mean to \[0\.4914, 0\.4822, 0\.4465\] and "
                       r"architecture\.std to \[0\.2023, 0\.1994, 0\.201\]"):
        prepare_run(_config(tmp_path, **architecture), path)


def test_robustbench_normalisers_are_compared_with_the_configured_one(tmp_path: Path) -> None:
    """A model keeping mu/sigma buffers beside its layers (safetensors), and an nn.Sequential of
    an ImageNormalizer and the network (0.mean, 0.std, 1.*), with CIFAR-10's statistics."""
    network = _network()
    mean, std = (torch.tensor(values).view(1, 3, 1, 1)
                 for values in NAMED_NORMALIZATIONS["cifar10"])
    buffers = tmp_path / "buffers.safetensors"
    save_file({**network, "mu": mean, "sigma": std}, str(buffers))
    sequential = tmp_path / "sequential.pt"
    torch.save(OrderedDict([("0.mean", mean), ("0.std", std), *_prefixed("1.", network).items()]),
               sequential)
    for path in (buffers, sequential):
        assert _loaded(prepare_run(_config(tmp_path, normalization="cifar10"), path), network)
        with pytest.raises(CheckpointMismatchError, match=r"architecture\.mean/std are not set\): set "
                           r"architecture\.normalization to 'cifar10', or set architecture\.mean"):
            prepare_run(_config(tmp_path), path)


def test_a_torchvision_models_default_normalisation_is_the_one_compared(tmp_path: Path) -> None:
    # A torchvision model applies ImageNet's statistics when architecture.mean/std are unset:
    # before, a robustness ImageNet checkpoint was refused as "not set", and one with an
    # identity normaliser accepted and fed ImageNet-normalised inputs.
    config = _config(tmp_path, name="torchvision:resnet18")
    torch.manual_seed(0)
    network = {key: value.clone() for key, value in
               build_model(config.architecture, in_channels=3, image_size=8).state_dict().items()}
    imagenet = [torch.tensor(values).view(3, 1, 1)
                for values in NAMED_NORMALIZATIONS["imagenet"]]
    identity = [torch.zeros(3, 1, 1), torch.ones(3, 1, 1)]
    for name, (mean, std) in (("imagenet", imagenet), ("identity", identity)):
        path = tmp_path / f"{name}.pt"
        torch.save({"model": {**_prefixed("module.model.", network),
                              "module.normalizer.new_mean": mean,
                              "module.normalizer.new_std": std}}, path)
        if name == "imagenet":
            assert _loaded(prepare_run(config, path), network)
        else:
            with pytest.raises(CheckpointMismatchError,
                               match=r"new_std \[1, 1, 1\]\).*the model applies mean "
                               r"\[0\.485, 0\.456, 0\.406\], std \[0\.229, 0\.224, 0\.225\] "
                               r"\(its default: architecture\.mean/std are not set\)"):
                prepare_run(config, path)


def test_a_lightning_checkpoint_runs(tmp_path: Path) -> None:
    network = _network()
    path = tmp_path / "epoch=9-step=100.ckpt"
    torch.save({"epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.1.0",
                "state_dict": _prefixed("model.", network),
                "loops": {"fit_loop": {"state_dict": {}}},
                "callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {
                    "best_model_score": torch.tensor(0.5), "best_model_path": "a.ckpt"}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
                "lr_schedulers": [{"last_epoch": 9, "base_lrs": [0.1]}],
                "hyper_parameters": {"lr": 0.1}}, path)
    run = prepare_run(_config(tmp_path), path)
    assert _loaded(run, network)
    assert any("prefix 'model.'" in warning for warning in run.model_warnings)


def test_only_an_unambiguous_wrapper_layout_is_read() -> None:
    network = _network()
    expected = build_model(_config_spec(), in_channels=3, image_size=8).state_dict()
    assert fit_layout(expected, network) is None  # fits as it is
    # A model and its EMA in one LightningModule: two different networks, neither is taken.
    ema = {key: value + 1 if value.is_floating_point() else value
           for key, value in network.items()}
    with pytest.raises(CheckpointMismatchError,
                       match=r"2 networks .* under the key prefixes 'model\.', 'model_ema\.'"):
        fit_layout(expected, {**_prefixed("model.", network), **_prefixed("model_ema.", ema)})
    # ... but two layers of a larger network that each fit a one-layer model are no such pair.
    linear = nn.Linear(4, 4).state_dict()
    larger = {**_prefixed("a.", linear), **_prefixed("b.", dict(nn.Linear(4, 4).state_dict())),
              "c.weight": torch.ones(2, 4)}
    assert fit_layout(linear, larger) is None
    # A key that is neither the network's, a copy of it, nor a normaliser: named (before, the
    # network's keys were listed as missing and unexpected besides it).
    with pytest.raises(CheckpointMismatchError,
                       match=r"keys under the prefix 'model\.' are exactly the architecture's, "
                       r"but the checkpoint also holds 1 key\(s\) .*: criterion\.weight;"):
        fit_layout(expected, {**_prefixed("model.", network), **_prefixed("ema.model.", network),
                              "model.mu": torch.zeros(3), "model.sigma": torch.ones(3),
                              "criterion.weight": torch.ones(4)}, channels=3)
    assert fit_layout(expected, {**network, "criterion.weight": torch.ones(4)}) is None
    # A normaliser with another channel count than the model's input.
    assert fit_layout(expected, {**network, "mu": torch.zeros(2), "sigma": torch.ones(2)},
                      channels=3) is None
    # An identity normaliser is what no architecture.mean/std means.
    layout = fit_layout(expected, {**network, "mu": torch.zeros(3), "sigma": torch.ones(3)},
                        channels=3)
    assert layout is not None and set(layout.state_dict) == set(network)
    check_normalizers(layout, None, None)
    with pytest.raises(CheckpointMismatchError, match=r"mu \[0, 0, 0\], sigma \[1, 1, 1\]"):
        check_normalizers(layout, [0.5], [0.25])


def test_a_bf16_normaliser_is_compared_at_its_own_precision() -> None:
    # bf16 keeps 0.4914 as 0.4922: before, its own statistics, configured, were refused.
    network = {key: value.bfloat16() if value.is_floating_point() else value
               for key, value in _network().items()}
    expected = build_model(_config_spec(), in_channels=3, image_size=8).state_dict()
    layout = fit_layout(expected, {**network, "mu": torch.tensor(MEAN).bfloat16(),
                                   "sigma": torch.tensor(STD).bfloat16()}, channels=3)
    assert layout is not None
    check_normalizers(layout, MEAN, STD)
    with pytest.raises(CheckpointMismatchError, match=r"std \[0\.2471"):
        check_normalizers(layout, *NAMED_NORMALIZATIONS["cifar10"])


def _inspected(folder: Path, checkpoint: dict[str, Any]) -> Any:
    """What the validator records of ``checkpoint`` saved with torch.save, with the value
    digests job creation asks for."""
    from validator.checkpoint import inspect_checkpoint_file

    torch.save(checkpoint, folder / "checkpoint.pt")
    return inspect_checkpoint_file(folder / "checkpoint.pt", "checkpoint.pt", digests=True)


def test_the_fit_check_at_job_creation_reads_the_layout(tmp_path: Path) -> None:
    inspection = _inspected(tmp_path, _robustness_checkpoint(_network()))
    shapes, values, digests = inspection.shapes, inspection.normalizers, inspection.digests
    assert set(values) == {"normalizer.new_mean", "normalizer.new_std",
                           "attacker.normalize.new_mean", "attacker.normalize.new_std"}
    from rift.config import RiftConfig

    def job(**architecture: Any) -> RiftConfig:
        return RiftConfig.model_validate({
            "architecture": {**_config_spec().model_dump(), **architecture},
            "dataset": {"name": "npz", "path": "d.npz"}})

    assert check_checkpoint_fits(job(mean=MEAN, std=STD), shapes, normalizers=values,
                                 digests=digests, in_channels=3,
                                 image_size=8).unknown_values == []
    # The normaliser's values, recorded on inspection, are compared as the job compares them.
    with pytest.raises(CheckpointMismatchError,
                       match=r"normalizer\.new_mean \[0\.4914.*the model applies none"):
        check_checkpoint_fits(job(), shapes, normalizers=values, digests=digests, in_channels=3,
                              image_size=8)
    # A torchvision model applies ImageNet's statistics by default, not an identity normaliser.
    resnet = job(name="torchvision:resnet18")
    with torch.device("meta"):
        built = build_model(resnet.architecture, in_channels=3, image_size=8)
    identity = {"normalizer.mean": [0.0] * 3, "normalizer.std": [1.0] * 3}
    wrapped = {**{f"model.{key}": tuple(value.shape) for key, value in built.state_dict().items()},
               "normalizer.mean": (3,), "normalizer.std": (3,)}
    with pytest.raises(CheckpointMismatchError, match=r"the model applies mean \[0\.485, "
                       r"0\.456, 0\.406\], std \[0\.229, 0\.224, 0\.225\] \(its default"):
        check_checkpoint_fits(resnet, wrapped, normalizers=identity, in_channels=3, image_size=8)
    # Without values (a row inspected before they were recorded) only the layout is checked.
    assert check_checkpoint_fits(job(), shapes, digests=digests, in_channels=3,
                                 image_size=8).unknown_values == []
    with pytest.raises(CheckpointMismatchError, match=r"1 key\(s\) .*: criterion\.weight"):
        check_checkpoint_fits(job(), {**shapes, "criterion.weight": (4,)}, digests=digests,
                              in_channels=3, image_size=8)
    # A grey ImageFolder's channels are not known: the other count is still tried.
    grey = {key.removeprefix("module."): tuple(value.shape) for key, value in
            _robustness_checkpoint(_network(in_channels=1))["model"].items()
            if not key.endswith(("new_mean", "new_std"))}
    assert check_checkpoint_fits(job(), grey, in_channels=None, image_size=8,
                                 final=True).unknown_values == []


def test_missing_batchnorm_statistics_are_named_as_such() -> None:
    network = _network()
    model = build_model(_config_spec(), in_channels=3, image_size=8)
    without = {key: value for key, value in network.items() if "running_" not in key}
    with pytest.raises(CheckpointMismatchError,
                       match=r"6 missing key\(s\): bn1\.running_mean.*BatchNorm running "
                       r"statistics, which the checkpoint lacks.*eval mode"):
        check_compatible(model, without)


def test_a_checkpoint_of_pruned_layers_is_told_to_remove_the_pruning() -> None:
    # torch.nn.utils.prune keeps weight_orig and weight_mask in the state dict instead of
    # weight: this was told as a missing and two unexpected keys, "check architecture.name".
    import torch.nn.utils.prune as prune

    model = build_model(_config_spec(), in_channels=3, image_size=8)
    pruned = build_model(_config_spec(), in_channels=3, image_size=8)
    prune.l1_unstructured(pruned.conv1, "weight", amount=0.3)
    prune.l1_unstructured(pruned.fc, "bias", amount=0.5)
    with pytest.raises(CheckpointMismatchError,
                       match=r"conv1\.weight, fc\.bias were saved from layers pruned with "
                       r"torch\.nn\.utils\.prune.*prune\.remove\(module, name\)"):
        check_compatible(model, pruned.state_dict())
    for module, name in ((pruned.conv1, "weight"), (pruned.fc, "bias")):
        prune.remove(module, name)
    check_compatible(model, pruned.state_dict())  # the fix it names loads


def test_a_bf16_normalisers_spacing_is_no_tolerance_for_values_below_one() -> None:
    # bf16's spacing near 1 (0.0078) was the tolerance at every value: a std of 0.2 configured
    # passed for a checkpoint normalised by (0.2023, 0.1994, 0.2010), 1 % apart, though bf16
    # holds those to 0.0005. Compared as bf16 holds the configured values, they differ.
    network = {key: value.bfloat16() if value.is_floating_point() else value
               for key, value in _network().items()}
    expected = build_model(_config_spec(), in_channels=3, image_size=8).state_dict()
    layout = fit_layout(expected, {**network, "mu": torch.tensor(MEAN).bfloat16(),
                                   "sigma": torch.tensor(STD).bfloat16()}, channels=3)
    assert layout is not None
    check_normalizers(layout, MEAN, STD)  # its own statistics: equal once rounded to bf16
    with pytest.raises(CheckpointMismatchError, match=r"sigma \[0\.202"):
        check_normalizers(layout, MEAN, [0.2, 0.2, 0.2])


def test_the_fit_check_tells_two_networks_from_a_copy_by_their_digests(tmp_path: Path) -> None:
    """A LightningModule's model and its EMA (two different networks) passed the fit check at
    job creation, whose tensors carry no values, as a network and its copy, and the job then
    refused them: the check now compares the digests of the stored values, as the job compares
    the values."""
    from rift.config import RiftConfig

    config = RiftConfig.model_validate({"architecture": _config_spec().model_dump(),
                                        "dataset": {"name": "npz", "path": "d.npz"}})
    network = _network()
    ema = {key: value + 1 if value.is_floating_point() else value
           for key, value in network.items()}
    two = _inspected(tmp_path, {"state_dict": {**_prefixed("model.", network),
                                               **_prefixed("ema_model.", ema)}})
    # Without digests the answer would take the values as equal: it names the keys it needs.
    needed = check_checkpoint_fits(config, two.shapes, in_channels=3, image_size=8).unknown_values
    assert set(needed) == set(two.shapes)
    with pytest.raises(CheckpointMismatchError) as refused:
        check_checkpoint_fits(config, two.shapes, digests=two.digests, in_channels=3,
                              image_size=8)
    assert "2 networks of this architecture with different values, under the key prefixes " \
           "'model.', 'ema_model.'" in refused.value.message
    # The job's own refusal, word for word.
    with pytest.raises(CheckpointMismatchError) as job:
        prepare_run(_config(tmp_path), tmp_path / "checkpoint.pt")
    assert job.value.message == refused.value.message

    # Equal copies (bf16 ones too: torch.equal compares values, so do the digests) pass.
    copy = {key: value.to(torch.bfloat16) if value.is_floating_point() else value
            for key, value in network.items()}
    network = {key: value.to(torch.bfloat16).float() if value.is_floating_point() else value
               for key, value in network.items()}
    same = _inspected(tmp_path, {"state_dict": {**_prefixed("model.", network),
                                                **_prefixed("ema_model.", copy)}})
    assert check_checkpoint_fits(config, same.shapes, digests=same.digests, in_channels=3,
                                 image_size=8).unknown_values == []
    assert _loaded(prepare_run(_config(tmp_path), tmp_path / "checkpoint.pt"), network)


def test_torchs_averaged_model_checkpoint_runs_without_its_update_counter(
        tmp_path: Path) -> None:
    # torch.optim.swa_utils.AveragedModel (PyTorch's own EMA and SWA) saves the network under
    # "module." beside its counter "n_averaged": refused as "1 unexpected key(s): n_averaged"
    # telling to check architecture.name, in the job and at job creation.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from rift.config import RiftConfig

    model = build_model(_config_spec(), in_channels=3, image_size=8)
    model.load_state_dict(_network())
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    ema.update_parameters(model)
    saved = ema.state_dict()
    assert "n_averaged" in saved
    path = tmp_path / "ema.pt"
    torch.save(saved, path)
    run = prepare_run(_config(tmp_path), path)
    assert _loaded(run, _network())
    assert any("AveragedModel (n_averaged) was left out" in warning
               for warning in run.model_warnings)
    # Under a Lightning module's attribute, the counter beside its own "module.".
    lightning = {f"ema.{key}": value for key, value in saved.items()}
    layout = fit_layout(run.model.state_dict(), lightning, channels=3)
    assert layout is not None and layout.prefix == "ema.module."
    assert layout.counters == ["ema.n_averaged"]
    # Only the counter of the wrapper holding the network: elsewhere it is an unknown key.
    with pytest.raises(CheckpointMismatchError, match=r"other\.n_averaged"):
        check_compatible(run.model, {**_network(), "other.n_averaged": torch.tensor(1)})
    assert fit_layout(run.model.state_dict(), {**_network(), "other.n_averaged":
                                               torch.tensor(1)}, channels=3) is None
    config = RiftConfig.model_validate({"architecture": _config_spec().model_dump(),
                                        "dataset": {"name": "npz", "path": "d.npz"}})
    shapes = {key.removeprefix("module."): tuple(value.shape) for key, value in saved.items()}
    assert check_checkpoint_fits(config, shapes, dtypes={"n_averaged": "int64"}, in_channels=3,
                                 image_size=8).unknown_values == []
