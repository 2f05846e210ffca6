"""rift/stage_outputs.py: saved stage files that cannot be read are a StageOutputError naming the
file, never a JSON, safetensors or TypeError traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rift import stage_outputs
from rift.errors import ConfigError, StageOutputError
from rift.pipeline import load_finetune, load_mrc
from rift.stage_outputs import FINETUNE_JSON, FINETUNED, MRC_JSON, RUN_JSON, FolderStorage


@pytest.mark.parametrize(("data", "detail"), [
    (b'{"rows": ', "not valid JSON"),  # cut short
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
])
def test_read_json_names_a_damaged_file(tmp_path: Path, data: bytes, detail: str) -> None:
    (tmp_path / MRC_JSON).write_bytes(data)
    with pytest.raises(StageOutputError, match=f"{MRC_JSON} cannot be read \\({detail}"):
        stage_outputs.read_json(FolderStorage(tmp_path), MRC_JSON)


def test_read_weights_names_a_damaged_file(tmp_path: Path) -> None:
    storage = FolderStorage(tmp_path)
    stage_outputs.write_weights(storage, FINETUNED, {"w": torch.ones(3)}, {})
    (tmp_path / FINETUNED).write_bytes((tmp_path / FINETUNED).read_bytes()[:20])
    with pytest.raises(StageOutputError, match=f"{FINETUNED} cannot be read") as error:
        stage_outputs.read_weights(storage, FINETUNED)
    assert error.value.code == "invalid_stage_output" and "--fresh" in error.value.message


def test_stage_records_with_missing_fields_name_the_file(tmp_path: Path) -> None:
    storage = FolderStorage(tmp_path)
    stage_outputs.write_json(storage, MRC_JSON, {"rows": []})
    with pytest.raises(StageOutputError, match=MRC_JSON):
        load_mrc(storage)
    stage_outputs.write_json(storage, FINETUNE_JSON, {"module": "fc"})
    with pytest.raises(StageOutputError, match=f"{FINETUNE_JSON}.*no field 'epochs'"):
        load_finetune(storage, with_weights=False)


def test_a_damaged_run_json_without_outputs_is_taken_over(tmp_path: Path) -> None:
    # A folder with no stage outputs is taken over whatever its run.json says, even unreadable.
    (tmp_path / RUN_JSON).write_text("garbage")
    identity = stage_outputs.RunIdentity("abc", "def", {"seed": 0})
    stage_outputs.check_run_identity(FolderStorage(tmp_path), identity)
    assert stage_outputs.read_json(FolderStorage(tmp_path), RUN_JSON) == identity.to_json()


def test_the_fingerprint_takes_zero_dimensional_tensors_of_any_dtype() -> None:
    """BatchNorm's ``num_batches_tracked`` is a 0-d int64. Before, a run given a state dict
    (``run_pipeline(config, model.state_dict(), ...)``) of any model with BatchNorm failed with
    "self.dim() cannot be 0 to view Long as Byte" before its first stage."""
    state = {"bn.num_batches_tracked": torch.tensor(7), "bn.weight": torch.ones(3),
             "flag": torch.tensor(True), "half": torch.tensor(0.5, dtype=torch.float16)}
    fingerprint = stage_outputs.tensors_fingerprint(state)
    assert fingerprint == stage_outputs.tensors_fingerprint(dict(state))
    assert fingerprint != stage_outputs.tensors_fingerprint(
        {**state, "bn.num_batches_tracked": torch.tensor(8)})


def test_a_folder_holds_one_run_at_a_time(tmp_path: Path) -> None:
    # Before: two runs on one --out both "succeeded", leaving run.json of one and result.json
    # of the other.
    held, second = FolderStorage(tmp_path).lock(), FolderStorage(tmp_path).lock()
    with held, pytest.raises(ConfigError, match="another run is using") as refused, second:
        pass
    assert refused.value.field == "output_dir"
    with FolderStorage(tmp_path).lock():  # released with the run
        pass


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    # Before: 0600 (tempfile.mkstemp), whatever the umask.
    previous = os.umask(0o022)
    try:
        stage_outputs.write_json(FolderStorage(tmp_path), RUN_JSON, {})
    finally:
        os.umask(previous)
    assert (tmp_path / RUN_JSON).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [RUN_JSON]
