"""Architectures beyond the registry: installed entry points (library, CLI, worker), the built-in
``mlp``, feature-vector npz data, the attack domain and named normalisation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rift import checkpoints
from rift.attacks import PGD
from rift.config import ArchitectureSpec, AttackSpec, DatasetSpec, RiftConfig
from rift.data import load_dataset
from rift.errors import ConfigError, UnknownArchitectureError
from rift.models import build_model, list_architectures
from tests.entry_point_dist import ARCHITECTURE, write_entry_point_dist
from tests.preloaded_launcher import Launcher, run_python_module
from tests.tiny_configs import random_images_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _subprocess_env(plugin: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(PROJECT_ROOT)])}


def test_installed_architecture_is_listed_and_built(plugin_path: Path) -> None:
    assert ARCHITECTURE in list_architectures()
    model = build_model(ArchitectureSpec(name=ARCHITECTURE, num_classes=3), in_channels=5,
                        image_size=1)
    assert model(torch.zeros(4, 5, 1, 1)).shape == (4, 3)


def test_unknown_architecture_names_the_entry_point_group() -> None:
    with pytest.raises(UnknownArchitectureError, match=r"rift\.architectures"):
        build_model(ArchitectureSpec(name="no_such_net"))


def test_cli_lists_an_installed_architecture(tmp_path: Path) -> None:
    plugin = write_entry_point_dist(tmp_path / "site")
    listed = subprocess.run([sys.executable, "-m", "rift", "architectures"], capture_output=True,
                            text=True, env=_subprocess_env(plugin), cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert ARCHITECTURE in listed.stdout.splitlines()
    assert "mlp" in listed.stdout.splitlines()


def test_worker_builds_a_job_on_an_installed_architecture(tmp_path: Path) -> None:
    """The worker's own path from a job row to a prepared run (``worker.stages.prepare``'s
    config and model building), in a fresh interpreter that only has the plugin on PYTHONPATH."""
    plugin = write_entry_point_dist(tmp_path / "site")
    np.savez(tmp_path / "f.npz", x=np.random.default_rng(0).normal(size=(40, 5)).astype("f4"),
             y=np.arange(40) % 3)
    script = f"""
import torch
from persistence.models import Job
from worker.stages import job_config
from rift.pipeline import prepare_run
from rift.models import build_model
spec = {{"architecture": {{"name": "{ARCHITECTURE}", "num_classes": 3}},
        "dataset": {{"name": "npz", "path": "ignored"}}, "device": "cpu"}}
config = job_config(Job(spec=spec), dataset_path=__import__("pathlib").Path(r"{tmp_path}/f.npz"),
                    device="cpu")
state = build_model(config.architecture, in_channels=5, image_size=1).state_dict()
run = prepare_run(config, state)
print(type(run.model).__name__, run.attack.bounds)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_subprocess_env(plugin), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TinyTabularNet", "None"]


def test_mlp_on_feature_vectors(tmp_path: Path) -> None:
    features = np.random.default_rng(1).normal(scale=50.0, size=(60, 7)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=features, y=np.arange(60) % 2)
    splits = load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "t.npz")), seed=0)
    assert splits.image_shape == (7, 1, 1) and splits.augment == "none"
    # Values outside [0, 1] are kept as they are.
    assert float(splits.train.images.abs().max()) > 1.0
    model = build_model(ArchitectureSpec(name="mlp", num_classes=2, hidden=[5, 4]),
                        in_channels=7, image_size=1)
    assert [name for name, _ in model.named_children()] == ["layers", "head"]
    assert [layer.out_features for layer in model.layers] == [5, 4]
    assert model(splits.train.images[:3]).shape == (3, 2)


def test_feature_npz_refuses_non_finite_values(tmp_path: Path) -> None:
    from rift.errors import DatasetError

    features = np.ones((10, 3), dtype=np.float32)
    features[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=features, y=np.zeros(10, dtype=np.int64))
    with pytest.raises(DatasetError, match="NaN"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "nan.npz")), seed=0)


