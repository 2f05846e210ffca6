"""Weights files whose bytes depend only on what they hold (rift/safetensors_bytes.py): two
identical runs give files with one SHA-256, so a user can compare runs by the digests listed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from rift import checkpoints
from rift.pipeline import run_pipeline
from rift.safetensors_bytes import safetensors_bytes

METADATA = {name: f"value of {name}" for name in ("config", "architecture", "alpha", "module",
                                                  "kind", "checkpoint_sha256", "rift_version")}


def test_the_same_tensors_and_metadata_give_the_same_bytes() -> None:
    tensors = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3),
               "bn.num_batches_tracked": torch.tensor(7)}
    saved = {safetensors_bytes(tensors, METADATA) for _ in range(8)}
    saved.add(safetensors_bytes(tensors, dict(reversed(METADATA.items()))))
    assert len(saved) == 1
    data = saved.pop()
    length = int.from_bytes(data[:8], "little")
    assert length % 8 == 0  # tensor data stays 8-byte aligned
    assert json.loads(data[8:8 + length])["__metadata__"] == METADATA
    loaded = safetensors.torch.load(data)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[key], value) for key, value in tensors.items())


def test_a_saved_checkpoint_is_the_same_file_each_time(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float64)}
    digests = set()
    for index in range(6):
        path = tmp_path / f"{index}.safetensors"
        checkpoints.save_safetensors(path, tensors, METADATA)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        with safetensors.safe_open(str(path), "pt") as handle:
            assert handle.metadata() == METADATA
    assert len(digests) == 1


def test_two_identical_runs_write_the_same_weights_files(digits_checkpoint_path: Path,
                                                         digits_job_config: dict[str, Any],
                                                         tmp_path: Path) -> None:
    config = digits_job_config
    config["attack"].update(steps=2)
    config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    config["finetune"].update(epochs=1, lr_milestones=[])
    config["interpolation"]["alpha_step"] = 0.5
    config["evaluation"]["max_examples"] = 64
    config["preflight"] = {"examples": 0}
    for name in ("first", "second"):
        run_pipeline(config, digits_checkpoint_path, tmp_path / name)
    for weights in ("tuned.safetensors", "finetuned.safetensors"):
        assert (tmp_path / "first" / weights).read_bytes() == \
            (tmp_path / "second" / weights).read_bytes(), weights
