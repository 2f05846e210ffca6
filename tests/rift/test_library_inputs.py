"""The library as a notebook uses it: the forms a user naturally gives ``prepare_run`` and
``run_pipeline`` (a dict config, ``torch.load``'s object, a model), a folder that cannot be
written, and the caller's state (global random generator, weights) left as it was."""

from __future__ import annotations

import copy
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from rift import checkpoints
from rift.config import RiftConfig, as_config
from rift.errors import CheckpointError, ConfigError
from rift.models import build_model
from rift.pipeline import (
    PipelineCallbacks,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
    run_pipeline,
)


@pytest.fixture
def settings(digits_job_config: dict[str, Any]) -> dict[str, Any]:
    """The demo job's settings as a plain dict, no preflight (only prepare_run runs here)."""
    return {**digits_job_config, "preflight": {"examples": 0}}


def test_prepare_run_leaves_the_global_random_generator_alone(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    # It reseeded the global generator with config.seed: what a notebook drew after the call
    # was the same every time, whatever it had seeded.
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    prepare_run(RiftConfig.model_validate(settings), digits_checkpoint_path)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_dict_config_is_validated_like_model_validate(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    # It failed inside with "'dict' object has no attribute 'seed'".
    run = prepare_run(copy.deepcopy(settings), digits_checkpoint_path)
    assert run.config == RiftConfig.model_validate(settings)
    # A bad key was pydantic's raw ValidationError, without the CLI's "did you mean".
    with pytest.raises(ConfigError, match=r"finetune\.epoch: unknown setting 'epoch'; did you "
                       r"mean 'epochs'\?") as raised:
        as_config({**settings, "finetune": {"epoch": 3}})
    assert raised.value.field == "finetune.epoch"
    assert isinstance(raised.value.__cause__, ValidationError)  # pydantic's errors kept
    # A mistyped choice too, and through prepare_run (which takes the dict) as well.
    with pytest.raises(ConfigError, match=r"attack\.norm: .*did you mean 'l2'\?") as raised:
        prepare_run({**settings, "attack": {**settings.get("attack", {}), "norm": "L_2"}},
                    digits_checkpoint_path)
    assert raised.value.field == "attack.norm"


def test_a_config_file_path_is_told_to_be_read_first(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="read the file first"):
        as_config(tmp_path / "config.json")  # type: ignore[arg-type]


def test_torch_load_containers_and_entries_work_in_memory(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    """What ``torch.load`` gives for a training script's file is unwrapped as the file is, and
    ``checkpoint_entry`` picks among entries (it was ignored for a mapping: a mismatch)."""
    weights = checkpoints.load_state_dict(digits_checkpoint_path)
    ema = {key: value + 1 if value.is_floating_point() else value
           for key, value in weights.items()}
    loaded = {"epoch": 3, "state_dict": weights, "state_dict_ema": ema}
    run = prepare_run({**settings, "checkpoint_entry": "state_dict_ema"}, loaded)
    assert torch.equal(run.original_state["fc.weight"], ema["fc.weight"])
    plain = prepare_run(settings, {"epoch": 3, "model_state_dict": weights})
    assert torch.equal(plain.original_state["fc.weight"], weights["fc.weight"])


def test_a_model_or_numpy_arrays_as_checkpoint_are_named(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    # Before: "'SmallCNN' object is not iterable", "'numpy.ndarray' object has no attribute
    # 'is_complex'", from inside the run.
    config = RiftConfig.model_validate(settings)
    weights = checkpoints.load_state_dict(digits_checkpoint_path)
    model = build_model(config.architecture, in_channels=1, image_size=8)
    with pytest.raises(CheckpointError, match=r"a model \(SmallCNN\).*model\.state_dict\(\)"):
        prepare_run(config, model)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"'fc\.weight' is a .*ndarray"):
        prepare_run(config, {**weights, "fc.weight": weights["fc.weight"].numpy()})


def test_an_output_folder_that_cannot_be_written_is_refused_first(
        settings: dict[str, Any], tmp_path: Path) -> None:
    """Named as output_dir before the checkpoint or the data is read (here the checkpoint does
    not exist: the folder is still what is reported). It was a FileExistsError after them."""
    (tmp_path / "a file").write_text("x")
    for folder in (tmp_path / "a file", tmp_path / "a file" / "run é"):
        with pytest.raises(ConfigError, match=r"cannot write there|a file, not a folder") as info:
            run_pipeline(settings, tmp_path / "missing.safetensors", folder)
        assert info.value.field == "output_dir"
        assert str(folder) in info.value.message


def test_an_unknown_module_to_fine_tune_is_a_config_error(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    # It was get_submodule's AttributeError "SmallCNN has no attribute `nope`".
    run = prepare_run(settings, digits_checkpoint_path)
    with pytest.raises(ConfigError, match="'nope' is not a module") as info:
        run_finetune_stage(run, "nope")
    assert info.value.field == "finetune.module"


class _Stop(Exception):
    pass


def _stop_at_first(kind: str) -> PipelineCallbacks:
    def on_event(event: str, _: dict[str, Any]) -> None:
        if event == kind:
            raise _Stop(event)
    return PipelineCallbacks(on_event=on_event)


def test_a_stage_cut_short_leaves_the_model_at_theta_at(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    """A callback that raises (or a cancellation) inside fine-tuning left the half-trained
    weights and every parameter's .grad in ``run.model``, "the model holding θ_AT"."""
    run = prepare_run({**settings, "finetune": {**settings["finetune"], "epochs": 2}},
                      digits_checkpoint_path)
    with pytest.raises(_Stop):
        run_finetune_stage(run, "conv2", _stop_at_first("epoch"))
    for key, value in run.model.state_dict().items():
        assert torch.equal(value.cpu(), run.original_state[key]), key
    assert not run.model.training
    assert all(parameter.grad is None for parameter in run.model.parameters())


def test_stages_chain_on_each_others_results(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    """"Each taking the previous stage's output": the MRC result names the module to tune and
    the fine-tuning result holds θ_FT (they failed with "unhashable type: 'MRCStageResult'" and
    "argument of type 'FinetuneStageResult' is not iterable")."""
    quick = {**settings, "mrc": {**settings["mrc"], "steps": 1, "num_examples": 32},
             "finetune": {**settings["finetune"], "epochs": 1, "lr_milestones": []},
             "interpolation": {"alpha_step": 0.5}, "evaluation": {"max_examples": 32}}
    run = prepare_run(quick, digits_checkpoint_path)
    mrc = run_mrc_stage(run)
    finetune = run_finetune_stage(run, mrc)
    assert finetune.module == mrc.selected_module
    by_result = run_interpolation_stage(run, finetune)
    by_state = run_interpolation_stage(run, finetune.state_dict)
    assert (by_result.chosen_alpha, by_result.points) == (by_state.chosen_alpha, by_state.points)


def test_arguments_of_the_wrong_kind_are_named(
        settings: dict[str, Any], digits_checkpoint_path: Path) -> None:
    run = prepare_run(settings, digits_checkpoint_path)
    with pytest.raises(TypeError, match="callbacks must be a PipelineCallbacks"):
        run_finetune_stage(run, "fc", {"on_event": print})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="modules must be a list of module names"):
        run_mrc_stage(run, modules="conv1")  # type: ignore[arg-type]  # was ['c', 'o', ...]
    with pytest.raises(TypeError, match="module must be a module name"):
        run_finetune_stage(run, ["fc"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="finetuned_state must be"):
        run_interpolation_stage(run, None)  # type: ignore[arg-type]


def test_home_in_paths_is_expanded(settings: dict[str, Any], digits_checkpoint_path: Path,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # output_dir="~/runs" made a folder named "~" in the working directory.
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    shutil.copy(digits_checkpoint_path, home / "at.safetensors")
    run = prepare_run(settings, "~/at.safetensors")
    assert run.original_state.keys() == checkpoints.load_state_dict(digits_checkpoint_path).keys()
    (home / "taken").write_text("x")
    with pytest.raises(ConfigError, match="a file, not a folder") as info:
        run_pipeline(settings, "~/at.safetensors", "~/taken")
    assert str(home / "taken") in info.value.message
    assert not (work / "~").exists()


def test_a_callback_that_is_not_a_function_is_named_at_once() -> None:
    # A threading.Event as should_cancel failed at the first poll, inside the run.
    with pytest.raises(TypeError, match=r"should_cancel must be a function .*event\.is_set"):
        PipelineCallbacks(should_cancel=threading.Event())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_event must be a function"):
        PipelineCallbacks(on_event=[])  # type: ignore[arg-type]
    # The epoch state's store is an object, not a function: a dict of bytes would fail at the
    # end of the first epoch.
    with pytest.raises(TypeError, match=r"epoch_state must have load\(\) and save\(data\)"):
        PipelineCallbacks(epoch_state={})  # type: ignore[arg-type]


def test_the_checkpoint_is_read_before_the_data(settings: dict[str, Any], tmp_path: Path
                                               ) -> None:
    # A wrong checkpoint path was told only after the whole dataset had loaded.
    config = {**settings, "dataset": {"name": "npz", "path": str(tmp_path / "absent.npz")}}
    with pytest.raises(CheckpointError, match="not found"):
        prepare_run(config, tmp_path / "absent.safetensors")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_the_lower_level_functions_take_a_model_of_another_dtype(dtype: torch.dtype) -> None:
    # A user's .double() or .half() model failed with torch's "Input type (float) and bias type
    # (double) should be the same": the data are float32, and only the pipeline builds float32
    # models. Now the inputs are cast to the model's dtype where it is called.
    from rift.attacks import PGD
    from rift.config import MRCSpec
    from rift.data import ImageTensors
    from rift.evaluation import evaluate_accuracy
    from rift.mrc import make_adversarial_set, module_robust_criticality

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    model = copy.deepcopy(reference).to(dtype)
    images, labels = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    attack, cpu = PGD(eps=0.03, step_size=0.01, steps=3), torch.device("cpu")

    adversarial = attack.perturb(model, images, labels, noise=torch.rand(images.shape))
    # Attacked in float64 for a float64 model, in fp32 for a half one (a step would round away).
    assert adversarial.dtype == torch.promote_types(dtype, torch.float32)
    assert float((adversarial - images).abs().max()) <= 0.03 + 1e-6
    report = evaluate_accuracy(model, ImageTensors(images, labels), attack=attack, batch_size=8,
                               device=cpu)
    expected = evaluate_accuracy(reference, ImageTensors(images, labels), attack=None,
                                 batch_size=8, device=cpu)
    assert report.examples == 16 and report.robust_loss is not None
    if dtype == torch.float64:  # the float32 model's decisions (a half one may round a tie)
        assert report.clean_accuracy == expected.clean_accuracy
    adversarial_set = make_adversarial_set(model, images, labels, attack, batch_size=8)
    spec = MRCSpec(steps=2, batch_size=8)
    mrc = module_robust_criticality(model, adversarial_set, labels, spec)
    assert [row.name for row in mrc.modules] == ["0", "3"]
    assert all(torch.isfinite(torch.tensor(row.mrc)) for row in mrc.modules)
    if dtype == torch.float64:  # the same scores as the float32 model's, up to rounding
        same = module_robust_criticality(reference, adversarial_set.float(), labels, spec)
        assert [row.mrc for row in mrc.modules] == pytest.approx(
            [row.mrc for row in same.modules], rel=1e-3, abs=1e-6)
    assert all(p.dtype == dtype for p in model.parameters())  # the model is left as it was
