"""``python -m rift``: config assembly, the run command and its error reporting."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rift
from rift.cli import ConfigInputError, build_config, main, make_parser


def test_flags_and_overrides_build_a_valid_config(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architecture": {"name": "resnet18"}, "dataset": {"name": "cifar10"},
                                "mrc": {"steps": 7}}))
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--config", str(spec), "--arch", "wide_resnet34_10",
        "--num-classes", "100", "--dataset", "cifar100", "--data-root", "/data",
        "--set", "mrc.include=[\"block3.*\"]", "--set", "finetune.bn_stats=freeze"])
    config = build_config(args)
    assert config.architecture.name == "wide_resnet34_10"
    assert config.architecture.num_classes == 100
    assert config.dataset.name == "cifar100" and config.dataset.root == "/data"
    assert config.mrc.steps == 7 and config.mrc.include == ["block3.*"]
    assert config.finetune.bn_stats == "freeze"
    assert config.checkpoint_entry is None
    entry = make_parser().parse_args(["run", "--checkpoint", "x.pt", "--config", str(spec),
                                      "--checkpoint-entry", "model.ema"])
    assert build_config(entry).checkpoint_entry == "model.ema"


def test_set_gives_text_settings_the_text_typed() -> None:
    # Before: "Input should be a valid string" for the number 4 (nn.Sequential names its
    # children "0", "1", ...).
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
        "--set", "finetune.module=4", "--set", "mrc.steps=3"])
    config = build_config(args)
    assert config.finetune.module == "4" and config.mrc.steps == 3
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
        "--set", "finetune.module=4", "--set", "mrc.steps=x"])
    with pytest.raises(ConfigInputError, match=r"mrc\.steps"):  # another error stays an error
        build_config(args)


def test_set_takes_digit_module_names_as_a_list_of_numbers() -> None:
    # Before: "mrc.modules.0: Input should be a valid string", no word of quoting.
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
        "--set", "mrc.modules=[0,4]", "--set", "finetune.module=4.10"])
    config = build_config(args)
    assert config.mrc.modules == ["0", "4"]
    assert config.finetune.module == "4.10"  # the text typed, not the number 4.1
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
        "--set", "mrc.modules=[4.10]"])
    with pytest.raises(ConfigInputError, match=r"mrc\.modules: module names are text, and a "
                                               r"number may lose digits .*: quote it"):
        build_config(args)


def test_invalid_values_exit_2_naming_the_field(tmp_path: Path, capsys) -> None:
    code = main(["run", "--checkpoint", "x.pt", "--arch", "resnet18", "--dataset", "cifar10",
                 "--set", "mrc.eps=-1", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "mrc.eps" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    # Before: TypeError "'int' object does not support item assignment", with a traceback.
    (["--set", "mrc=5", "--set", "mrc.steps=3"],
     "--set mrc.steps: cannot set 'mrc.steps' because 'mrc' is already 5"),
    (["--config", "{config}", "--arch", "small_cnn"],
     "--arch: cannot set 'architecture.name' because 'architecture' is already \"small_cnn\""),
])
def test_setting_inside_a_value_that_is_not_a_section_exits_2(
        tmp_path: Path, capsys, argv: list[str], words: str) -> None:
    config = tmp_path / "spec.json"
    config.write_text(json.dumps({"architecture": "small_cnn", "dataset": {"name": "digits"}}))
    code = main(["run", "--checkpoint", "x.pt", "--arch", "resnet18", "--dataset", "cifar10",
                 "--out", str(tmp_path / "out"), *[a.format(config=config) for a in argv]])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {words}, not a section of settings"


@pytest.mark.parametrize("override", ["=1", ".x=1", "mrc..steps=1", "mrc. =1"])
def test_set_with_an_empty_key_part_is_a_usage_error(override: str, capsys) -> None:
    # Before: pydantic's "Extra inputs are not permitted" for a key named "".
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(["run", "--checkpoint", "x.pt", "--set", override])
    assert exit_info.value.code == 2
    assert "the key must be dotted setting names" in capsys.readouterr().err


def test_missing_checkpoint_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(["run", "--checkpoint", str(tmp_path / "nope.safetensors"), "--arch", "small_cnn",
                 "--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_a_built_in_dataset_without_its_folder_names_the_flag(
        digits_checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    code = main(["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
                 "--dataset", "cifar10", "--device", "cpu", "--out", str(tmp_path / "out")])
    # Before: "needs 'root'", a word the command line has no flag for.
    assert code == 2 and "--data-root" in capsys.readouterr().err


def test_checkpoint_folder_and_out_file_are_clear_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    code = main(["run", "--checkpoint", str(tmp_path), "--arch", "small_cnn", "--dataset",
                 "digits", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 2 and "a folder, not a file" in capsys.readouterr().err
    code = main(["run", "--checkpoint", str(tmp_path / "file"), "--arch", "small_cnn",
                 "--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "file")])
    # Before: "error: File exists: ..." (or "Not a directory: .../mrc.json" with --fresh).
    assert code == 2 and f"--out {tmp_path / 'file'}: a file, not a folder" in capsys.readouterr().err


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(
        tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    blocked = tmp_path / "file" / "out"  # its parent is a file: no folder can be made there
    code = main(["run", "--checkpoint", str(tmp_path / "file"), "--arch", "small_cnn",
                 "--dataset", "digits", "--device", "cpu", "--out", str(blocked)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --out {blocked}: cannot write there: Not a directory")
    # Before: the digits model trained for minutes, then the save failed.
    code = main(["demo-checkpoint", "--out", str(blocked / "digits.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --out {blocked}: cannot write there: ")
    code = main(["demo-checkpoint", "--out", str(tmp_path)])
    assert code == 2 and "a folder; give a file name" in capsys.readouterr().err


def test_a_library_error_prints_the_setting_at_fault(
        digits_checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    """Every library error carries the setting to change (``RiftError.field``); the command
    line printed the message alone, though the service answers with the field. Here also
    ``finetune.module`` naming a BatchNorm, which MRC does not score (was tuned)."""
    out = tmp_path / "out"
    code = main(["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
                 "--num-classes", "10", "--dataset", "digits", "--device", "cpu", "--quiet",
                 "--out", str(out), "--set", "finetune.module=bn1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error (invalid_config): finetune.module 'bn1' is a BatchNorm2d, "
                          "which MRC does not score")
    assert err.rstrip().endswith("conv1, conv2, conv3, fc (field: finetune.module)")
    assert not (out / "mrc.json").exists()


class _EasyDict(dict):  # type: ignore[type-arg]
    """Like easydict.EasyDict (not installed): a training script's config saved beside the
    weights, which only its own code could rebuild."""


def _model_and_ema_checkpoint(digits: Path, path: Path) -> dict[str, Any]:
    """A robust-training checkpoint: the digits weights as the EMA, other weights as the model,
    an EasyDict of arguments; returns the EMA's state dict."""
    import torch

    from rift.checkpoints import load_state_dict

    ema = load_state_dict(digits)
    model = {k: v + 0.25 if v.is_floating_point() else v for k, v in ema.items()}
    torch.save({"state_dict": model, "state_dict_ema": ema, "epoch": 99,
                "args": _EasyDict(arch="small_cnn", lr=0.1)}, path)
    return ema


