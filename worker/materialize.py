"""Make θ_α of a succeeded job at the α a user asked for (``POST /v1/jobs/{id}/materialize``).

θ_AT is the job's uploaded checkpoint as the run held it (``theta_at_in_run_layout``), θ_FT its
recorded ``finetuned.safetensors``; the weights
are :func:`rift.interpolation.interpolate_weights` of the two (α = 0 and 1 copy the end points bit
for bit) saved as ``tuned@<α>.safetensors`` and, when asked, evaluated on the test split by
:func:`rift.pipeline.evaluate_weights`, the helper the interpolation stage measures its
``before``/``after`` with (the same folded copy, random starts and batch back-off).

``should_cancel`` (:class:`worker.runtime.MaterializationLease`) is polled before the weights are
stored and at every evaluation batch: it raises once the worker lost its lease, so a worker whose
request was taken over (or whose job was deleted) stops instead of working on for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persistence.models import Artifact, Checkpoint, Dataset, Job, Materialization
from persistence.scratch_folders import held_scratch_folder
from persistence.stages import ArtifactRecord
from persistence.storage import ObjectStore
from rift import checkpoints
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.checkpoint_layouts import fit_layout
from rift.config import stored_config
from rift.evaluation import AccuracyReport
from rift.interpolation import interpolate_weights, theta_at_in_run_layout
from rift.pipeline import PipelineCallbacks, evaluate_weights
from worker.inputs import fetch_checkpoint
from worker.stages import (
    FINETUNED,
    SAFETENSORS,
    chosen_candidate_metadata,
    job_weights_metadata,
    prepare,
)


@dataclass(frozen=True)
class MaterializedWeights:
    artifact: ArtifactRecord
    #: The test split's evaluation when asked (its accuracies are recorded), else None.
    evaluation: AccuracyReport | None

    @property
    def clean_accuracy(self) -> float | None:
        return self.evaluation.clean_accuracy if self.evaluation is not None else None

    @property
    def robust_accuracy(self) -> float | None:
        return self.evaluation.robust_accuracy if self.evaluation is not None else None


def materialization_key(job_id: str, name: str) -> str:
    """Where the weights of a materialization go in the object store."""
    return f"jobs/{job_id}/materialized/{name}"


def materialize_weights(row: Materialization, job: Job, checkpoint: Checkpoint,
                        dataset: Dataset | None, finetuned: Artifact, store: ObjectStore,
                        work_dir: Path, device: str | None, data_root: Path | None,
                        should_cancel: ShouldCancel | None = None) -> MaterializedWeights:
    """Interpolate, store and (if asked) evaluate; returns the artifact to record."""
    with held_scratch_folder(work_dir / "scratch", prefix=f"{job.id}-alpha-") as scratch:
        # The entry the job tuned (a model and its EMA): θ_AT is that one's weights.
        entry = stored_config(job.spec).checkpoint_entry
        theta_ft = checkpoints.load_state_dict(
            store.download_to(finetuned.storage_key, scratch / FINETUNED))
        # θ_AT as the run held it (the file's fp16 values cast, absent BatchNorm counters 0);
        # a parametrized weight the run folded needs the model, so the run is prepared again.
        saved = checkpoints.load_state_dict(fetch_checkpoint(store, checkpoint, work_dir),
                                            entry=entry)
        # A training wrapper's layout (robustness's, Lightning's): the network's keys, as the
        # run read them (its normaliser was checked when the job prepared its run).
        layout = fit_layout(theta_ft, saved)
        theta_at = theta_at_in_run_layout(saved if layout is None else layout.state_dict,
                                          theta_ft)
        if theta_at is None:
            theta_at = prepare(job, checkpoint, dataset, store, work_dir, device,
                               data_root).original_state
        weights = interpolate_weights(theta_at, theta_ft, row.alpha)
        path = scratch / row.artifact_name
        # The header of the job's own tuned.safetensors, at this α.
        checkpoints.save_safetensors(path, weights, {
            **job_weights_metadata(job, checkpoint.sha256),
            "kind": "tuned", "alpha": repr(row.alpha), "module": job.selected_module or "",
            **chosen_candidate_metadata(job)})
        raise_if_cancelled(should_cancel)
        stored = store.put_file(materialization_key(job.id, row.artifact_name), path,
                                content_type=SAFETENSORS)
        evaluation = None
        if row.evaluate:
            run = prepare(job, checkpoint, dataset, store, work_dir, device, data_root)
            evaluation = evaluate_weights(run, weights,
                                          callbacks=PipelineCallbacks(should_cancel=should_cancel))
        record = ArtifactRecord(name=row.artifact_name, storage_key=stored.key, size=stored.size,
                                sha256=stored.sha256, content_type=stored.content_type)
        return MaterializedWeights(record, evaluation)

