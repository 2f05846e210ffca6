"""Optional export of a finished job to MLflow (``MLFLOW_TRACKING_URI`` set; the ``mlflow``
extra installed): one run per job in ``MLFLOW_EXPERIMENT`` with

- params: the job's config flattened (``finetune.lr``...), the selected module, the chosen α
  and, for a sweep, the chosen candidate's rate (``selected_lr``);
- metrics: before/after accuracies, MRC per module (``mrc.<module>``), the fine-tuning curve
  (step = epoch) and the interpolation curve (step = α × 10,000, as MLflow steps are integers:
  one step per point of the finest α grid, ``interpolation.alpha_step`` 1e-4); for a sweep,
  every candidate's curve too (``sweep.candidate_NN.clean_accuracy``, ``.robust_accuracy``,
  ``.lr``; modules and rates in the run's ``curves.json``);
- artifacts: the job's files (MRC CSV, result, manifest, charts) and the tuned weights;
- tags: ``rift.job_id``, ``rift.project_id``, ``rift.checkpoint_sha256``,
  ``rift.selected_module`` (and a sweep's ``rift.selected_lr``) and each of the job's labels as
  ``rift.label.<key>``;
- a new version of the registered model ``MLFLOW_MODEL_NAME`` whose source is the logged weights,
  tagged with ``job_id``, ``project_id``, ``checkpoint_sha256``, ``chosen_alpha``,
  ``selected_module`` (a sweep's ``selected_lr``), ``config_sha256`` and ``rift_version`` (the
  weights' own header's).

One run and one version per job: exporting a job again (a redelivered task, an operator's retry)
finds the finished run tagged with its id and returns it, registering the version only if the
run has none yet. MLflow's HTTP retries and timeout come from the target
(``MLFLOW_HTTP_MAX_RETRIES``, ``MLFLOW_HTTP_TIMEOUT_SECONDS``).

No model flavour (mlflow.pytorch) is needed: the weights are a safetensors file. The worker calls
:func:`export_job` after the job has succeeded; a failure only adds a ``warning`` event.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.cost import chosen_sweep_lr
from persistence.jobs import (
    get_epoch_metrics,
    get_interpolation_points,
    get_mrc_rows,
    get_sweep_candidates,
    list_artifacts,
)
from persistence.models import Checkpoint, Job, JobLabel, SweepCandidate
from persistence.scratch_folders import held_scratch_folder
from persistence.storage import ObjectStore

TUNED = "tuned.safetensors"
WEIGHTS_DIR = "weights"
#: MLflow refuses params longer than this (characters); longer values are cut.
MAX_PARAM_CHARS = 6000
#: MLflow refuses metric keys longer than this (characters).
MAX_METRIC_KEY_CHARS = 250
#: A character MLflow accepts in a metric key besides ``/`` (its pattern ``[/\w.\- :]``, less
#: ``:``, which it refuses on Windows).
_KEY_CHAR = re.compile(r"[\w.\- ]")
#: Interpolation steps per unit of α: α values of a grid differ by alpha_step ≥ 1e-4
#: (``rift.config.InterpolationSpec``), so each point gets its own step. With 1000, a 0.0005
#: grid logged α = 0.0005 at step 0, over α = 0.
ALPHA_STEPS = 10_000


@dataclass(frozen=True)
class MlflowTarget:
    tracking_uri: str
    experiment: str
    model_name: str
    artifact_location: str | None = None
    #: MLflow's per-request retries and timeout (seconds); see the settings of the same names.
    http_max_retries: int = 2
    http_timeout_seconds: int = 30


@dataclass
class JobExport:
    """Everything exported for one job (files already on local disk)."""

    job_id: str
    checkpoint_sha256: str
    config: Mapping[str, Any]
    selected_module: str | None
    chosen_alpha: float | None
    metrics: Mapping[str, Any]
    mrc_rows: Sequence[Mapping[str, Any]]
    epochs: Sequence[Mapping[str, Any]]
    points: Sequence[Mapping[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)  # artifact name -> local path
    project_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The tuned weights' header (``rift.pipeline.weights_metadata``): its config and library
    #: version digests go on the model version.
    weights_metadata: Mapping[str, str] = field(default_factory=dict)
    #: A sweep's candidates in its order: ``index``, ``module``, ``lr``, ``excluded`` and the
    #: curve's ``points`` (empty for one excluded or not run); none for a one-candidate job.
    candidates: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    model_name: str
    model_version: str


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (lists as JSON)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def metric_key(prefix: str, module: str) -> str:
    """``prefix.module`` as a metric key MLflow accepts, distinct for distinct modules.

    MLflow refuses a key with characters other than alphanumerics and ``_-. /``, one longer than
    250 characters, and one that is not its own normalised path (``a//b``, ``blocks/0/``, a
    ``.`` or ``..`` segment); any of them in a module name (the uploaded model chooses them)
    failed the whole export. Such characters and segments become ``_`` and an overlong key keeps
    its tail (the end of a module path tells modules apart); a key changed so gets ``-`` and 8
    hex digits of the name's SHA-256, so two names changed alike stay two metrics. The names as
    they are: the run's ``mrc_table.json``."""
    segments = ("".join(c if _KEY_CHAR.fullmatch(c) else "_" for c in segment)
                for segment in module.split("/"))
    safe = "/".join(s if s not in ("", ".", "..") else "_" for s in segments)
    key = f"{prefix}.{safe}"
    if safe == module and len(key) <= MAX_METRIC_KEY_CHARS:
        return key
    digest = "-" + hashlib.sha256(module.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    room = MAX_METRIC_KEY_CHARS - len(prefix) - 1 - len(digest)
    return f"{prefix}.{safe[-room:]}{digest}"


def gather_job(session: Session, store: ObjectStore, job_id: str, directory: Path) -> JobExport:
    """Read a finished job's rows and download its artifacts into ``directory``."""
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    checkpoint = session.get(Checkpoint, job.checkpoint_id)
    files: dict[str, Path] = {}
    for artifact in list_artifacts(session, job_id):
        if artifact.name == "finetuned.safetensors" or "@" in artifact.name:
            continue  # the fine-tuned end point and other α stay in the service
        if artifact.name == "curves.json":
            continue  # a sweep's curves: in result.json["sweep"]; the name is the run's own file
        files[artifact.name] = store.download_to(artifact.storage_key, directory / artifact.name)
    labels = {key: value for key, value in session.execute(
        select(JobLabel.key, JobLabel.value).where(JobLabel.job_id == job_id))}
    tuned = files.get(TUNED)
    return JobExport(
        job_id=job.id, project_id=job.project_id, labels=labels,
        weights_metadata=_safetensors_header(tuned) if tuned is not None else {},
        checkpoint_sha256=checkpoint.sha256 if checkpoint else "",
        config=job.spec, selected_module=job.selected_module, chosen_alpha=job.chosen_alpha,
        metrics=job.metrics or {},
        mrc_rows=[{"module": r.module, "mrc": r.mrc, "robust_accuracy_drop": r.robust_accuracy_drop,
                   "exact": r.exact, "zero_gradient": r.zero_gradient}
                  for r in get_mrc_rows(session, job_id)],
        epochs=[{"epoch": e.epoch, "train_loss": e.train_loss, "train_accuracy": e.train_accuracy,
                 "val_accuracy": e.val_accuracy} for e in get_epoch_metrics(session, job_id)],
        points=[{"alpha": p.alpha, "clean_accuracy": p.clean_accuracy,
                 "robust_accuracy": p.robust_accuracy}
                for p in get_interpolation_points(session, job_id)],
        candidates=[_candidate_curve(row) for row in get_sweep_candidates(session, job_id)],
        files=files)


def _candidate_curve(row: SweepCandidate) -> dict[str, Any]:
    """A sweep candidate as the run logs it: its curve from its recorded outcome."""
    outcome = (row.result or {}).get("outcome") or {}
    return {"index": row.candidate, "module": row.module, "lr": row.lr,
            "excluded": bool(outcome.get("excluded")),
            "points": [{"alpha": p["alpha"], "clean_accuracy": p["clean_accuracy"],
                        "robust_accuracy": p.get("robust_accuracy")}
                       for p in outcome.get("points", [])]}


def _safetensors_header(path: Path) -> dict[str, str]:
    """The str→str metadata of a safetensors file (its JSON header's ``__metadata__``), read
    without torch: the 8-byte little-endian header length, then the header."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size)) if 0 < size <= 100_000_000 else {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def chosen_lr(export: JobExport) -> str | None:
    """A sweep's chosen learning rate as text, or None for a one-candidate job. The flattened
    config alone names the whole ``lr_grid`` and a ``finetune.lr`` the sweep did not use, so the
    rate that made the weights is logged beside the selected module."""
    lr = chosen_sweep_lr(export.metrics)
    return repr(lr) if lr is not None else None


def _use_http_limits(target: MlflowTarget) -> None:
    """MLflow reads its HTTP retries and timeout from the environment at every request and has
    no per-client option, so the exporting worker sets them there (its own process only)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(target.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(target.http_timeout_seconds)


def _label_tag(key: str) -> str:
    """A label's run tag: ``rift.label.<key>``, with characters MLflow refuses in a tag key
    (as in a metric key) as ``_``."""
    return "rift.label." + "".join(c if _KEY_CHAR.fullmatch(c) or c == "/" else "_" for c in key)


def export_to_mlflow(target: MlflowTarget, export: JobExport) -> ExportResult:
    """Log one job as an MLflow run and register its tuned weights as a new model version; a
    job exported before (a finished run tagged with its id) is returned as it is."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _use_http_limits(target)
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    experiment = client.get_experiment_by_name(target.experiment)
    experiment_id = (experiment.experiment_id if experiment is not None else
                     client.create_experiment(target.experiment,
                                              artifact_location=target.artifact_location))
    # Job ids are hex: nothing to quote in the filter.
    done = client.search_runs([experiment_id], max_results=1,
                              filter_string=f"tags.`rift.job_id` = '{export.job_id}' "
                                            "and attributes.status = 'FINISHED'")
    run = done[0] if done else _log_run(client, experiment_id, export)
    run_id = run.info.run_id

    try:
        client.create_registered_model(target.model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # By run id alone (hex: nothing to quote), the name compared here: a model name holding a
    # quote or a backslash, quoted into the filter, matched nothing, and each export of the job
    # made one more version.
    existing = [v for v in client.search_model_versions(f"run_id = '{run_id}'")
                if v.name == target.model_name]
    if existing:
        return ExportResult(run_id, target.model_name, str(existing[0].version))
    source = f"{run.info.artifact_uri.rstrip('/')}/{WEIGHTS_DIR}"
    header = export.weights_metadata
    version = client.create_model_version(
        target.model_name, source=source, run_id=run_id,
        tags={"job_id": export.job_id, "project_id": str(export.project_id),
              "checkpoint_sha256": export.checkpoint_sha256,
              "chosen_alpha": str(export.chosen_alpha),
              "selected_module": str(export.selected_module),
              **({"selected_lr": lr} if (lr := chosen_lr(export)) is not None else {}),
              **{key: header[key] for key in ("config_sha256", "rift_version", "architecture",
                                              "num_classes") if key in header}},
        description=f"RiFT job {export.job_id}: tuned weights ({TUNED})")
    return ExportResult(run_id, target.model_name, str(version.version))


def _log_run(client: Any, experiment_id: str, export: JobExport) -> Any:
    """A new run holding the job's params, metrics and artifacts, FINISHED (FAILED, and the
    error raised, when logging fails)."""
    from mlflow.entities import Param, RunTag

    tags = {"rift.job_id": export.job_id, "rift.checkpoint_sha256": export.checkpoint_sha256,
            **({"rift.project_id": export.project_id} if export.project_id else {}),
            **{_label_tag(key): value for key, value in export.labels.items()}}
    run = client.create_run(experiment_id, run_name=f"rift-{export.job_id}", tags=tags)
    run_id = run.info.run_id
    try:
        params = flatten(export.config)
        params["selected_module"] = str(export.selected_module)
        params["chosen_alpha"] = str(export.chosen_alpha)
        chosen = {"selected_module": str(export.selected_module)}
        if (lr := chosen_lr(export)) is not None:
            params["selected_lr"] = chosen["selected_lr"] = lr
        metrics = _metrics(export)
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(f"rift.{k}", v) for k, v in chosen.items()])
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 per batch
            client.log_batch(run_id, metrics=metrics[start:start + 900])
        client.log_text(run_id, json.dumps(list(export.mrc_rows), indent=2), "mrc_table.json")
        client.log_text(run_id, json.dumps({"epochs": list(export.epochs),
                                            "interpolation": list(export.points),
                                            **({"candidates": list(export.candidates)}
                                               if export.candidates else {})}, indent=2),
                        "curves.json")
        for name, path in export.files.items():
            client.log_artifact(run_id, str(path),
                                WEIGHTS_DIR if name == TUNED else None)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run


def _metrics(export: JobExport) -> list[Any]:
    from mlflow.entities import Metric

    timestamp = 0
    found: list[Metric] = []

    def add(key: str, value: Any, step: int = 0) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(Metric(key, float(value), timestamp, step))

    for when in ("before", "after"):
        for key, value in (export.metrics.get(when) or {}).items():
            add(f"{when}.{key}", value)
    for row in export.mrc_rows:
        module = str(row["module"])
        # A row stopped early by mrc.table = "selection": its MRC is a lower bound, and its drop
        # is where the ascent stopped, neither the module's value (as on the report page).
        stopped = row.get("exact") is False
        # A row flagged zero_gradient: MRC 0 by construction, never chosen; under mrc.* it read
        # as the lowest, the module to tune.
        name = ("mrc_zero_gradient" if row.get("zero_gradient")
                else "mrc_at_least" if stopped else "mrc")
        add(metric_key(name, module), row["mrc"])
        add(metric_key("robust_accuracy_drop_at_stop" if stopped else "robust_accuracy_drop",
                       module), row["robust_accuracy_drop"])
    for epoch in export.epochs:
        for key in ("train_loss", "train_accuracy", "val_accuracy"):
            add(f"finetune.{key}", epoch[key], int(epoch["epoch"]))
    for point in export.points:
        step = round(float(point["alpha"]) * ALPHA_STEPS)
        add("interpolation.clean_accuracy", point["clean_accuracy"], step)
        add("interpolation.robust_accuracy", point["robust_accuracy"], step)
    # Every candidate's curve beside the winner's (which the keys above hold), under its index
    # in the sweep's order; its module and rate are in the run's curves.json and its rate also
    # a metric (params are capped per batch, and a sweep has up to 16 candidates).
    for candidate in export.candidates:
        prefix = f"sweep.candidate_{int(candidate['index']):02d}"
        add(f"{prefix}.lr", candidate["lr"])
        for point in candidate["points"]:
            step = round(float(point["alpha"]) * ALPHA_STEPS)
            add(f"{prefix}.clean_accuracy", point["clean_accuracy"], step)
            add(f"{prefix}.robust_accuracy", point["robust_accuracy"], step)
    return found


def uri_secrets(uri: str) -> list[str]:
    """What of a URI must not be shown: its user info (``user:password``, or a token alone as
    the user), the password, and each as written and percent-decoded; longest first."""
    parts = urlsplit(uri)
    userinfo = parts.netloc.rpartition("@")[0]
    found = {userinfo, unquote(userinfo)}
    if parts.password:
        found |= {parts.password, unquote(parts.password)}
    return sorted((secret for secret in found if secret), key=len, reverse=True)


def export_failure_message(exc: BaseException, tracking_uri: str) -> str:
    """The job's ``warning`` event for a failed export: the error's first line, with the
    tracking URI's credentials as ``***``. MLflow's HTTP errors quote the request's whole URL
    ("API request to http://user:password@host/api/2.0/... failed"), and the event is read by
    every key of the job's project."""
    text = (str(exc).splitlines() or [""])[0]
    for secret in uri_secrets(tracking_uri):
        text = text.replace(secret, "***")
    return (f"the job succeeded but its export to MLflow failed: {type(exc).__name__}: "
            f"{text[:300]}")


def export_job(target: MlflowTarget, session_factory: Any, store: ObjectStore, job_id: str,
               work_dir: Path) -> ExportResult:
    """Gather a job from the database and store, and export it (files in a scratch folder)."""
    with held_scratch_folder(work_dir / "scratch", prefix=f"{job_id}-mlflow-") as directory:
        with session_factory() as session:
            export = gather_job(session, store, job_id, directory)
        return export_to_mlflow(target, export)