def test_run_command_end_to_end(digits_checkpoint_path: Path, digits_job_config: dict,
                                tmp_path: Path, capsys) -> None:
    from safetensors import safe_open

    ema = _model_and_ema_checkpoint(digits_checkpoint_path, tmp_path / "ema.pt")
    digits_job_config["mrc"].update(steps=2, num_examples=64)
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[])
    digits_job_config["interpolation"]["alpha_step"] = 0.5
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(digits_job_config))
    out = tmp_path / "out"
    command = ["run", "--checkpoint", str(tmp_path / "ema.pt"), "--config", str(spec),
               "--out", str(out), "--quiet"]
    # Two sets of weights and no choice: refused before any work, listing the entries.
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "'state_dict', 'state_dict_ema'" in error and "--checkpoint-entry" in error
    assert not (out / "result.json").exists()
    completed = subprocess.run(
        [sys.executable, "-m", "rift", *command, "--checkpoint-entry", "state_dict_ema"],
        capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint_entry"] == "state_dict_ema"
    assert result["config"]["checkpoint_entry"] == "state_dict_ema"
    assert "(checkpoint entry 'state_dict_ema')" in completed.stdout
    # The tuned weights are a plain state dict of the model, saying whose weights they are.
    with safe_open(str(out / "tuned.safetensors"), "pt") as tuned:
        assert sorted(tuned.keys()) == sorted(ema)
        assert tuned.metadata()["checkpoint_entry"] == "state_dict_ema"
        # ... and where they came from: θ_AT's file digest (the run identity's), the version.
        assert tuned.metadata()["checkpoint_sha256"] == hashlib.sha256(
            (tmp_path / "ema.pt").read_bytes()).hexdigest()
        assert tuned.metadata()["rift_version"] == rift.__version__
    assert f"{result['selected_module']}" in completed.stdout
    assert "<- fine-tuned" in completed.stdout and "<- chosen" in completed.stdout
    for row in result["mrc"]["rows"]:
        assert row["name"] in completed.stdout


def test_warning_events_are_printed_one_line_each(capsys) -> None:
    # Before: the CLI passed no event callback, so every warning (out-of-memory back-off, the
    # fx fallback, "no α > 0 kept the robustness ... try a smaller finetune.lr") was dropped.
    from rift.cli import print_warnings

    print_warnings("warning", {"stage": "interpolate", "message": "no α > 0 kept it"})
    print_warnings("stage_started", {"stage": "mrc"})
    # A sweep candidate's warning says whose it is (the event names its index).
    print_warnings("warning", {"stage": "finetune", "message": "diverged", "candidate": 2})
    assert capsys.readouterr().err == ("warning (interpolate): no α > 0 kept it\n"
                                       "warning (finetune, candidate 2): diverged\n")


@pytest.mark.parametrize("argv", [["architectures"]])
def test_listing_commands(argv: list[str], capsys) -> None:
    assert main(argv) == 0
    names = capsys.readouterr().out.split()
    assert {"resnet18", "wide_resnet34_10", "small_cnn", "torchvision:resnet50"} <= set(names)


@pytest.mark.parametrize(("argv", "spec", "line"), [
    # Before: pydantic's several-line report ("1 validation error for RiftConfig", the
    # input_type, a URL), never saying which flag or file held the value.
    ([], {"mrc": {"stepz": 1}}, "mrc.stepz: unknown setting 'stepz'; did you mean 'steps'?"),
    ([], {"finetune": {"LR": 1}}, "finetune.LR: unknown setting 'LR'; did you mean 'lr'?"),
    ([], {"finetune": {"learning_rate": 0.01}}, "finetune.learning_rate: unknown setting "
     "'learning_rate'; did you mean 'lr'?"),
    ([], {"protocol": "reference", "mrc": {"steps": 3}}, "mrc.steps: protocol 'reference' "
     "sets mrc.steps to 10"),
    ([], {"architecture": {"name": "small_cnn", "mean": [0.5]}}, "architecture.std: give both"),
    (["--set", "finetune.lr_grid=[0.01]"], {"finetune": {"lr": 0.1}}, "finetune.lr: 'lr_grid' "
     "sets the rates that are run and 0.1 is not among them"),
    ([], {"mrc": {"zzz": 1}}, "mrc.zzz: unknown setting 'zzz'; known: allow_negative, ascent, "),
    (["--set", "mrc.steps=1.5"], None, "mrc.steps: Input should be a valid integer, got a "
     "number with a fractional part (from --set mrc.steps=1.5)"),
    (["--device", "CPU"], None, 'device: String should match pattern'),
    (["--seed", "-1"], None, "seed: Input should be greater than or equal to 0 (got -1, from "
     "--seed)"),
    (["--set", "attack.domain=x"], None, "attack.domain: Input should be 'auto', 'unit' or "
     "'none' or Input should be a valid dictionary"),
    # A mistyped choice suggests the closest, as the API's 422s do (before: only the list).
    (["--set", "attack.norm=Linf"], None, "attack.norm: Input should be 'linf' or 'l2'; did you "
     "mean 'linf'? (from --set attack.norm=Linf)"),
    (["--dataset", "cifar-10"], None, "'npz' or 'imagefolder'; did you mean 'cifar10'? (got "
     '"cifar-10", from --dataset)'),
    ([], {"attack": {"norm": "L_2"}}, "attack.norm: Input should be 'linf' or 'l2'; did you "
     "mean 'l2'? (got \"L_2\", from --config"),
    # An abbreviation names the one choice it begins (before: only the list).
    (["--set", "interpolation.selection_split=val"], None, "interpolation.selection_split: "
     "Input should be 'test' or 'validation'; did you mean 'validation'? (from --set "
     "interpolation.selection_split=val)"),
    # A config file is read as strictly as the API reads a job's config (before: "0.01" ran
    # as 0.01, 2.0 as 2, "yes" as true), with the API's hints.
    ([], {"finetune": {"lr": "0.01"}}, 'finetune.lr: Input should be a valid number (got '
     '"0.01": write numbers without quotes, from --config'),
    ([], {"finetune": {"epochs": 2.0}}, "finetune.epochs: Input should be a valid integer "
     "(got 2.0: write 2, from --config"),
    ([], {"attack": {"random_start": "yes"}}, 'attack.random_start: Input should be a valid '
     'boolean (got "yes", from --config'),
    # Next to an error the lax parse finds, the strict one is named too.
    ([], {"mrc": {"steps": -1, "lr": "1"}}, 'mrc.steps: Input should be greater than or equal '
     'to 1 (got -1, from --config'),
    ([], {"mrc": {"steps": -1, "lr": "1"}}, 'mrc.lr: Input should be a valid number (got "1": '
     'write numbers without quotes, from --config'),
])
def test_an_invalid_config_is_one_line_naming_the_setting_and_its_source(
        tmp_path: Path, capsys, argv: list[str], spec: dict | None, line: str) -> None:
    if spec is not None:
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        argv = [*argv, "--config", str(tmp_path / "spec.json")]
    code = main(["run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
                 "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: invalid configuration: ") and line in err
    if spec is not None:
        assert f"from --config {tmp_path / 'spec.json'})" in err


@pytest.mark.parametrize(("name", "text", "line"), [
    # Before: json.loads kept the last value ({"lr": 0.1, "lr": 0.2} ran at 0.2), silently.
    ("spec.json", '{"finetune": {"lr": 0.1, "lr": 0.2}}',
     "the key 'lr' is given more than once in one object; give it once"),
    # Before: "not valid JSON (Expecting value: line 1 column 1 (char 0))" and nothing more.
    ("spec.yaml", "finetune:\n  lr: 0.1\n", "line 1 column 1 (char 0)); YAML is not read, "
     "convert it to JSON"),
])
def test_a_config_file_json_cannot_take_as_meant_is_one_line(
        tmp_path: Path, capsys, name: str, text: str, line: str) -> None:
    (tmp_path / name).write_text(text)
    code = main(["run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", "digits",
                 "--config", str(tmp_path / name), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --config {tmp_path / name}: ") and line in err


@pytest.mark.parametrize(("value", "fix"), [
    ("train.npz", "give --dataset npz --data-path train.npz"),
    ("FOLDER", "give --dataset imagefolder --data-path FOLDER"),
])
def test_a_path_given_as_the_dataset_says_which_flags_take_it(
        tmp_path: Path, capsys, value: str, fix: str) -> None:
    # Before: only the list of kinds ("Input should be 'cifar10', ... or 'imagefolder'"), which
    # does not say where a file of one's own goes.
    value = value.replace("FOLDER", str(tmp_path))
    code = main(["run", "--checkpoint", "x.pt", "--arch", "small_cnn", "--dataset", value,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: invalid configuration: dataset.name: --dataset takes a kind")
    assert err.rstrip().endswith(fix.replace("FOLDER", str(tmp_path))), err


def test_set_values_stay_text_read_laxly_also_over_a_strict_file(tmp_path: Path) -> None:
    # --set values are text by nature: "yes" and "0.01" are read as meant, and a file's
    # setting that --set replaces is not held against the file.
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architecture": {"name": "small_cnn"},
                                "dataset": {"name": "digits"}, "finetune": {"lr": "0.5"}}))
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--config", str(spec), "--set", "finetune.lr=0.01",
        "--set", "attack.random_start=no", "--set", "mrc.steps=3.0"])
    config = build_config(args)
    assert (config.finetune.lr, config.attack.random_start, config.mrc.steps) == (0.01, False, 3)


def test_a_missing_section_names_the_flag_that_gives_it(capsys) -> None:
    assert main(["run", "--checkpoint", "x.pt", "--dataset", "digits"]) == 2
    assert capsys.readouterr().err == ("error: invalid configuration: architecture: required; "
                                       "give --arch NAME or set it in --config\n")


def test_set_with_an_object_merges_into_the_section(tmp_path: Path) -> None:
    # Before: the object replaced the section, dropping mrc.steps from the file and the
    # earlier --set mrc.num_examples (the run used their defaults).
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architecture": {"name": "small_cnn"},
                                "dataset": {"name": "digits"}, "mrc": {"steps": 7}}))
    args = make_parser().parse_args([
        "run", "--checkpoint", "x.pt", "--config", str(spec), "--set", "mrc.num_examples=64",
        "--set", 'mrc={"eps": 0.2, "include": ["conv*"]}'])
    config = build_config(args)
    assert (config.mrc.steps, config.mrc.num_examples, config.mrc.eps) == (7, 64, 0.2)
    assert config.mrc.include == ["conv*"]