def test_attack_domain_bounds() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    x = torch.tensor([[5.0, -5.0, 0.5]]).view(1, 3, 1, 1)
    y = torch.tensor([0])
    for domain, feature_vectors in (("none", False), ("auto", True)):
        attack = PGD.from_spec(AttackSpec(eps=1.0, step_size=0.5, domain=domain),
                               feature_vectors=feature_vectors)
        assert attack.bounds is None
        assert float((attack.perturb(model, x, y) - x).abs().max()) <= 1.0 + 1e-6
    unit = PGD.from_spec(AttackSpec(eps=1.0, step_size=0.5))
    adversarial = unit.perturb(model, x, y)
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    spec = AttackSpec.model_validate({"eps": 1.0, "step_size": 0.5,
                                      "domain": {"lower": [4.5, -6, 0], "upper": [5.5, -4, 1]}})
    bounded = PGD.from_spec(spec, feature_vectors=True).perturb(model, x, y).flatten()
    assert 4.5 <= float(bounded[0]) <= 5.5 and -6 <= float(bounded[1]) <= -4


def test_named_normalization_fills_mean_and_std() -> None:
    spec = ArchitectureSpec(name="resnet18", normalization="cifar10")
    assert spec.mean == [0.4914, 0.4822, 0.4465] and spec.std is not None
    # The dumped config validates again (resume and job records round-trip it).
    assert ArchitectureSpec.model_validate(spec.model_dump()) == spec
    with pytest.raises(ValueError, match="normalization"):
        ArchitectureSpec(name="resnet18", normalization="cifar10", mean=[0.5], std=[0.5])


def test_tabular_run_end_to_end(tmp_path: Path) -> None:
    from rift.demo_tabular import (
        make_tabular_checkpoint,
        tabular_demo_config,
        write_breast_cancer_npz,
    )
    from rift.pipeline import run_pipeline

    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    made = make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=4)
    config = RiftConfig.model_validate(tabular_demo_config(npz))
    config = config.model_copy(update={"mrc": config.mrc.model_copy(update={"steps": 3})})
    result = run_pipeline(config, tmp_path / "ck.safetensors", tmp_path / "out")
    assert [row["name"] for row in result["mrc"]["rows"]] == ["layers.0", "layers.1", "head"]
    assert result["before"]["clean_accuracy"] > 80.0
    assert result["after"]["robust_accuracy"] >= result["before"]["robust_accuracy"]
    assert made["clean_accuracy"] > 80.0
    assert (tmp_path / "out" / "tuned.safetensors").exists()


