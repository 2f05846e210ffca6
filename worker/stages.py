"""Run one claimed stage of a job with the library and gather what it records.

Weights and files go to the object store under deterministic keys (``jobs/<id>/...``) before the
stage is marked done, so a stage re-run after a crash overwrites the same objects; the rows and the
artifact records are written by :func:`persistence.stages.finish_stage` in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, wait
from pathlib import Path
from typing import Any

import torch

from persistence.cost import chosen_sweep_lr
from persistence.models import Checkpoint, Dataset, Job, StageName
from persistence.object_keys import stage_object_key
from persistence.stages import ArtifactRecord, StageOutputs
from persistence.storage import ObjectStore, StoredObject
from reporting.charts import CHART_ARTIFACTS, Curve, Splits, job_charts
from rift.config import RiftConfig, stored_config
from rift.manifest import build_manifest
from rift.pipeline import (
    InterpolationStageResult,
    MRCStageResult,
    PipelineCallbacks,
    PreparedRun,
    build_result,
    load_finetune,
    load_finetuned_weights,
    load_mrc,
    module_to_tune,
    mrc_table_csv,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
    run_preflight_stage,
    save_finetune,
    save_interpolation,
    save_mrc,
    splits_fingerprint,
    weights_metadata,
)
from rift.stage_outputs import (
    CURVES_JSON,
    FINETUNED,
    MANIFEST_JSON,
    MRC_CSV,
    RESULT_JSON,
    STAGE_OF_FILE,
    TUNED,
    content_type,
    write_json,
)
from worker.inputs import fetch_checkpoint, fetch_dataset, require_in_data_root

__all__ = ["FINETUNED", "SAFETENSORS", "ObjectStageStorage", "describe_device", "job_manifest",
           "job_stage_storage", "job_weights_metadata", "load_manifest", "prepare",
           "record_interpolation", "record_mrc", "record_winner_table", "run_stage",
           "stage_object_key", "store_manifest"]

SAFETENSORS = "application/octet-stream"
JSON = "application/json"
SVG = "image/svg+xml"

ObjectKey = Callable[[str, str], str]  # (stage, file name) -> key in that stage's recorded attempt


class ObjectStageStorage:
    """The library's stage files (``rift.stage_outputs``) in the object store: each file under its
    stage's attempt key. Remembers what it wrote, for the artifact records.

    With ``writer`` (a thread pool: the worker's, :attr:`worker.runtime.WorkerResources.
    store_writer`), a stage's files are written side by side instead of one after the other: each
    is still written whole and fsynced by the local store, and :attr:`written` (which the records
    are made from) waits for them, so nothing records a file before it is durable. A stage writes
    up to six files; one fsync took 1–5 ms on the shared machine's disk, and five of them in
    parallel about as long as one (measured: 26 ms one after the other, 2.3 ms side by side). Without
    ``writer``, each write is made on the caller's thread."""

    def __init__(self, store: ObjectStore, key: ObjectKey, writer: Executor | None = None
                 ) -> None:
        self.store, self.key, self._writer = store, key, writer
        self._pending: dict[str, Future[StoredObject]] = {}
        self._written: dict[str, StoredObject] = {}

    def _key(self, name: str) -> str:
        return self.key(STAGE_OF_FILE[name], name)

    def _put(self, key: str, data: bytes, content_type: str) -> Future[StoredObject]:
        if self._writer is not None:
            return self._writer.submit(self.store.put_bytes, key, data,
                                       content_type=content_type)
        done: Future[StoredObject] = Future()
        done.set_result(self.store.put_bytes(key, data, content_type=content_type))
        return done

    @property
    def written(self) -> dict[str, StoredObject]:
        """The library's files written (waits for those still being written; the first error
        of one is raised once all have ended)."""
        pending, self._pending = self._pending, {}
        wait(pending.values())
        for name, future in pending.items():
            self._written[name] = future.result()
        return self._written

    def read_bytes(self, name: str) -> bytes | None:
        if name in self._pending:
            self.written  # noqa: B018 - a file being written is read once it is
        key = self._key(name)
        return self.store.get_bytes(key) if self.store.exists(key) else None

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None:
        self._pending[name] = self._put(self._key(name), data, content_type)

    def write_extra(self, stage: str, name: str, data: bytes, content_type: str
                    ) -> Future[StoredObject]:
        """A file beside the library's stage files (manifest, charts), under ``stage``'s key;
        its ``result()`` is the stored object once written."""
        return self._put(self.key(stage, name), data, content_type)


def job_stage_storage(store: ObjectStore, job_id: str, attempts: Mapping[str, int],
                      writer: Executor | None = None) -> ObjectStageStorage:
    """The job's stage files, each stage's under its attempt in ``attempts`` (stage -> claim);
    ``writer``: see :class:`ObjectStageStorage`."""
    return ObjectStageStorage(store, lambda stage, name: stage_object_key(
        job_id, stage, attempts[stage], name), writer)


def job_config(job: Job, *, dataset_path: Path | None, device: str | None,
               data_root: Path | None = None) -> RiftConfig:
    """The job's config as the worker runs it: an uploaded dataset's local path filled in, built-in
    datasets read from the worker's ``data_root`` (never a folder the client named, never a
    download), and the device overridden when the worker is told to use a particular one."""
    config = stored_config(job.spec)
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
    """Fetch the job's inputs and build the run (model with θ_AT, data, device).
    :class:`worker.inputs.DatasetNotInDataRoot` first when a built-in dataset is not in
    ``data_root``."""
    if dataset is None and data_root is not None:
        require_in_data_root(stored_config(job.spec).dataset.name, data_root)
    checkpoint_path = fetch_checkpoint(store, checkpoint, work_dir)
    dataset_path = fetch_dataset(store, dataset, work_dir) if dataset is not None else None
    config = job_config(job, dataset_path=dataset_path, device=device, data_root=data_root)
    run = prepare_run(config, checkpoint_path)
    run.checkpoint_sha256 = checkpoint.sha256
    return run


def run_stage(stage: str, job: Job, run: PreparedRun, store: ObjectStore, work_dir: Path,
              callbacks: PipelineCallbacks, attempts: Mapping[str, int],
              manifest: Mapping[str, Any] | None = None, writer: Executor | None = None
              ) -> StageOutputs:
    """Run ``stage`` and store its files; returns what :func:`finish_stage` records.

    ``attempts`` maps each stage to its latest claim: this stage's own attempt, and for the
    stages already done, the attempt whose outputs were recorded. Stage files go through the
    library's codec (``rift.stage_outputs``) straight to the store, so ``work_dir`` holds nothing
    of this stage. ``manifest`` (see :func:`job_manifest`) is stored with the first stage's
    outputs. ``writer``: a thread pool that writes the stage's files side by side
    (:class:`ObjectStageStorage`)."""

    storage = job_stage_storage(store, job.id, attempts, writer)
    if stage == StageName.MRC:
        return _mrc(job, run, storage, callbacks, manifest)
    if stage == StageName.FINETUNE:
        return _finetune(job, run, storage, callbacks)
    if stage == StageName.INTERPOLATE:
        return _interpolate(job, run, storage, callbacks)
    raise ValueError(f"unknown stage {stage!r}")


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
        stored_config(job.spec), checkpoint_sha256=checkpoint.sha256,
        dataset_sha256=dataset.sha256 if dataset is not None else None,
        splits_sha256=splits_fingerprint(run.splits), device=describe_device(run.device),
        commit=commit,
        extra={"job_id": job.id, "checkpoint_id": checkpoint.id,
               "dataset_id": dataset.id if dataset is not None else None})


def store_manifest(storage: ObjectStageStorage, manifest: Mapping[str, Any]) -> ArtifactRecord:
    """Store the job's ``manifest.json`` among the MRC stage's files; returns its record."""
    return _record(MANIFEST_JSON, _write_manifest(storage, manifest).result())


def _write_manifest(storage: ObjectStageStorage, manifest: Mapping[str, Any]
                    ) -> Future[StoredObject]:
    return storage.write_extra(StageName.MRC, MANIFEST_JSON, _json(manifest), JSON)


def load_manifest(storage: ObjectStageStorage) -> dict[str, Any] | None:
    """The ``manifest.json`` stored earlier among the MRC stage's files (by the prepare step of a
    sharded MRC stage, for the merge to complete and record), or None when there is none (shards
    sent by a worker that did not store it)."""
    key = storage.key(StageName.MRC, MANIFEST_JSON)
    if not storage.store.exists(key):
        return None
    document = json.loads(storage.store.get_bytes(key))
    return document if isinstance(document, dict) else None


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(document), indent=2).encode("utf-8")


def _record(name: str, stored: StoredObject) -> ArtifactRecord:
    return ArtifactRecord(name=name, storage_key=stored.key, size=stored.size,
                          sha256=stored.sha256, content_type=stored.content_type)


def job_weights_metadata(job: Job, checkpoint_sha256: str | None) -> dict[str, str]:
    """The header of the job's weights files (:func:`rift.pipeline.weights_metadata`) with the
    job's id."""
    # The job's config as submitted (as manifest.json holds it), not run.config: that one has
    # this worker's device and data folder in it.
    return {**weights_metadata(stored_config(job.spec), checkpoint_sha256=checkpoint_sha256),
            "job_id": job.id}


def chosen_candidate_metadata(job: Job) -> dict[str, str]:
    """The header entries naming a sweep's chosen candidate beyond its module: ``lr``, as the
    interpolate stage writes it into ``tuned.safetensors`` (empty for a one-candidate job, whose
    rate is the config's ``finetune.lr``)."""
    lr = chosen_sweep_lr(job.metrics)
    return {"lr": repr(lr)} if lr is not None else {}


def _mrc(job: Job, run: PreparedRun, storage: ObjectStageStorage,
         callbacks: PipelineCallbacks, manifest: Mapping[str, Any] | None) -> StageOutputs:
    # First thing in the job: a checkpoint near chance on the job's data fails it here.
    preflight = run_preflight_stage(run, callbacks)
    result = run_mrc_stage(run, callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    # Sent before the table's files, so that all three are written side by side.
    stored = _write_manifest(storage, manifest) if manifest is not None else None
    outputs = record_mrc(run.config, result, storage,
                         preflight.as_dict() if preflight is not None else None)
    if stored is not None:
        outputs.artifacts = [*outputs.artifacts, _record(MANIFEST_JSON, stored.result())]
    return outputs


def record_mrc(config: RiftConfig, result: MRCStageResult, storage: ObjectStageStorage,
               preflight: Mapping[str, Any] | None = None) -> StageOutputs:
    """Store the MRC table (``mrc.json``, ``mrc.csv``) and say what the stage records; used for
    a one-task stage and for the merged table of a sharded one."""
    module = module_to_tune(config, result)
    save_mrc(storage, result, module)
    return StageOutputs(
        mrc_rows=result.rows,
        artifacts=[_record(MRC_CSV, storage.written[MRC_CSV])],
        selected_module=module,
        metrics={"baseline_robust_loss": result.baseline_robust_loss,
                 "baseline_robust_accuracy": result.baseline_robust_accuracy,
                 "lowest_mrc_module": result.selected_module, "mrc_engine": result.engine,
                 "mrc_examples": result.examples, "mrc_seconds": result.seconds,
                 "preflight": dict(preflight) if preflight is not None else None},
        summary={"modules": len(result.rows), "selected_module": module,
                 "seconds": result.seconds},
    )


def record_winner_table(storage: ObjectStageStorage, module: str) -> ArtifactRecord:
    """``mrc.csv`` again with ``module``, a sweep's winner, flagged (the MRC stage flagged the
    least critical module before the candidates ran), as the library's ``run_sweep`` rewrites
    it; returns its record, which replaces the MRC stage's ``mrc.csv`` artifact row. Stored
    under the fine-tune stage's attempt, not over the MRC stage's object: that one keeps the
    bytes its recorded digest describes until the new record is committed, and a pick made
    again writes the same bytes to the same key."""
    mrc = load_mrc(storage)
    if mrc is None:
        raise RuntimeError("mrc.json is missing although the MRC stage is done")
    stored = storage.write_extra(StageName.FINETUNE, MRC_CSV,
                                 mrc_table_csv(mrc.rows, module).encode("utf-8"),
                                 content_type(MRC_CSV))
    return _record(MRC_CSV, stored.result())


def _finetune(job: Job, run: PreparedRun, storage: ObjectStageStorage,
              callbacks: PipelineCallbacks) -> StageOutputs:
    module = run.config.finetune.module or job.selected_module
    if module is None:
        raise RuntimeError(f"job {job.id} has no selected module although MRC is done")
    result = run_finetune_stage(run, module, callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    save_finetune(storage, result, job_weights_metadata(job, run.checkpoint_sha256))
    return StageOutputs(
        epochs=result.epochs,
        artifacts=[_record(FINETUNED, storage.written[FINETUNED])],
        selected_module=module,
        metrics={"best_epoch": result.best_epoch, "finetune_seconds": result.seconds,
                 # Training stopped at a diverged epoch and kept an earlier one (its warning
                 # event says the same).
                 **({"finetune_diverged": result.diverged} if result.diverged else {})},
        summary={"module": module, "epochs": len(result.epochs), "best_epoch": result.best_epoch,
                 "seconds": result.seconds, "diverged": result.diverged},
    )


def _interpolate(job: Job, run: PreparedRun, storage: ObjectStageStorage,
                 callbacks: PipelineCallbacks) -> StageOutputs:
    result = run_interpolation_stage(run, load_finetuned_weights(storage), callbacks)
    callbacks.check_cancel()  # a worker that lost its lease meanwhile writes nothing
    module = job.selected_module or ""
    return record_interpolation(job, run, storage, result,
                                [Curve(module, result.points, result.chosen_alpha)])


def record_interpolation(job: Job, run: PreparedRun, storage: ObjectStageStorage,
                         result: InterpolationStageResult, curves: Sequence[Curve],
                         sweep: Mapping[str, Any] | None = None,
                         metadata: Mapping[str, str] | None = None) -> StageOutputs:
    """Store θ_α*, ``result.json`` and the charts (``curves`` drawn side by side, the chosen one
    first), and say what the interpolate stage records. ``sweep``: the ``curves.json`` document
    of a sweep (``rift.sweep.curves_document``), stored and added to ``result.json``."""
    module = job.selected_module or ""
    mrc = load_mrc(storage)
    finetune = load_finetune(storage, with_weights=False)
    if mrc is None or finetune is None:
        raise RuntimeError(f"job {job.id}: the MRC or fine-tune record is missing although both "
                           "stages are done")
    preflight = (job.metrics or {}).get("preflight")
    # The job's config as submitted, as manifest.json and the job hold it: run.config has this
    # worker's data folder (and device) in it, which a new job refuses ("'root' is not
    # accepted"), so result.json's config could not be submitted again.
    document = {"job_id": job.id, **build_result(stored_config(job.spec), mrc, finetune,
                                                 result, str(run.device), preflight)}
    extra: list[ArtifactRecord] = []
    if sweep is not None:
        document["sweep"] = dict(sweep)
        write_json(storage, CURVES_JSON, dict(sweep))
        extra.append(_record(CURVES_JSON, storage.written[CURVES_JSON]))
    save_interpolation(storage, result,
                       {**job_weights_metadata(job, run.checkpoint_sha256), **(metadata or {})},
                       module, document)
    # The report page's charts as files too (drawn by the same torch-free module as the page).
    charts = job_charts([{**row, "module": row["name"]} for row in mrc.rows], module,
                        finetune.epochs, curves,
                        Splits(run.config.interpolation.selection_split,
                               run.config.finetune.selection_split))
    stored_charts = {  # all sent before any is waited for
        CHART_ARTIFACTS[name]: storage.write_extra(StageName.INTERPOLATE, CHART_ARTIFACTS[name],
                                                   svg.encode("utf-8"), SVG)
        for name, svg in charts.items()}
    written = storage.written
    chart_records = [_record(name, stored.result()) for name, stored in stored_charts.items()]
    return StageOutputs(
        interpolation_points=result.points,
        artifacts=[_record(TUNED, written[TUNED]), _record(RESULT_JSON, written[RESULT_JSON]),
                   *extra, *chart_records],
        chosen_alpha=result.chosen_alpha,
        metrics={"before": result.before, "after": result.after,
                 "chosen_alpha": result.chosen_alpha, "selected_module": module,
                 "selection_split": result.selection_split,
                 "interpolation_seconds": result.seconds},
        summary={"chosen_alpha": result.chosen_alpha, "before": result.before,
                 "after": result.after, "seconds": result.seconds},
    )