def test_ctrl_c_exits_130_saying_the_run_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    # Before: a KeyboardInterrupt traceback from wherever the run was.
    import rift.pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rift.pipeline, "run_pipeline", interrupted)
    (tmp_path / "ck.safetensors").write_bytes(b"x")
    (tmp_path / "out").mkdir()  # a folder of an earlier run's stages
    code = main(["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--arch", "small_cnn",
                 "--dataset", "digits", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 130
    assert capsys.readouterr().err == (f"interrupted; the stages saved in {tmp_path / 'out'} are "
                                       "kept, the same command resumes after them\n")
    # Stopped before its first save, in a folder it made: the folder is removed, and the line
    # no longer promises stages (it named a folder that held none).
    code = main(["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--arch", "small_cnn",
                 "--dataset", "digits", "--out", str(tmp_path / "new"), "--quiet"])
    assert code == 130 and not (tmp_path / "new").exists()
    assert capsys.readouterr().err == "interrupted; nothing was saved\n"


def test_interpolation_table_shows_alpha_as_on_the_grid() -> None:
    # Before: two decimals, so alpha_step 0.005 printed 0.005 as "0.01", twice.
    from rift.cli import format_interpolation_table

    points = [{"alpha": a, "clean_accuracy": 90.0, "robust_accuracy": 80.0}
              for a in (0.0, 0.005, 0.01, 1.0)]
    alphas = [line.split()[0] for line in format_interpolation_table(points, 0.005).splitlines()]
    assert alphas == ["alpha", "0", "0.005", "0.01", "1"]


def test_a_sweeps_candidates_are_printed_side_by_side() -> None:
    # Before: `python -m rift run` printed the winner's curve alone; the other candidates were
    # only in curves.json.
    from rift.cli import format_sweep_table
    from rift.sweep import Candidate, CandidateOutcome, ExcludedCandidate, curves_document

    sweep = curves_document([
        ExcludedCandidate(Candidate("conv1", 10.0), "diverged in epoch 1", "finetune.lr_grid"),
        CandidateOutcome(Candidate("conv1", 0.05), 0.5, 91.0, 60.0, [], 1),
        CandidateOutcome(Candidate("fc", 0.0001), 1.0, 92.5, 61.0, [], 1)])
    rows = format_sweep_table(sweep).splitlines()[1:]
    assert [row.split()[:3] for row in rows] == [["0", "conv1", "10"], ["1", "conv1", "0.05"],
                                                ["2", "fc", "0.0001"]]
    assert rows[0].endswith("excluded: diverged in epoch 1")
    assert rows[1].split()[3:] == ["0.5", "91.00%", "60.00%"]
    assert rows[2].endswith("<- chosen") and rows[2].split()[3:6] == ["1", "92.50%", "61.00%"]


def test_demo_checkpoint_writes_the_matching_job_config(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import rift.demo
    from rift.config import RiftConfig

    trained: list[Path] = []

    def fake_training(path: Path, *, seed: int) -> dict[str, Any]:  # the training is not tested here
        trained.append(Path(path))
        Path(path).write_bytes(b"weights")
        return {"path": str(path), "seed": seed}

    monkeypatch.setattr(rift.demo, "make_digits_checkpoint", fake_training)
    (tmp_path / "file").write_text("x")
    # A --config-out that cannot be written is refused before the training, not after it.
    code = main(["demo-checkpoint", "--out", str(tmp_path / "model.safetensors"),
                 "--config-out", str(tmp_path / "file" / "config.json")])
    assert code == 2 and "error: --config-out" in capsys.readouterr().err
    assert trained == []
    config_out = tmp_path / "config.json"
    code = main(["demo-checkpoint", "--out", str(tmp_path / "model.safetensors"),
                 "--config-out", str(config_out)])
    assert code == 0, capsys.readouterr().err
    assert trained == [tmp_path / "model.safetensors"]
    written = json.loads(config_out.read_text())
    # Before: the README's examples read a config.json that nothing made.
    assert written == rift.demo.DIGITS_DEMO_CONFIG
    assert RiftConfig.model_validate(written).architecture.name == "small_cnn"
    assert json.loads(capsys.readouterr().out)["config"] == str(config_out)


def test_help_names_every_demo_option_and_shows_no_rst_quotes() -> None:
    parser = make_parser()
    assert "``" not in (parser.description or "")
    commands = next(action for action in parser._actions if action.dest == "command")
    demo = commands.choices["demo-checkpoint"]  # type: ignore[attr-defined]
    options = [action for action in demo._actions if action.option_strings != ["-h", "--help"]]
    assert {action.dest for action in options} == {"out", "seed", "config_out", "overwrite"}
    assert all(action.help for action in options), [a.dest for a in options if not a.help]


_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_FAULTS_AFTER_CLI = """
import contextlib, io, os, resource, runpy, sys
sys.argv = ["rift", "architectures"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("rift", run_name="__main__")
    except SystemExit:
        pass
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, every page touched
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_command_line_backs_large_cpu_tensors_with_huge_pages() -> None:
    """``python -m rift`` sets THP_MEM_ALLOC_ENABLE before torch starts (torch reads it once):
    a 64 MiB tensor then faults in 2 MiB pages, not 16,384 pages of 4 KiB."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_CLI], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    setting, faults = done.stdout.split()
    assert setting == "1"
    if _HUGE_PAGES.exists() and "[never]" not in _HUGE_PAGES.read_text():
        assert int(faults) < 4096, faults  # 16,384 without huge pages


def test_interpolation_table_shows_a_stopped_points_bound_as_a_bound() -> None:
    """A selection curve's point whose attack stopped early has only an upper bound: the table
    printed "-", the mark of a point never attacked, and said nothing of either."""
    from rift.cli import format_interpolation_table

    points = [{"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 70.0},
              {"alpha": 0.5, "clean_accuracy": 91.0, "robust_accuracy": None,
               "robust_accuracy_at_most": None},
              {"alpha": 1.0, "clean_accuracy": 92.0, "robust_accuracy": None,
               "robust_accuracy_at_most": 68.5}]
    lines = format_interpolation_table(points, 0.0).splitlines()
    assert lines[1].split() == ["0", "90.00%", "70.00%", "<-", "chosen"]
    assert lines[2].split() == ["0.5", "91.00%", "-"]
    assert lines[3].split() == ["1", "92.00%", "≤", "68.50%"]
    assert lines[4].startswith("-: not attacked") and lines[5].startswith("≤ x: attack stopped")
    full = format_interpolation_table(points[:1], 0.0)
    assert "not attacked" not in full and "≤" not in full


def test_run_names_the_split_of_the_curve_and_of_before_and_after(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """α chosen on the validation split: the printed curve's α = 0 row (90.67, validation) and
    the before line's θ_AT (91.33, test) differed with no word on which split is which."""
    import rift.pipeline

    row = {"name": "fc", "parameters": 650, "mrc": 0.24, "robust_accuracy_at_worst": 57.8,
           "robust_accuracy_drop": 18.8, "exact": True}
    result = {"mrc": {"rows": [row]}, "selected_module": "fc", "chosen_alpha": 1.0,
              "interpolation": {"selection_split": "validation", "points": [
                  {"alpha": 0.0, "clean_accuracy": 90.67, "robust_accuracy": 72.67},
                  {"alpha": 1.0, "clean_accuracy": 94.0, "robust_accuracy": 73.33}]},
              "before": {"clean_accuracy": 91.33, "robust_accuracy": 69.33},
              "after": {"clean_accuracy": 94.67, "robust_accuracy": 72.0}}
    monkeypatch.setattr(rift.pipeline, "run_pipeline", lambda *args, **kwargs: result)
    (tmp_path / "ck.safetensors").write_bytes(b"x")
    assert main(["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--arch", "small_cnn",
                 "--dataset", "digits", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "alpha    clean    robust  (%, validation split)" in out
    assert "robust 69.33% -> 72.00%   (test split; α = 1, module fc)" in out


def test_every_option_of_run_says_what_it_sets() -> None:
    import argparse

    parser = make_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    run = commands.choices["run"]
    # Before: --num-classes, --precision and --seed bare, and --out's default unsaid.
    bare = [action.option_strings for action in run._actions if not action.help]
    assert bare == [], bare
    out = next(action for action in run._actions if "--out" in action.option_strings)
    assert str(out.default) in (out.help or "")


@pytest.mark.parametrize("args", [["architectures"], ["--help"], ["run", "--help"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(args: list[str]) -> None:
    """``python -m rift architectures | head -1``. Before: "error: Broken pipe", exit 2 (the
    OSError handler's one line, for a reader that had what it wanted)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before a byte is written: every write fails
    try:
        done = subprocess.run([sys.executable, "-m", "rift", *args], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=120, text=True, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_run_refused_before_its_first_stage_leaves_no_out_folder_behind(
        digits_checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    """Before: every refusal after the --out check (a missing data file, a device CUDA lacks, a
    checkpoint of another architecture) left the folder it had made, empty, parents included."""
    out = tmp_path / "runs" / "first"
    command = ["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
               "--dataset", "npz", "--data-path", str(tmp_path / "missing.npz"),
               "--device", "cpu", "--quiet", "--out"]
    assert main([*command, str(out)]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # A folder that was there before the run is the user's: kept, as is what it holds.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main([*command, str(tmp_path / "mine")]) == 2
    assert main([*command, str(tmp_path / "mine" / "new")]) == 2
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_library_errors_field_names_the_flag_that_sets_it(
        digits_checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    """The field of a library error is printed with the flag that sets it (the user typed
    --data-path, not dataset.path), and a pipeline argument as its flag (output_dir: --out)."""
    (tmp_path / "notes.npz").write_text("not an archive")
    code = main(["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
                 "--dataset", "npz", "--data-path", str(tmp_path / "notes.npz"),
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.rstrip().endswith("(field: dataset.path, --data-path)")
    from rift.cli import field_words

    assert field_words("output_dir") == "--out" and field_words("device") == "device, --device"
    assert field_words("finetune.module") == "finetune.module"


def test_demo_checkpoint_refuses_to_write_over_an_existing_file(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: ``demo-checkpoint --out model.safetensors`` replaced the user's own model of that
    name without a word (and ``--config-out`` their config), after minutes of training."""
    import rift.demo

    trained: list[Path] = []

    def fake_training(path: Path, *, seed: int) -> dict[str, Any]:  # the training is not tested here
        trained.append(Path(path))
        Path(path).write_bytes(b"new weights")
        return {"path": str(path), "seed": seed}

    monkeypatch.setattr(rift.demo, "make_digits_checkpoint", fake_training)
    mine, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    mine.write_bytes(b"my own model")
    assert main(["demo-checkpoint", "--out", str(mine)]) == 2
    assert capsys.readouterr().err == (f"error: --out {mine}: a file of that name exists; give "
                                       "another name, or --overwrite to replace it\n")
    config.write_text("{}")
    assert main(["demo-checkpoint", "--out", str(tmp_path / "new.safetensors"),
                 "--config-out", str(config)]) == 2
    assert "error: --config-out" in capsys.readouterr().err
    assert trained == [] and mine.read_bytes() == b"my own model" and config.read_text() == "{}"
    assert main(["demo-checkpoint", "--out", str(mine), "--config-out", str(config),
                 "--overwrite"]) == 0
    assert mine.read_bytes() == b"new weights" and json.loads(config.read_text())


@pytest.mark.parametrize(("argv", "line"), [
    (["run", "--checkpoint", "ck", "--num-classes", "abc"],
     "error: python -m rift run: argument --num-classes: invalid int value: 'abc' "
     "(`python -m rift run --help` lists the options)"),
    (["run", "--checkpoint", "ck", "--sed", "3"],
     "error: python -m rift: unrecognized arguments: --sed 3; did you mean --seed? "
     "(`python -m rift --help` lists the options)"),
    (["run", "--checkpoint", "ck", "--data_path=x.npz"], "did you mean --data-path?"),
    (["runn"], "invalid choice: 'runn'"),
])
def test_a_usage_error_is_one_line(argv: list[str], line: str, capsys) -> None:
    """Before: argparse printed the whole usage (up to eight lines) above its error, and no
    suggestion for a mistyped option."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and line in err, err


def test_a_stopped_demo_training_leaves_no_folder_it_made(tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    import rift.demo

    def stopped(path: Path, *, seed: int) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(rift.demo, "make_digits_checkpoint", stopped)
    code = main(["demo-checkpoint", "--out", str(tmp_path / "a" / "b" / "digits.safetensors"),
                 "--config-out", str(tmp_path / "c" / "config.json")])
    assert code == 130 and capsys.readouterr().err == "interrupted\n"
    assert list(tmp_path.iterdir()) == []  # before: a/b and c were left, empty


def test_a_checkpoint_entry_error_names_its_flag(digits_checkpoint_path: Path, tmp_path: Path,
                                                  capsys) -> None:
    # Before: no field, so the line said "leave out checkpoint_entry", a word of the config
    # file, to a user who had typed --checkpoint-entry.
    code = main(["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
                 "--dataset", "digits", "--checkpoint-entry", "ema", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.rstrip().endswith("(field: checkpoint_entry, --checkpoint-entry)")


def test_a_data_path_the_dataset_does_not_read_is_refused_naming_the_flag(
        digits_checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    code = main(["run", "--checkpoint", str(digits_checkpoint_path), "--arch", "small_cnn",
                 "--dataset", "digits", "--data-path", str(tmp_path / "mine.npz"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: invalid configuration: dataset.path: 'path' is "
                                        "read by the 'npz' and 'imagefolder' datasets only")
    assert err.rstrip().endswith("(from --data-path)") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--checkpoint", "--out", "--config", "--data-path"])
def test_an_empty_path_flag_is_refused(flag: str, tmp_path: Path, capsys) -> None:
    """``--out "$OUT"`` with OUT unset wrote the run's outputs into the current folder
    (Path("") is "."); ``--checkpoint ""`` was "--checkpoint .: a folder, not a file"."""
    argv = {"--checkpoint": "ck.safetensors", "--out": str(tmp_path / "out")}
    argv[flag] = ""
    with pytest.raises(SystemExit) as exited:
        main(["run", "--arch", "small_cnn", "--dataset", "npz",
              *(word for pair in argv.items() for word in pair)])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"argument {flag}: an empty path ('')" in err and err.count("\n") == 1


def test_a_job_request_given_as_the_config_says_where_the_config_is(
        tmp_path: Path, capsys) -> None:
    # Before: "config: unknown setting", "labels: unknown setting", architecture and dataset
    # "required": four errors, none the fix.
    request = tmp_path / "job.json"
    request.write_text(json.dumps({"checkpoint_id": "ck_1", "labels": {}, "config": {
        "architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}}))
    code = main(["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--config",
                 str(request), "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --config {request}: a job request (checkpoint_id, config, labels), not a "
        "RiftConfig: its 'config' object is the RiftConfig; save that object alone and give it\n")


def test_a_runs_manifest_or_result_given_as_the_config_reruns_it(
        digits_checkpoint_path: Path, digits_job_config: dict, tmp_path: Path) -> None:
    """The record of a run (a run folder's or a job's manifest.json, its result.json) is what a
    researcher has to repeat it: given as --config, its config is the one read. Before, every
    recorded key was an "unknown setting" and architecture and dataset "required"."""
    digits_job_config["attack"].update(steps=2)
    digits_job_config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[])
    digits_job_config["interpolation"]["alpha_step"] = 0.5
    digits_job_config["evaluation"]["max_examples"] = 64
    digits_job_config["preflight"] = {"examples": 0}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(digits_job_config))
    first = tmp_path / "first"
    assert main(["run", "--checkpoint", str(digits_checkpoint_path), "--config", str(spec),
                 "--out", str(first), "--quiet"]) == 0
    for record in ("manifest.json", "result.json"):
        again = tmp_path / record
        assert main(["run", "--checkpoint", str(digits_checkpoint_path), "--config",
                     str(first / record), "--out", str(again), "--quiet"]) == 0
        assert (again / "tuned.safetensors").read_bytes() == \
            (first / "tuned.safetensors").read_bytes(), record
        assert json.loads((again / "run.json").read_text())["config"] == \
            json.loads((first / "run.json").read_text())["config"]
