"""The preflight check fails a run whose checkpoint is near chance on the job's data, before any
stage runs, and reports its figures in the result otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rift.config import RiftConfig
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.pipeline import PipelineCallbacks, run_pipeline
from rift.preflight import PreflightError


def _fast(npz: Path) -> RiftConfig:
    raw = tabular_demo_config(npz)
    raw["mrc"].update(steps=1, num_examples=32)
    raw["finetune"].update(epochs=1, lr_milestones=[])
    raw["interpolation"]["alpha_step"] = 1.0
    return RiftConfig.model_validate(raw)


def test_preflight_figures_and_refusal_on_swapped_classes(tmp_path: Path) -> None:
    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=3)
    events: list[tuple[str, dict]] = []
    result = run_pipeline(_fast(npz), tmp_path / "ck.safetensors", tmp_path / "ok",
                          PipelineCallbacks(on_event=lambda k, d: events.append((k, d))))
    figures = result["preflight"]
    assert figures["clean_accuracy"] > 80.0 and figures["robust_accuracy"] is not None
    assert figures["examples"] == 114  # the whole test split (fewer than 256 examples)
    assert events[0] == ("preflight", figures)

    # The same data with the two classes numbered the other way round.
    with np.load(npz) as archive:
        np.savez(tmp_path / "swapped.npz", x=archive["x"], y=1 - archive["y"])
    swapped = _fast(tmp_path / "swapped.npz")
    events.clear()
    with pytest.raises(PreflightError) as refused:
        run_pipeline(swapped, tmp_path / "ck.safetensors", tmp_path / "bad",
                     PipelineCallbacks(on_event=lambda k, d: events.append((k, d))))
    message = refused.value.message
    assert "near chance" in message and "class order" in message and "normalization" in message
    assert not any(kind == "stage_started" for kind, _ in events)
    assert not (tmp_path / "bad" / "mrc.json").exists()
    # Skipping the check is possible and explicit.
    skipped = swapped.model_copy(update={"preflight": swapped.preflight.model_copy(
        update={"examples": 0})})
    assert run_pipeline(skipped, tmp_path / "ck.safetensors", tmp_path / "bad")["preflight"] is None
