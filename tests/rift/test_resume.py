"""Resuming a run folder: stage outputs are reused only for the same checkpoint, dataset and
config; anything else is refused, ``fresh`` starts over, and a failed run blocks nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rift.config import RiftConfig
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.errors import CheckpointMismatchError, ConfigError, JobCancelled, StageOutputError
from rift.pipeline import PipelineCallbacks, prepare_run, run_finetune_stage, run_pipeline
from rift.stage_outputs import EPOCH_STATE, FolderStorage


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tabular")
    npz = write_breast_cancer_npz(folder / "bc.npz")
    make_tabular_checkpoint(folder / "a.safetensors", npz, seed=0, epochs=2)
    make_tabular_checkpoint(folder / "b.safetensors", npz, seed=1, epochs=2)
    return {"npz": npz, "a": folder / "a.safetensors", "b": folder / "b.safetensors"}


def _config(npz: Path, **mrc: Any) -> RiftConfig:
    raw = tabular_demo_config(npz)
    raw["mrc"].update(steps=2, num_examples=64, **mrc)
    raw["finetune"].update(epochs=1, lr_milestones=[])
    raw["interpolation"]["alpha_step"] = 0.5
    return RiftConfig.model_validate(raw)


def _events(into: list[str]) -> PipelineCallbacks:
    return PipelineCallbacks(on_event=lambda kind, data: into.append(
        f"{kind}:{data.get('stage', '')}"))


def test_same_run_resumes_and_every_other_run_is_refused(tabular: dict[str, Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _config(tabular["npz"])
    first = run_pipeline(config, tabular["a"], out)
    (out / "result.json").unlink()
    events: list[str] = []
    again = run_pipeline(config, tabular["a"], out, _events(events))
    assert "stage_skipped:mrc" in events and "stage_skipped:finetune" in events
    assert again["mrc"] == first["mrc"]

    with pytest.raises(ConfigError, match="another checkpoint") as refused:
        run_pipeline(config, tabular["b"], out)
    assert refused.value.field == "output_dir" and "--fresh" in refused.value.message

    other_data = tmp_path / "other.npz"
    with np.load(tabular["npz"]) as archive:
        x, y = archive["x"].copy(), archive["y"]
    x[0, 0] += 1.0  # one feature of one example
    np.savez(other_data, x=x, y=y)
    moved = config.model_copy(update={"dataset": config.dataset.model_copy(
        update={"path": str(tabular["npz"])})})
    renamed = RiftConfig.model_validate({**moved.model_dump(mode="json"), "dataset": {
        **moved.dataset.model_dump(mode="json"), "path": str(other_data)}})
    with pytest.raises(ConfigError, match="another dataset and config"):
        run_pipeline(renamed, tabular["a"], out)
    # The same file content under another name is the same dataset: only the config differs.
    copy = tmp_path / "copy.npz"
    copy.write_bytes(tabular["npz"].read_bytes())
    same_data = RiftConfig.model_validate({**config.model_dump(mode="json"), "dataset": {
        **config.dataset.model_dump(mode="json"), "path": str(copy)}})
    with pytest.raises(ConfigError, match=r"another config;"):
        run_pipeline(same_data, tabular["a"], out)

    with pytest.raises(ConfigError, match="another config"):
        run_pipeline(_config(tabular["npz"], ascent="sgd"), tabular["a"], out)

    # --fresh starts over with the other checkpoint.
    events.clear()
    fresh = run_pipeline(config, tabular["b"], out, _events(events), fresh=True)
    assert "stage_started:mrc" in events and "stage_skipped:mrc" not in events
    assert fresh["mrc"]["rows"] != first["mrc"]["rows"]


def test_a_failed_run_does_not_block_a_corrected_one(tabular: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    broken = _config(tabular["npz"]).model_dump(mode="json")
    broken["architecture"]["hidden"] = [32, 31]  # does not fit the checkpoint
    with pytest.raises(CheckpointMismatchError):
        run_pipeline(RiftConfig.model_validate(broken), tabular["a"], out)
    result = run_pipeline(_config(tabular["npz"]), tabular["a"], out)
    assert result["selected_module"]
    assert (out / "run.json").is_file()


def test_a_damaged_stage_output_is_named_and_fresh_recovers(tabular: dict[str, Path],
                                                            tmp_path: Path) -> None:
    # Before: json.decoder.JSONDecodeError with a traceback from the resumed run.
    out = tmp_path / "run"
    config = _config(tabular["npz"])
    run_pipeline(config, tabular["a"], out)
    (out / "mrc.json").write_text('{"rows": ')
    with pytest.raises(StageOutputError, match=r"mrc\.json cannot be read"):
        run_pipeline(config, tabular["a"], out)
    assert run_pipeline(config, tabular["a"], out, fresh=True)["selected_module"]


def test_a_folder_in_use_is_refused_and_fresh_deletes_nothing(tabular: dict[str, Path],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "mrc.json").write_text("{}")
    with FolderStorage(out).lock(), pytest.raises(ConfigError, match="another run is using"):
        run_pipeline(_config(tabular["npz"]), tabular["a"], out, fresh=True)
    assert (out / "mrc.json").read_text() == "{}"


def test_a_run_stopped_mid_fine_tune_continues_from_its_last_epoch(tabular: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    raw = _config(tabular["npz"]).model_dump(mode="json")
    raw["finetune"].update(epochs=5, lr_milestones=[4], momentum=0.9)
    config = RiftConfig.model_validate(raw)
    straight = run_pipeline(config, tabular["a"], tmp_path / "straight")
    out = tmp_path / "run"
    seen: list[tuple[str, dict[str, Any]]] = []

    def stop_in_epoch_three() -> bool:  # polled at every batch: stops epoch 3's first
        return sum(kind == "epoch" for kind, _ in seen) >= 2

    with pytest.raises(JobCancelled):
        run_pipeline(config, tabular["a"], out, PipelineCallbacks(
            on_event=lambda kind, data: seen.append((kind, data)),
            should_cancel=stop_in_epoch_three))
    assert (out / EPOCH_STATE).is_file()
    seen.clear()
    resumed = run_pipeline(config, tabular["a"], out, PipelineCallbacks(
        on_event=lambda kind, data: seen.append((kind, data))))
    assert [data["epochs"] for kind, data in seen if kind == "finetune_resumed"] == [2]
    assert [data["epoch"] for kind, data in seen if kind == "epoch"] == [3, 4, 5]
    kinds = [kind for kind, _ in seen]
    assert kinds.index("finetune_resumed") < kinds.index("epoch")  # said before training on
    timeless = [[{k: v for k, v in e.items() if k != "seconds"} for e in result["finetune"]
                 ["epochs"]] for result in (resumed, straight)]
    assert timeless[0] == timeless[1]
    assert (resumed["chosen_alpha"], resumed["after"]) == (straight["chosen_alpha"],
                                                           straight["after"])
    tuned = [load_file(folder / "finetuned.safetensors") for folder in (out, tmp_path / "straight")]
    assert all(torch.equal(tuned[0][key], value) for key, value in tuned[1].items())
    assert not (out / EPOCH_STATE).exists()  # finetune.json holds the result now


class _MemoryState:
    def __init__(self) -> None:
        self.data: bytes | None = None

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data = data


def test_a_stored_epoch_state_is_taken_only_by_the_same_run(tabular: dict[str, Path]) -> None:
    raw = _config(tabular["npz"]).model_dump(mode="json")
    raw["finetune"].update(epochs=4, lr_milestones=[])
    config = RiftConfig.model_validate(raw)
    store = _MemoryState()
    seen: list[tuple[str, dict[str, Any]]] = []

    def tune(settings: RiftConfig, stop: bool = False) -> None:
        seen.clear()
        run = prepare_run(settings, tabular["a"])
        module = "head"
        run_finetune_stage(run, module, PipelineCallbacks(
            on_event=lambda kind, data: seen.append((kind, data)), epoch_state=store,
            should_cancel=lambda: stop and any(kind == "epoch" for kind, _ in seen)))

    with pytest.raises(JobCancelled):
        tune(config, stop=True)  # one epoch stored
    for other in (config.model_copy(update={"seed": config.seed + 1}),
                  config.model_copy(update={"finetune": config.finetune.model_copy(
                      update={"lr": config.finetune.lr / 2})}),
                  config.model_copy(update={"evaluation": config.evaluation.model_copy(
                      update={"batch_size": config.evaluation.batch_size + 1})})):
        stored = store.data
        tune(other)
        assert "finetune_resumed" not in [kind for kind, _ in seen]
        assert [data["epoch"] for kind, data in seen if kind == "epoch"] == [1, 2, 3, 4]
        store.data = stored  # the first run's state again
    tune(config)
    assert [data["epochs"] for kind, data in seen if kind == "finetune_resumed"] == [1]


def test_a_state_left_beside_a_saved_fine_tune_is_removed_by_the_next_run(
        tabular: dict[str, Path], tmp_path: Path) -> None:
    """A run stopped after saving finetune.json, before deleting the epoch state, left the state
    in the folder: the next run skipped the stage and kept it (until --fresh)."""
    out = tmp_path / "run"
    config = _config(tabular["npz"])
    run_pipeline(config, tabular["a"], out)
    (out / EPOCH_STATE).write_bytes(b"left by a stop")
    (out / "result.json").unlink()
    events: list[str] = []
    run_pipeline(config, tabular["a"], out, _events(events))
    assert "stage_skipped:finetune" in events
    assert not (out / EPOCH_STATE).exists()