def test_tabular_run_through_the_cli(tmp_path: Path,
                                     optional_worker_launcher: Launcher | None) -> None:
    import json

    from rift.demo_tabular import (
        make_tabular_checkpoint,
        tabular_demo_config,
        write_breast_cancer_npz,
    )

    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=3)
    config = tabular_demo_config(npz)
    config["mrc"].update(steps=2, num_examples=64)
    config["finetune"].update(epochs=1, lr_milestones=[])
    config["interpolation"]["alpha_step"] = 0.5
    (tmp_path / "tabular.json").write_text(json.dumps(config))
    # python -m rift, forked from the worker launcher (torch imported once) when there is one.
    done = run_python_module(
        optional_worker_launcher, "rift",
        ["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--config",
         str(tmp_path / "tabular.json"), "--out", str(tmp_path / "out"), "--quiet"],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["config"]["architecture"]["name"] == "mlp"
    assert result["selected_module"] in done.stdout


def _awkward_config(folder: Path, architecture: str, tuned: str) -> RiftConfig:
    """A quick CPU run of ``architecture`` on random 8×8 images of 4 classes in ``folder``."""
    return random_images_config(folder, architecture, tuned=tuned, step_size=0.01, lr=0.5,
                                mrc={"steps": 2})


@pytest.mark.parametrize(("architecture", "tuned", "rows", "warned"), [
    # A tied pair (a, b), a module called twice, a weight also read functionally.
    ("tied_weights_net", "a", ["stem", "a", "twice", "mix", "head"], []),
    # Conv3d, ConvTranspose2d, Conv1d, a bias-free Linear, a buffer, an uncalled aux head.
    ("odd_layers_net", "sequence", ["volume", "up", "sequence", "head"], ["aux"]),
    # nn.MultiheadAttention (raw in_proj_weight, functional out_proj), a class token.
    ("attention_net", "attn", ["embed", "attn", "attn.out_proj", "head"],
     ["cls_token", "raw Parameters held by the model's own code"]),
    # Separate q/k/v projections (kdim, vdim != embed_dim): one row, tuned together.
    ("cross_attention_net", "attn", ["embed", "context", "attn", "attn.out_proj", "head"], []),
    # nn.Bilinear, an nn.Embedding table (named, not scored), a frozen stem (scored, tuned).
    ("bilinear_embedding_net", "stem", ["stem", "pair", "head"],
     ["parameters of Embedding layers: positions.weight"]),
    # GroupNorm, InstanceNorm and LayerNorm: per-example statistics, nothing to warn about.
    ("normalized_net", "conv2", ["conv1", "conv2", "head"], []),
    # Logits inside a structure: a dict's "logits", a namedtuple's field, a tuple's first.
    ("dict_output_net", "head", ["stem", "head"], ["aux"]),
    ("namedtuple_output_net", "stem", ["stem", "head"], ["aux"]),
    ("tuple_output_net", "head", ["stem", "head"], ["aux"]),
    ("object_output_net", "stem", ["stem", "head"], ["aux"]),  # a dataclass's .logits
    # Built in float16 by its builder: run in float32 (it failed its first forward).
    ("half_precision_net", "conv2", ["conv1", "conv2", "head"], []),
    # An LSTM between two Linear layers: its weights are named, not scored.
    ("recurrent_net", "embed", ["embed", "head"], ["parameters of LSTM layers: rnn.weight_ih_l0"]),
    # A position table made under reentrant checkpointing from a buffer: no gradient reaches
    # it, and the warning names the cut as a cause (it said "does not depend on", an aux head).
    ("checkpointed_positions_net", "stem", ["stem", "head"],
     ["not scored: positions", "torch.utils.checkpoint with use_reentrant=True"]),
    # Activation checkpointing with use_reentrant=False: differentiable, runs as usual.
    ("checkpoint_net", "block.0", ["stem", "block.0", "block.2", "head"], []),
])
def test_awkward_architectures_run_end_to_end_without_a_silent_wrong_result(
        plugin_path: Path, tmp_path: Path, architecture: str, tuned: str, rows: list[str],
        warned: list[str]) -> None:
    """Every weight tensor scored once, unscorable parts named in a warning, fine-tuning moves
    only the tuned module's own parameters (under every key that holds them), and α = 0 puts
    every parameter and buffer back bit for bit."""
    from rift.interpolation import interpolate_weights
    from rift.pipeline import PipelineCallbacks, prepare_run, run_pipeline

    config = _awkward_config(tmp_path, architecture, tuned)
    torch.manual_seed(0)
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    warnings: list[str] = []
    result = run_pipeline(config, state, tmp_path / "out", PipelineCallbacks(
        on_event=lambda kind, data: warnings.append(data["message"]) if kind == "warning"
        else None))
    assert [row["name"] for row in result["mrc"]["rows"]] == rows
    assert result["mrc"]["engine"] == "cached"
    for name in warned:
        assert any(name in message for message in warnings), (name, warnings)

    run = prepare_run(config, state)
    theta_at = run.original_state
    theta_ft = checkpoints.load_state_dict(tmp_path / "out" / "finetuned.safetensors")
    own = {id(p) for p in run.model.get_submodule(tuned).parameters(recurse=False)}
    own_keys = {key for key, p in run.model.named_parameters(remove_duplicate=False)
                if id(p) in own}
    changed = {key for key in theta_at if not torch.equal(theta_at[key], theta_ft[key])}
    assert changed and changed <= own_keys
    run.reset_weights(interpolate_weights(theta_at, theta_ft, 0.0))
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, theta_at[key]), key


def test_a_model_built_in_half_precision_runs_in_float32_with_its_fp16_checkpoint(
        plugin_path: Path, tmp_path: Path) -> None:
    """A builder returning ``model.half()`` failed the first forward with "Input type (float)
    and bias type (c10::Half)"; the model is float32 and its fp16 (or bf16) weights load exactly."""
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "half_precision_net", "conv2")
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=3, image_size=8)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for dtype in (torch.float16, torch.bfloat16):
        state = {key: value.to(dtype) for key, value in model.state_dict().items()}
        run = prepare_run(config, state)
        for key, value in run.model.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, state[key].float()), key


