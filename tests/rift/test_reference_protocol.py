"""``protocol: "reference"`` sets the reference code's choices, and the pipeline follows them."""

from __future__ import annotations

from pathlib import Path

from rift.config import REFERENCE_PROTOCOL, RiftConfig
from rift.data import DatasetSplits, ImageTensors
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.pipeline import finetune_splits, prepare_run, run_mrc_stage


def test_reference_protocol_sets_the_reference_choices(tmp_path: Path) -> None:
    raw = tabular_demo_config(tmp_path / "x.npz")
    config = RiftConfig.model_validate({**raw, "protocol": "reference"})
    assert config.mrc.split == "test" and config.mrc.allow_negative and config.mrc.reshuffle
    assert config.mrc.ascent == "sgd" and config.mrc.lr == 1.0
    assert config.interpolation.alpha_step == 0.1
    assert config.interpolation.robust_tolerance == 0.1
    assert config.finetune.selection_split == "test"
    for section, values in REFERENCE_PROTOCOL.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value, (section, key)
    # The recorded config validates to itself (resume compares it).
    assert RiftConfig.model_validate(config.model_dump(mode="json")) == config
    default = RiftConfig.model_validate(raw)
    assert default.mrc.split == "train" and not default.mrc.allow_negative


def test_reference_mode_draws_mrc_from_test_and_trains_on_all_training_data(
        tmp_path: Path) -> None:
    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=2)
    raw = tabular_demo_config(npz)
    raw["mrc"].update(num_examples=1000)
    # The protocol sets its own values; a config giving others for them is refused.
    for section, values in REFERENCE_PROTOCOL.items():
        for key in values:
            raw.get(section, {}).pop(key, None)
    config = RiftConfig.model_validate({**raw, "protocol": "reference"})
    run = prepare_run(config, tmp_path / "ck.safetensors")
    assert run_mrc_stage(run).examples == len(run.splits.test)

    splits: DatasetSplits = run.splits
    seen = finetune_splits(splits, "test")
    assert len(seen.train) == len(splits.train) + len(splits.validation)
    assert seen.validation is splits.test
    assert isinstance(seen.train, ImageTensors)
    assert finetune_splits(splits, "validation") is splits
