"""The reproducibility manifest: what it records, and a rerun from it alone gives bit-identical
weights on the CPU."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from rift import checkpoints
from rift.config import RiftConfig
from rift.manifest import build_manifest, config_from_manifest, sha256_file
from rift.pipeline import run_pipeline


def _fast_config() -> RiftConfig:
    from rift.demo import DIGITS_DEMO_CONFIG

    config = copy.deepcopy(DIGITS_DEMO_CONFIG)
    config["device"] = "cpu"
    config["mrc"].update(steps=2, num_examples=128, batch_size=64)
    config["finetune"].update(epochs=2, lr_milestones=[1])
    config["interpolation"]["alpha_step"] = 0.5
    config["evaluation"]["max_examples"] = 120
    return RiftConfig.model_validate(config)


def test_manifest_records_inputs_config_and_versions(digits_checkpoint_path: Path) -> None:
    config = _fast_config()
    digest = sha256_file(digits_checkpoint_path)
    manifest = build_manifest(config, checkpoint_sha256=digest, device="cpu",
                              extra={"job_id": "j1"})
    assert digest == hashlib.sha256(digits_checkpoint_path.read_bytes()).hexdigest()
    assert manifest["checkpoint_sha256"] == digest and manifest["job_id"] == "j1"
    assert manifest["dataset"] == {"name": "digits", "sha256": None, "splits_sha256": None}
    assert manifest["seed"] == config.seed and manifest["deterministic"] is True
    assert manifest["device"] == "cpu"
    versions = manifest["versions"]
    assert versions["torch"] == torch.__version__ and versions["torchvision"]
    assert "cuda" in versions and "cudnn" in versions and versions["rift-service"]
    # This repository is a git checkout: the commit is found (40 hex digits).
    assert manifest["git_commit"] is None or len(manifest["git_commit"]) == 40
    assert build_manifest(config, checkpoint_sha256=digest, device="cpu",
                          commit="a" * 40)["git_commit"] == "a" * 40
    json.dumps(manifest)  # a JSON document
    assert config_from_manifest(json.loads(json.dumps(manifest))) == config


@pytest.mark.slow
def test_rerun_from_the_manifest_is_bit_identical_on_cpu(digits_checkpoint_path: Path,
                                                          tmp_path: Path) -> None:
    config = _fast_config()
    run_pipeline(config, digits_checkpoint_path, tmp_path / "first")
    manifest = json.loads(json.dumps(build_manifest(
        config, checkpoint_sha256=sha256_file(digits_checkpoint_path), device="cpu")))

    # A rerun knows only the manifest and a checkpoint whose digest matches it.
    assert sha256_file(digits_checkpoint_path) == manifest["checkpoint_sha256"]
    run_pipeline(config_from_manifest(manifest), digits_checkpoint_path, tmp_path / "second")
    for name in ("finetuned.safetensors", "tuned.safetensors"):
        first = checkpoints.load_state_dict(tmp_path / "first" / name)
        second = checkpoints.load_state_dict(tmp_path / "second" / name)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (name, key)
    first_result = json.loads((tmp_path / "first" / "result.json").read_text())
    second_result = json.loads((tmp_path / "second" / "result.json").read_text())
    assert [r["mrc"] for r in first_result["mrc"]["rows"]] == [
        r["mrc"] for r in second_result["mrc"]["rows"]]
    assert first_result["interpolation"]["points"] == second_result["interpolation"]["points"]


def test_a_cli_run_stores_the_manifest_and_a_rerun_from_it_writes_the_same_files(
        digits_checkpoint_path: Path, tmp_path: Path) -> None:
    """The library's run folder holds the service's manifest.json, with what a bit-identical
    rerun needs beyond the config (the examples read, the thread count); a rerun from it alone
    writes byte-identical weights files."""
    import rift

    config = _fast_config()
    run_pipeline(config, digits_checkpoint_path, tmp_path / "first")
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    identity = json.loads((tmp_path / "first" / "run.json").read_text())
    assert manifest["checkpoint_sha256"] == sha256_file(digits_checkpoint_path)
    assert manifest["dataset"] == {"name": "digits", "sha256": None,
                                   "splits_sha256": identity["dataset_fingerprint"]}
    assert manifest["device"] == "cpu" and manifest["torch_threads"] == torch.get_num_threads()
    assert manifest["versions"]["scikit-learn"]  # the digits images come from it
    assert manifest["versions"]["rift-service"] == rift.__version__
    assert config_from_manifest(manifest) == config

    run_pipeline(config_from_manifest(manifest), digits_checkpoint_path, tmp_path / "second")
    for name in ("finetuned.safetensors", "tuned.safetensors"):
        assert (tmp_path / "first" / name).read_bytes() == \
            (tmp_path / "second" / name).read_bytes(), name