def test_batchnorm_without_running_statistics_is_refused_naming_the_layer(
        plugin_path: Path, tmp_path: Path) -> None:
    """In eval mode such a layer normalises with its batch's statistics: one example's logits
    depend on the others, and the cached MRC engine disagrees with the full one once batches are
    reshuffled. Before: accepted, every number silently batch-dependent."""
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "batch_statistics_net", "conv1")
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(ConfigError, match=r"without running statistics.*\['batch'\]") as error:
        prepare_run(config, state)
    assert error.value.field == "architecture"


def test_recurrent_layers_run_without_cudnn_only_where_it_has_no_backward(
        plugin_path: Path) -> None:
    """cuDNN's RNN kernels cannot be differentiated in eval mode ("cudnn RNN backward can only
    be called in training mode" on a GPU: every LSTM job failed in its first model check, PGD's
    and MRC's gradients being taken in eval mode). A built model's LSTM runs torch's own kernels
    there, and only there (no_grad evaluation and training keep cuDNN); the setting is put
    back after its forward, also when forward raises."""
    spec = ArchitectureSpec(name="recurrent_net", num_classes=4)
    model = build_model(spec, in_channels=3, image_size=8)
    seen: list[bool] = []
    model.get_submodule("rnn").register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.cudnn.enabled))
    images = torch.rand(2, 3, 8, 8)
    assert torch.backends.cudnn.enabled
    model.eval()
    model(images.requires_grad_(True)).sum().backward()
    with torch.no_grad():
        model(images)
    model.train()
    model(images)
    assert seen == [False, True, True] and torch.backends.cudnn.enabled
    model.eval()
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 3, 8, 5))  # 20 features per row: the LSTM refuses them
    assert torch.backends.cudnn.enabled


@pytest.mark.parametrize(("architecture", "message"), [
    ("scripted_net", r"returned a TorchScript module \(RecursiveScriptModule, from "
                     r"torch.jit.script or torch.jit.trace\).*return the nn.Module before"),
    ("network_and_transforms_net", r"returned 'tuple', not an nn.Module: return the network"),
])
def test_a_builder_returning_no_python_module_is_refused_saying_what_it_returned(
        plugin_path: Path, architecture: str, message: str) -> None:
    """Before: "'_CachedForward' object has no attribute '__getattr__'" (TorchScript) and "type
    object 'tuple' has no attribute 'forward'", naming neither the builder nor its result."""
    with pytest.raises(ConfigError, match=rf"installed architecture {architecture!r} {message}"
                       ) as error:
        build_model(ArchitectureSpec(name=architecture, num_classes=4), in_channels=3,
                    image_size=8)
    assert error.value.field == "architecture"


def test_reentrant_activation_checkpointing_is_refused_naming_it(
        plugin_path: Path, tmp_path: Path) -> None:
    """``torch.utils.checkpoint(..., use_reentrant=True)`` in forward (timm's
    ``set_grad_checkpointing()``): ``autograd.grad``, which PGD and MRC use, cannot go through
    it. Before: torch's RuntimeError ("incompatible with .grad()") as a traceback from the
    first model check."""
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "reentrant_checkpoint_net", "stem")
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(ConfigError, match=r"runs 1 part\(s\) of its forward under "
                       r"torch.utils.checkpoint with use_reentrant=True.*use_reentrant=False"
                       ) as error:
        prepare_run(config, state)
    assert error.value.field == "architecture"


def test_fine_tuning_a_module_the_train_mode_loss_has_no_gradient_for_is_refused(
        plugin_path: Path, tmp_path: Path) -> None:
    """Hugging Face style: reentrant checkpointing in train mode only. Every layer but the tuned
    one is frozen, so a checkpointed block's input needs no gradient and the block's layers get
    none. Before: torch's "element 0 of tensors does not require grad" after the MRC stage. A
    module before the block still trains (its gradient reaches the block's input)."""
    from rift.pipeline import prepare_run, run_finetune_stage

    config = _awkward_config(tmp_path, "train_mode_checkpoint_net", "block.0")
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    run = prepare_run(config, state)
    with pytest.raises(ConfigError, match=r"no gradient with respect to 'block.0' "
                       r"\(block.0.weight, block.0.bias\), so fine-tuning could not change it"
                       ) as error:
        run_finetune_stage(run, "block.0")
    assert error.value.field == "architecture"
    tuned = run_finetune_stage(run, "stem").state_dict
    assert not torch.equal(tuned["stem.weight"], state["stem.weight"])
    assert torch.equal(tuned["block.0.weight"], state["block.0.weight"])


