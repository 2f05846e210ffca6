"""Run one claimed stage of a job with the library and gather what it records.

Weights and files go to the object store under deterministic keys (``jobs/<id>/...``) before the
stage is marked done, so a stage re-run after a crash overwrites the same objects; the rows and the
artifact records are written by :func:`persistence.stages.finish_stage` in one transaction.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from persistence.models import Checkpoint, Dataset, Job, StageName
from persistence.object_keys import stage_object_key
from persistence.stages import ArtifactRecord, StageOutputs
from persistence.storage import ObjectStore, StoredObject
from reporting.charts import CHART_ARTIFACTS, Curve, job_charts
from rift import checkpoints
from rift.config import RiftConfig
from rift.manifest import build_manifest
from rift.pipeline import (
    FinetuneStageResult,
    MRCStageResult,
    PipelineCallbacks,
    PreparedRun,
    build_result,
    mrc_table_csv,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
)
from worker.inputs import fetch_checkpoint, fetch_dataset

SAFETENSORS = "application/octet-stream"
TUNED = "tuned.safetensors"
FINETUNED = "finetuned.safetensors"
MRC_CSV = "mrc.csv"
RESULT_JSON = "result.json"
MANIFEST_JSON = "manifest.json"
SVG = "image/svg+xml"


MRC_RECORD = "mrc.json"
FINETUNE_RECORD = "finetune.json"
ObjectKey = Callable[[str, str], str]  # (stage, file name) -> key in that stage's recorded attempt


def job_config(job: Job, *, dataset_path: Path | None, device: str | None,
               data_root: Path | None = None) -> RiftConfig:
    """The job's config as the worker runs it: an uploaded dataset's local path filled in, built-in
    datasets read from the worker's ``data_root`` (never a folder the client named, never a
    download), and the device overridden when the worker is told to use a particular one."""
    config = RiftConfig.model_validate(job.spec)
    if dataset_path is not None:
        config = config.model_copy(update={
            "dataset": config.dataset.model_copy(update={"path": str(dataset_path)})})
    elif data_root is not None:
        config = config.model_copy(update={"dataset": config.dataset.model_copy(
            update={"root": str(data_root), "download": False})})
    if device is not None:
        config = config.model_copy(update={"device": device})
    return config


def prepare(job: Job, checkpoint: Checkpoint, dataset: Dataset | None, store: ObjectStore,
            work_dir: Path, device: str | None, data_root: Path | None = None) -> PreparedRun:
    """Fetch the job's inputs and build the run (model with θ_AT, data, device)."""
    checkpoint_path = fetch_checkpoint(store, checkpoint, work_dir)
    dataset_path = fetch_dataset(store, dataset, work_dir) if dataset is not None else None
    config = job_config(job, dataset_path=dataset_path, device=device, data_root=data_root)
    return prepare_run(config, checkpoint_path)