def test_an_output_with_no_unambiguous_logits_is_refused_naming_what_it_holds(
        plugin_path: Path, tmp_path: Path) -> None:
    """(logits, auxiliary logits): two tensors of one shape, either could be the logits."""
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "two_logits_net", "head")
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(ConfigError, match=r"eval mode the model returns a tuple "
                       r"\(tensor \(1, 4\), tensor \(1, 4\)\)") as error:
        prepare_run(config, state)
    assert error.value.field == "architecture"


def test_a_train_mode_structure_holding_another_tensor_first_is_refused(
        plugin_path: Path, tmp_path: Path) -> None:
    """Eval mode returns the logits; train mode (features, logits), whose first element is 2-D
    and the only one of its shape. Fine-tuning checks the width against eval mode's instead of
    training on the features as if they were logits."""
    from rift.pipeline import run_pipeline

    config = _awkward_config(tmp_path, "features_first_in_training_net", "head")
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(ConfigError, match=r"in train mode \(fine-tuning\) the model returns a "
                       r"tensor of shape \(8, 6\) for a batch of 8.*\(8, 4\) logits") as error:
        run_pipeline(config, state, tmp_path / "out")
    assert error.value.field == "architecture"


def test_fine_tuning_a_tied_module_warns_naming_the_modules_it_moves_too(
        plugin_path: Path, tmp_path: Path) -> None:
    """``b`` holds ``a``'s weight: tuning it moves ``a`` as well. Before: said nowhere."""
    from rift.pipeline import PipelineCallbacks, prepare_run, run_finetune_stage

    config = _awkward_config(tmp_path, "tied_weights_net", "b")
    # Seeded: drawn from whatever state earlier tests in the process left, the ReLU stack can
    # come out dead (zero input gradient), which the model checks rightly refuse.
    torch.manual_seed(0)
    run = prepare_run(config, build_model(config.architecture, in_channels=3,
                                          image_size=8).state_dict())
    warned: list[str] = []
    run_finetune_stage(run, "b", PipelineCallbacks(
        on_event=lambda kind, data: warned.append(data["message"]) if kind == "warning"
        else None))
    assert any("'b' shares parameters" in m and "b.weight is also held by a" in m
               for m in warned), warned


def test_a_checkpoint_keeping_one_name_per_tied_tensor_loads(
        plugin_path: Path, tmp_path: Path) -> None:
    """safetensors' ``save_model`` (and Hugging Face's files) keep one name per shared tensor:
    ``b.weight`` is absent, its value is ``a.weight``'s. Before: refused as a missing key, at
    ``POST /v1/jobs`` and in the job."""
    from safetensors.torch import save_model

    from rift.pipeline import prepare_run
    from validator.fit import check_checkpoint_fits

    config = _awkward_config(tmp_path, "tied_weights_net", "a")
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=3, image_size=8)
    save_model(model, str(tmp_path / "tied.safetensors"))
    saved = checkpoints.load_state_dict(tmp_path / "tied.safetensors")
    assert "b.weight" not in saved and "a.weight" in saved
    check_checkpoint_fits(config, {k: tuple(v.shape) for k, v in saved.items()},
                          in_channels=3, image_size=8)
    run = prepare_run(config, tmp_path / "tied.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(run.original_state[key], value), key


def test_lazy_layers_get_their_shapes_before_the_checkpoint_is_checked(
        plugin_path: Path, tmp_path: Path) -> None:
    """Before: torch's "Can't access the shape of an uninitialized parameter" from the
    checkpoint check (a traceback from ``python -m rift``), and no MRC row on the meta model."""
    from rift.pipeline import prepare_run
    from validator.fit import check_checkpoint_fits

    config = _awkward_config(tmp_path, "lazy_net", "conv")
    config = config.model_copy(update={"mrc": config.mrc.model_copy(
        update={"modules": ["conv", "head"]})})
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    assert tuple(state["conv.weight"].shape) == (6, 3, 3, 3)
    check_checkpoint_fits(config, {k: tuple(v.shape) for k, v in state.items()},
                          in_channels=3, image_size=8)
    run = prepare_run(config, state)
    assert all(torch.equal(run.original_state[k], v) for k, v in state.items())


@pytest.mark.parametrize("architecture", ["compiled_net", "data_parallel_net",
                                          "compiled_block_net"])
def test_a_builder_returning_a_wrapped_network_runs_the_network_inside(
        plugin_path: Path, tmp_path: Path, architecture: str) -> None:
    """``torch.compile(net)`` or ``nn.DataParallel(net)`` from a builder. Before: every
    checkpoint refused (missing ``_orig_mod.*``/``module.*`` keys: checkpoints are read without
    those prefixes), and ``finetune.module`` failed with "DataParallel has no attribute". A
    block compiled inside the network (``compiled_block_net``: ``conv2._orig_mod.weight``) was
    "an OptimizedModule, which MRC does not score" as ``finetune.module``, and the plain
    network's checkpoint was refused."""
    from rift.pipeline import run_pipeline
    from tests.module_factories import PlainConvNet

    config = _awkward_config(tmp_path, architecture, "conv2")
    torch.manual_seed(0)
    result = run_pipeline(config, PlainConvNet().state_dict(), tmp_path / "out")
    assert [row["name"] for row in result["mrc"]["rows"]] == ["conv1", "conv2", "head"]
    assert set(checkpoints.load_state_dict(tmp_path / "out" / "tuned.safetensors")) == set(
        PlainConvNet().state_dict())


def test_a_checkpoint_of_a_network_with_a_compiled_block_loads_into_the_network(
        plugin_path: Path, tmp_path: Path) -> None:
    """Saved from training code that compiled a block (``self.conv2 =
    torch.compile(self.conv2)``): ``conv2._orig_mod.weight`` was an unexpected key beside a
    missing ``conv2.weight``, in the job and at ``POST /v1/jobs`` (whose inspection reads keys
    the same way, ``strip_wrapper_prefix``)."""
    from rift.checkpoint_format import strip_wrapper_prefix
    from rift.pipeline import prepare_run
    from tests.module_factories import compiled_block_net

    saved = compiled_block_net().state_dict()
    assert "conv2._orig_mod.weight" in saved
    torch.save(saved, tmp_path / "c.pt")
    run = prepare_run(_awkward_config(tmp_path, "plain_conv_net", "conv2"), tmp_path / "c.pt")
    held = run.model.state_dict()
    assert all(torch.equal(held[strip_wrapper_prefix(key)], value)
               for key, value in saved.items())
    # Leading wrappers as before; "module." inside a key is a submodule's own name.
    assert strip_wrapper_prefix("module._orig_mod.a._orig_mod.b.weight") == "a.b.weight"
    assert strip_wrapper_prefix("a.module.weight") == "a.module.weight"


def test_channels_last_runs_a_model_with_a_conv3d(plugin_path: Path, tmp_path: Path) -> None:
    """``channels_last: true`` on a model holding a 5-D weight (``Conv3d``): torch's
    ``model.to(memory_format=torch.channels_last)`` raised "required rank 4 tensor to use
    channels_last format" in ``prepare_run``, a RuntimeError traceback before any stage. Now
    4-D tensors take channels-last, 5-D ones channels-last-3d, and the logits are the
    model's."""
    from rift.data.batches import to_float_images
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "odd_layers_net", "sequence")
    torch.manual_seed(0)
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    plain = prepare_run(config, state)
    run = prepare_run(config.model_copy(update={"channels_last": True}), state)
    assert run.model.get_submodule("volume").weight.is_contiguous(
        memory_format=torch.channels_last_3d)
    assert run.model.get_submodule("up").weight.is_contiguous(memory_format=torch.channels_last)
    images = to_float_images(run.splits.test.images[:4])
    with torch.no_grad():
        torch.testing.assert_close(run.model(images), plain.model(images))