def run_stage(stage: str, job: Job, run: PreparedRun, store: ObjectStore, work_dir: Path,
              callbacks: PipelineCallbacks, attempts: Mapping[str, int],
              manifest: Mapping[str, Any] | None = None) -> StageOutputs:
    """Run ``stage`` and store its files; returns what :func:`finish_stage` records.

    ``attempts`` maps each stage to its latest claim: this stage's own attempt, and for the
    stages already done, the attempt whose outputs were recorded. ``manifest`` (see
    :func:`job_manifest`) is stored with the first stage's outputs."""
    scratch = Path(tempfile.mkdtemp(dir=_mkdir(work_dir / "scratch"), prefix=f"{job.id}-"))

    def key(of_stage: str, name: str) -> str:
        return stage_object_key(job.id, of_stage, attempts[of_stage], name)

    try:
        if stage == StageName.MRC:
            outputs = _mrc(job, run, store, callbacks, key)
            if manifest is not None:
                stored = _put_json(store, key(StageName.MRC, MANIFEST_JSON), dict(manifest))
                outputs.artifacts = [*outputs.artifacts, _record(MANIFEST_JSON, stored)]
            return outputs
        if stage == StageName.FINETUNE:
            return _finetune(job, run, store, scratch, callbacks, key)
        if stage == StageName.INTERPOLATE:
            return _interpolate(job, run, store, scratch, callbacks, key)
        raise ValueError(f"unknown stage {stage!r}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def describe_device(device: torch.device) -> str:
    """The device as recorded in the job: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"[:64]


def job_manifest(job: Job, checkpoint: Checkpoint, dataset: Dataset | None, run: PreparedRun,
                 commit: str | None) -> dict[str, Any]:
    """The job's ``manifest.json`` (:func:`rift.manifest.build_manifest`) with the job's ids; the
    config is the job's spec as submitted (the worker's own data folder and device override are
    not part of it), the device the one this worker resolved."""
    return build_manifest(
        RiftConfig.model_validate(job.spec), checkpoint_sha256=checkpoint.sha256,
        dataset_sha256=dataset.sha256 if dataset is not None else None,
        device=describe_device(run.device), commit=commit,
        extra={"job_id": job.id, "checkpoint_id": checkpoint.id,
               "dataset_id": dataset.id if dataset is not None else None})


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record(name: str, stored: StoredObject) -> ArtifactRecord:
    return ArtifactRecord(name=name, storage_key=stored.key, size=stored.size,
                          sha256=stored.sha256, content_type=stored.content_type)


def _put_json(store: ObjectStore, key: str, document: dict[str, Any]) -> StoredObject:
    return store.put_bytes(key, json.dumps(document, indent=2).encode("utf-8"),
                           content_type="application/json")


def _metadata(run: PreparedRun, **extra: str) -> dict[str, str]:
    return {"config": run.config.model_dump_json(), **extra}


def _mrc(job: Job, run: PreparedRun, store: ObjectStore, callbacks: PipelineCallbacks,
         key: ObjectKey) -> StageOutputs:
    result = run_mrc_stage(run, callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    return record_mrc(run.config, result, store, key)


def record_mrc(config: RiftConfig, result: MRCStageResult, store: ObjectStore, key: ObjectKey
               ) -> StageOutputs:
    """Store the MRC table (``mrc.json``, ``mrc.csv``) and say what the stage records; used for
    a one-task stage and for the merged table of a sharded one."""
    # The module to tune: the one the user named, else the least critical (RIFT.md, step 1).
    module = config.finetune.module or result.selected_module
    _put_json(store, key(StageName.MRC, MRC_RECORD), result.to_json())
    csv_object = store.put_bytes(key(StageName.MRC, MRC_CSV),
                                 mrc_table_csv(result.rows, module).encode("utf-8"),
                                 content_type="text/csv")
    return StageOutputs(
        mrc_rows=result.rows,
        artifacts=[_record(MRC_CSV, csv_object)],
        selected_module=module,
        metrics={"baseline_robust_loss": result.baseline_robust_loss,
                 "baseline_robust_accuracy": result.baseline_robust_accuracy,
                 "lowest_mrc_module": result.selected_module, "mrc_engine": result.engine,
                 "mrc_examples": result.examples, "mrc_seconds": result.seconds},
        summary={"modules": len(result.rows), "selected_module": module,
                 "seconds": result.seconds},
    )


def _finetune(job: Job, run: PreparedRun, store: ObjectStore, scratch: Path,
              callbacks: PipelineCallbacks, key: ObjectKey) -> StageOutputs:
    module = run.config.finetune.module or job.selected_module
    if module is None:
        raise RuntimeError(f"job {job.id} has no selected module although MRC is done")
    result = run_finetune_stage(run, module, callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    path = scratch / FINETUNED
    checkpoints.save_safetensors(path, result.state_dict,
                                 _metadata(run, kind="finetuned", module=module))
    weights = store.put_file(key(StageName.FINETUNE, FINETUNED), path, content_type=SAFETENSORS)
    _put_json(store, key(StageName.FINETUNE, FINETUNE_RECORD), result.to_json())
    return StageOutputs(
        epochs=result.epochs,
        artifacts=[_record(FINETUNED, weights)],
        selected_module=module,
        metrics={"best_epoch": result.best_epoch, "finetune_seconds": result.seconds},
        summary={"module": module, "epochs": len(result.epochs), "best_epoch": result.best_epoch,
                 "seconds": result.seconds},
    )


def _interpolate(job: Job, run: PreparedRun, store: ObjectStore, scratch: Path,
                 callbacks: PipelineCallbacks, key: ObjectKey) -> StageOutputs:
    finetuned_path = store.download_to(key(StageName.FINETUNE, FINETUNED), scratch / FINETUNED)
    finetuned = checkpoints.load_state_dict(finetuned_path)
    result = run_interpolation_stage(run, finetuned, callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    module = job.selected_module or ""
    path = scratch / TUNED
    checkpoints.save_safetensors(path, result.state_dict, _metadata(
        run, kind="tuned", alpha=repr(result.chosen_alpha), module=module))
    weights = store.put_file(key(StageName.INTERPOLATE, TUNED), path, content_type=SAFETENSORS)

    mrc = MRCStageResult.from_json(json.loads(
        store.get_bytes(key(StageName.MRC, MRC_RECORD))))
    saved = json.loads(store.get_bytes(key(StageName.FINETUNE, FINETUNE_RECORD)))
    finetune = FinetuneStageResult(saved["module"], saved["epochs"], saved["best_epoch"],
                                   saved["seconds"], state_dict={})
    document = {"job_id": job.id,
                **build_result(run.config, mrc, finetune, result, str(run.device))}
    result_object = _put_json(store, key(StageName.INTERPOLATE, RESULT_JSON), document)
    # The report page's charts as files too (drawn by the same torch-free module as the page).
    charts = job_charts([{**row, "module": row["name"]} for row in mrc.rows], module,
                        saved["epochs"], [Curve(module, result.points, result.chosen_alpha)])
    chart_records = [
        _record(CHART_ARTIFACTS[name], store.put_bytes(
            key(StageName.INTERPOLATE, CHART_ARTIFACTS[name]), svg.encode("utf-8"),
            content_type=SVG))
        for name, svg in charts.items()]
    return StageOutputs(
        interpolation_points=result.points,
        artifacts=[_record(TUNED, weights), _record(RESULT_JSON, result_object), *chart_records],
        chosen_alpha=result.chosen_alpha,
        metrics={"before": result.before, "after": result.after,
                 "chosen_alpha": result.chosen_alpha, "selected_module": module,
                 "selection_split": result.selection_split,
                 "interpolation_seconds": result.seconds},
        summary={"chosen_alpha": result.chosen_alpha, "before": result.before,
                 "after": result.after, "seconds": result.seconds},
    )