def test_a_model_keeping_non_tensor_extra_state_is_refused_naming_the_module(
        plugin_path: Path, tmp_path: Path) -> None:
    """A layer whose ``get_extra_state`` returns a dict (quantisation or FP8 metadata) puts a
    non-tensor in the state dict: its own ``state_dict()`` was refused as "'conv._extra_state'
    is a dict where a tensor is expected" beside the checkpoint containers RiFT knows, and a
    checkpoint of its tensors alone as "1 missing key(s)" pointing at architecture.name."""
    from rift.pipeline import prepare_run

    spec = ArchitectureSpec(name="extra_state_net", num_classes=4)
    with pytest.raises(ConfigError) as refused:
        build_model(spec, in_channels=3, image_size=8)
    assert refused.value.field == "architecture"
    assert ("conv._extra_state (a dict, from CalibratedConv.get_extra_state)"
            in refused.value.message)
    config = _awkward_config(tmp_path, "extra_state_net", "conv")
    with pytest.raises(ConfigError, match="not a tensor in its state dict"):
        prepare_run(config, {"conv.weight": torch.zeros(6, 3, 3, 3), "conv.bias": torch.zeros(6),
                             "head.weight": torch.zeros(4, 6), "head.bias": torch.zeros(4)})


def test_a_model_failing_only_in_channels_last_format_names_the_setting(
        plugin_path: Path, tmp_path: Path) -> None:
    """``out.view(out.size(0), -1)`` on a channels-last activation raises "view size is not
    compatible"; with ``channels_last: true`` that was "architecture ... cannot take the
    dataset's 3×8×8 (C×H×W) inputs", as if the data were wrong. The same model runs without
    the setting."""
    from rift.pipeline import prepare_run

    config = _awkward_config(tmp_path, "view_flatten_net", "conv")
    torch.manual_seed(0)
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    prepare_run(config, state)
    with pytest.raises(ConfigError) as refused:
        prepare_run(config.model_copy(update={"channels_last": True}), state)
    assert refused.value.field == "channels_last"
    assert "fails with channels_last: true" in refused.value.message
    assert "view size is not compatible" in refused.value.message


def test_the_built_in_mlp_takes_non_square_images(tmp_path: Path) -> None:
    """``mlp`` on 8×12 images was built for 3·8·8 features, so its own checkpoint for the data
    was refused: "cannot take the dataset's 3×8×12 (C×H×W) inputs: mat1 and mat2 shapes cannot
    be multiplied (1x288 and 192x64)"."""
    from rift.pipeline import prepare_run

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (40, 8, 12, 3), dtype=np.uint8),
             y=np.arange(40) % 4)
    config = RiftConfig.model_validate({
        "architecture": {"name": "mlp", "num_classes": 4},
        "dataset": {"name": "npz", "path": str(tmp_path / "d.npz")}, "device": "cpu"})
    state = build_model(config.architecture, in_channels=3, image_size=8,
                        image_width=12).state_dict()
    assert tuple(state["layers.0.weight"].shape[1:]) == (3 * 8 * 12,)
    run = prepare_run(config, state)
    assert run.splits.image_shape == (3, 8, 12)


def test_a_module_registered_under_two_names_is_named_by_its_first() -> None:
    """``self.again = self.block`` registers one module twice; ``named_modules`` lists it once,
    as ``block``. ``mrc.modules: ["again"]`` was "unknown module(s)" and ``finetune.module:
    "again"`` "is not a module of the model", although ``model.again`` is one."""
    from rift.config import MRCSpec
    from rift.finetune import trainable_module
    from rift.mrc import select_modules

    model = torch.nn.Module()
    model.block = torch.nn.Conv2d(3, 4, 3)
    model.again = model.block
    with pytest.raises(ConfigError) as mrc_refused:
        select_modules(model, MRCSpec(modules=["again"]))
    assert mrc_refused.value.message == (
        "'again' is the module 'block' registered under a second name: its row is 'block'")
    with pytest.raises(ConfigError) as finetune_refused:
        trainable_module(model, "again")
    assert "'again' is the module 'block' registered under a second name" in (
        finetune_refused.value.message)
    assert finetune_refused.value.field == "finetune.module"
