"""Request and response bodies of the API (Pydantic v2). The job spec is the library's own
:class:`rift.config.RiftConfig`: what the API validates is exactly what the workers run."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from persistence.job_warnings import MAX_JOB_WARNINGS
from rift.config import RiftConfig

#: Label keys: letters, digits and ``_ . - /``, starting with a letter or digit (64 at most, the
#: column's width); values: printable text without control characters (255 at most).
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$"
LABEL_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
MAX_LABELS = 32

LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=255, pattern=LABEL_VALUE_PATTERN)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS, description=f"At most {MAX_LABELS} key → value labels."),
]
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
ResourceId = Annotated[str, StringConstraints(pattern=RESOURCE_ID_PATTERN)]
_RESOURCE_ID = re.compile(RESOURCE_ID_PATTERN)


def is_resource_id(value: str) -> bool:
    """Whether ``value`` can be an id of this service (checked before it reaches the database,
    which may refuse odd bytes such as NUL with an error instead of 'not found')."""
    return _RESOURCE_ID.fullmatch(value) is not None


#: The shortest wall-clock limit a job may ask for. Building the run alone (model, data,
#: preflight) takes 0.2 s on the digits demo, so a shorter limit could only fail the job with
#: 'timeout' before it does anything (1e-9 was accepted). The client mirrors it
#: (rift_client.models.MIN_TIME_LIMIT_SECONDS).
MIN_TIME_LIMIT_SECONDS = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------- requests


class JobSpec(_Strict):
    """The job fields of a multipart ``POST /v1/jobs`` (the ``spec`` form field, JSON): the
    checkpoint comes as the ``checkpoint`` file part."""

    dataset_id: ResourceId | None = Field(
        None, description="An uploaded dataset (POST /v1/datasets); config.dataset.name must then "
        "be its kind ('npz' or 'imagefolder') and config.dataset.path is left out.")
    config: RiftConfig
    labels: Labels = Field(default_factory=dict)
    time_limit_seconds: float | None = Field(
        None, ge=MIN_TIME_LIMIT_SECONDS, allow_inf_nan=False,
        description=f"This job's wall-clock limit in seconds, from its first stage's start: at "
        f"least {MIN_TIME_LIMIT_SECONDS:g}, at most the service's JOB_TIME_LIMIT_SECONDS; past it "
        "the job fails with code 'timeout'. None: the service's limit.")


class JobCreate(JobSpec):
    """A JSON ``POST /v1/jobs``: a job on an uploaded checkpoint."""

    checkpoint_id: ResourceId = Field(description="An uploaded checkpoint (POST /v1/checkpoints).")


# -------------------------------------------------------------------------------- responses


#: The formats a checkpoint is stored in (the ``checkpoints.format`` constraint).
CheckpointFormat = Literal["safetensors", "torch"]
#: A job's status, declared as an enum wherever an answer carries one (generated clients get a
#: closed type, not a bare string).
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class CheckpointOut(BaseModel):
    id: str
    filename: str
    size: int = Field(description="Bytes.")
    sha256: str
    format: CheckpointFormat
    num_tensors: int = Field(description="Tensors of its weights (the first entry's when it "
                             "holds several).")
    num_parameters: int = Field(description="Elements over all tensors (buffers included; the "
                                "first entry's when it holds several).")
    entries: list[str] | None = Field(
        None, description="Key paths of the weights entries the file holds, e.g. ['state_dict', "
        "'state_dict_ema'] for a model and its EMA: a job on a file with several names one in "
        "config.checkpoint_entry. [] when its weights are at its top level (always for "
        "safetensors); None for uploads recorded before entries were.")
    created_at: datetime


class DatasetOut(BaseModel):
    id: str = Field(description="The upload's id, or the name of a built-in dataset.")
    kind: Literal["npz", "imagefolder", "builtin"]
    filename: str | None = None
    size: int | None = Field(None, description="Bytes; None for built-in datasets.")
    sha256: str | None = None
    content: Literal["images", "features"] | None = Field(
        None, description="Images, or feature vectors (an npz 'x' of shape N×F); None for "
        "uploads recorded before it was stored.")
    image_shape: list[int] | None = Field(
        None, description="(channels, height, width) when known.")
    num_features: int | None = Field(None, description="Values per feature vector (features).")
    num_classes: int | None = Field(
        None, description="Largest label + 1 (npz), class folders (ImageFolder); a job's "
        "architecture.num_classes must be at least this.")
    num_examples: int | None = Field(None, description="Examples in the file, known at upload: "
                                     "an npz's x and x_test, an ImageFolder's images.")
    label_min: int | None = Field(None, description="Smallest label (train and test).")
    label_max: int | None = Field(None, description="Largest label (train and test).")
    value_min: float | None = Field(
        None, description="Smallest input value of an npz (x and x_test), as jobs read it "
        "(uint8 pixels as value / 255): an explicit attack.domain must hold the values. None "
        "for ImageFolder uploads and for uploads recorded before it was stored.")
    value_max: float | None = Field(None, description="Largest input value, as value_min.")
    channel_value_min: list[float] | None = Field(
        None, description="Each channel's (images) or feature's smallest input value, as "
        "value_min; None also past 1,000 features.")
    channel_value_max: list[float] | None = Field(
        None, description="Each channel's or feature's largest input value, as "
        "channel_value_min.")
    image_sizes_differ: bool | None = Field(
        None, description="An ImageFolder whose images are not all of one size (image_shape "
        "is then the first's): a job must set config.dataset.image_size to resize them. None "
        "for npz uploads and for uploads recorded before it was stored.")
    created_at: datetime | None = None


class CheckpointPageOut(BaseModel):
    items: list[CheckpointOut] = Field(description="The project's checkpoints, newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class DatasetPageOut(BaseModel):
    items: list[DatasetOut] = Field(
        description="The project's uploaded datasets, newest first (built-in ones are not "
        "uploads and are not listed).")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class JobError(BaseModel):
    code: str
    message: str
    field: str | None = Field(
        description="The config setting the error blames (dotted, under the job's config, e.g. "
        "'attack.domain'), as the error responses' field; null when none is blamed or the job "
        "failed before the server kept it.")


class StageOut(BaseModel):
    stage: Literal["mrc", "finetune", "interpolate"]
    status: Literal["pending", "running", "done", "failed", "cancelled"]
    attempts: int = Field(description="Times a worker has started this stage (1 unless retried).")
    started_at: datetime | None
    finished_at: datetime | None


class JobLinks(BaseModel):
    self: str
    events: str
    mrc: str
    curves: str
    artifacts: str
    cancel: str
    report: str | None = Field(None, description="The job's HTML report page.")
    materializations: str | None = Field(
        None, description="Weights made at other α (POST .../materialize to ask for one).")


class JobSummaryOut(BaseModel):
    """A job as lists show it: everything but the config and the stages (see ``JobOut``)."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: Literal["mrc", "finetune", "interpolate"] | None = Field(
        description="The stage running (or next to run); None before the first starts.")
    progress: float = Field(description="Fraction of the current stage done, in [0, 1].")
    progress_message: str | None
    queue_position: int | None = Field(
        description="1 for the next queued job to start; None unless queued.")
    cancel_requested: bool
    checkpoint_id: str
    dataset_id: str | None
    labels: dict[str, str]
    device: str | None = Field(description="Where the worker runs it, e.g. 'cpu' or 'cuda:0'.")
    attempts: int = Field(description="Stage runs by workers over all its stages: 3 for a job whose "
                          "three stages ran once each; more only after retries (each stage's "
                          "own count is in stages[].attempts).")
    selected_module: str | None
    chosen_alpha: float | None
    metrics: dict[str, Any] | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cost_estimate: int | None = Field(
        None, description="Estimated example-passes (forward and backward, all stages), "
        "compared with the project's max_job_cost when the job was created.")
    cost_gflop: float | None = Field(
        None, description="The estimate's compute in GFLOP: forward example-passes times the "
        "model's forward FLOPs on one example plus backward ones times twice that, compared with "
        "the project's max_job_gflop when the job was created; None when the model's FLOPs "
        "could not be counted (the dataset's image size or channels unknown before the job "
        "runs) or the job predates the count.")
    time_limit_seconds: float | None = Field(
        None, description="The job's own wall-clock limit (seconds); None: the service's "
        "JOB_TIME_LIMIT_SECONDS.")
    estimated_finish: datetime | None = Field(
        None, description="When a running job should end, at the pace its earlier stages and "
        "the running stage's progress measured; None when queued, ended or not yet measurable; "
        "shown by GET /v1/jobs/{id}.")
    links: JobLinks


class JobWarningOut(BaseModel):
    """A ``warning`` event of the job (its events hold each one): the run went on, but the
    result may not be what was asked for (no α > 0 kept θ_AT's robustness, a module MRC could
    not score, a preflight finding, a batch that shrank, ...). The same warning written again
    (a retried stage writes it once per attempt) is one item with its ``count``."""

    stage: str | None = Field(
        description="What it concerns: run (the whole run), preflight, mrc, finetune, "
        "interpolate or export (MLflow); null if the event named none. An open set, so not an "
        "enum: a later pipeline may warn about a new stage.")
    candidate: int | None = Field(
        None, description="The sweep candidate it concerns (its index in GET .../curves); null "
        "for the job's own.")
    message: str
    at: datetime = Field(description="When it was first written.")
    count: int = Field(description="Times it was written (1 unless repeated).")


_WARNINGS_DESCRIPTION = (
    "The job's warnings, first written first, repeats counted once; at most "
    f"{MAX_JOB_WARNINGS} (warnings_total says how many there are). Empty: none.")
_WARNINGS_TOTAL_DESCRIPTION = (
    f"Distinct warnings the job has; more than len(warnings) when the list stops at "
    f"{MAX_JOB_WARNINGS} (the job's events hold them all).")


class JobListItemOut(JobSummaryOut):
    config: dict[str, Any] | None = Field(
        None, description="Only with ?expand=config: the job's RiftConfig.")
    stages: list[StageOut] | None = Field(
        None, description="Only with ?expand=stages: the job's stages.")
    warnings: list[JobWarningOut] | None = Field(
        None, description="Only with ?expand=warnings (GET /v1/jobs/{id} always has them): "
        + _WARNINGS_DESCRIPTION)
    warnings_total: int | None = Field(
        None, description="Only with ?expand=warnings: " + _WARNINGS_TOTAL_DESCRIPTION)


class JobOut(JobSummaryOut):
    """A job in full: its stages, its config (defaults filled in) and its warnings."""

    stages: list[StageOut]
    config: dict[str, Any] = Field(description="The job's RiftConfig, defaults filled in.")
    warnings: list[JobWarningOut] = Field(description=_WARNINGS_DESCRIPTION)
    warnings_total: int = Field(description=_WARNINGS_TOTAL_DESCRIPTION)


class JobPageOut(BaseModel):
    items: list[JobListItemOut] = Field(
        description="Summaries, newest first; ?expand=config,stages,warnings adds those "
        "fields.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class EventOut(BaseModel):
    id: int
    kind: str = Field(description=(
        "An open set, so not an enum: job_created, stage_started, stage_finished, warning, "
        "job_succeeded, job_failed, job_cancelled, ... and the pipeline's own (epoch, "
        "module_scored, ...); a client must accept kinds it does not know."))
    payload: dict[str, Any]
    created_at: datetime


class EventPageOut(BaseModel):
    items: list[EventOut]
    next_after: int = Field(description="Pass as ?after= for the events that follow.")
    job_status: JobStatusName
    finished: bool = Field(description="The job has ended: no events will follow these.")


class MRCRowOut(BaseModel):
    position: int
    module: str
    parameters: int
    mrc: float = Field(description="Worst-case robust-loss increase (docs/algorithm.md, step 1).")
    worst_robust_loss: float
    # Not a robust accuracy of θ + Δ: the fixed set is never attacked again (docs/algorithm.md).
    robust_accuracy_at_worst: float | None = Field(
        description="Percent, on the fixed MRC adversarial set made on θ_AT (not attacked again "
        "at the worst perturbation).")
    robust_accuracy_drop: float | None = Field(
        description="Percentage points, on the same fixed set: usually smaller than the drop a "
        "fresh attack of the perturbed network shows.")
    seconds: float | None
    max_ascent_loss: float | None = Field(
        None, description="Largest robust loss after an ascent pass, Δ = 0 not counted (may be "
        "below the baseline); orders modules that tie on MRC (docs/algorithm.md, Selection).")
    passes: int | None = Field(
        None, description="Ascent passes run for this module (null: recorded before it was).")
    exact: bool | None = Field(
        None, description="False: the module was stopped early by mrc.table = 'selection' and "
        "mrc, worst_robust_loss and max_ascent_loss are lower bounds (enough to rule it out); "
        "true or null (recorded before): its own values.")
    zero_gradient: bool | None = Field(
        None, description="True: the module's weight gradient was exactly zero on every MRC "
        "batch (the output does not depend on it): its MRC is 0 by construction and the "
        "selection never chooses it. Null: recorded before the flag was (unknown).")
    selected: bool = Field(description="The module fine-tuned: the lowest MRC, unless "
                           "finetune.module named another or a sweep's rule picked another "
                           "candidate (the job's metrics.lowest_mrc_module names the lowest).")


class MRCTableOut(BaseModel):
    job_id: str
    status: JobStatusName
    selected_module: str | None
    rows: list[MRCRowOut] = Field(description=(
        "In table order. While the MRC stage runs (or once it failed or was cancelled): the "
        "rows scored so far (complete false), each row's position its place in the final "
        "table's order."))
    complete: bool = Field(
        True, description="True: the table the MRC stage recorded. False: the rows scored so "
        "far, from the stage's module_scored events (the stage is running, or the job failed "
        "or was cancelled before it ended); 'selected' is false on every row until the stage "
        "ends.")
    modules_scored: int = Field(0, description="Rows in this answer.")
    modules_total: int | None = Field(
        None, description="Rows the table will have; null before the MRC stage has reported "
        "any module.")


class EpochOut(BaseModel):
    epoch: int
    lr: float | None
    train_loss: float | None
    train_accuracy: float | None = Field(description="Percent.")
    val_accuracy: float | None = Field(
        description="Clean accuracy (%) of the epoch's weights on the split the best epoch is "
        "chosen on (finetune.selection_split): the validation split by default, the test split "
        "under protocol 'reference'.")
    seconds: float | None


class InterpolationPointOut(BaseModel):
    alpha: float
    clean_accuracy: float = Field(description="Percent, on the split the α is chosen on "
                                  "(interpolation.selection_split, in the job's metrics as "
                                  "selection_split): the test split by default, else the "
                                  "validation split; its first evaluation.max_examples.")
    robust_accuracy: float | None = Field(
        description="Percent, under the job's attack; null where it was not measured in full "
        "because it could not change the choice (interpolation.curve 'selection').")
    robust_accuracy_at_most: float | None = Field(
        None, description="Percent, an upper bound: the attack on this α stopped once its count "
        "could no longer change the choice, so robust_accuracy is null. Null for a point "
        "measured in full or never attacked.")
    chosen: bool


class CandidateWeightsOut(BaseModel):
    """A sweep candidate's fine-tuned end point θ_FT. Only the chosen candidate's is kept (the
    job's artifact finetuned.safetensors); the others' are deleted once the sweep picks, their
    size and SHA-256 still given (what the candidate measured)."""

    available: bool = Field(description="Whether the file can be downloaded (from 'url').")
    artifact: str | None = Field(description="The job's artifact holding it "
                                 "(finetuned.safetensors), when available.")
    url: str | None = Field(description="Its download URL, when available.")
    size: int | None = Field(description="Bytes.")
    sha256: str | None
    deleted: bool = Field(description="The file was deleted (another candidate was chosen).")
    reason: str | None = Field(description="Why it cannot be downloaded, when it cannot.")


class CandidateCurveOut(BaseModel):
    """One (module, lr) candidate of a sweep: its fine-tune's outcome and its own curve."""

    index: int = Field(description="Position in the sweep (lowest MRC first, then lr_grid order).")
    module: str
    lr: float
    status: Literal["pending", "running", "done", "failed", "cancelled"] = Field(
        description="'failed': excluded from the pick (see 'reason'), the others still ran.")
    attempts: int
    reason: str | None = Field(
        None, description="Why the candidate was excluded from the pick (its fine-tuning "
        "diverged in the first epoch, so it has no θ_FT and no curve); null otherwise.")
    chosen: bool = Field(description="The candidate the α rule picked across all curves.")
    chosen_alpha: float | None = Field(description="The α this candidate's own curve chose.")
    clean_accuracy: float | None = Field(description="Percent, at chosen_alpha, on the split "
                                         "the α is chosen on (interpolation.selection_split).")
    robust_accuracy: float | None = Field(description="Percent, at chosen_alpha.")
    best_epoch: int | None
    points: list[InterpolationPointOut] = Field(
        description="The candidate's curve; 'chosen' marks its own α.")
    finetuned: CandidateWeightsOut | None = Field(
        None, description="The candidate's fine-tuned weights θ_FT: downloadable for the chosen "
        "candidate only; null while the candidate has not finished.")


class CurvesOut(BaseModel):
    job_id: str
    status: JobStatusName
    selected_module: str | None
    epochs: list[EpochOut]
    interpolation: list[InterpolationPointOut]
    chosen_alpha: float | None
    metrics: dict[str, Any] | None = Field(description="Before/after accuracies and more.")
    candidates: list[CandidateCurveOut] = Field(
        default_factory=list, description="A sweep's candidates side by side (empty for a "
        "one-candidate job); 'epochs' and 'interpolation' above are the chosen one's.")
    chosen_candidate: int | None = Field(
        None, description="Index of the candidate the rule picked, once the sweep is done.")


class ArtifactOut(BaseModel):
    name: str
    size: int = Field(description="Bytes.")
    sha256: str
    content_type: str
    created_at: datetime
    url: str


class ArtifactListOut(BaseModel):
    job_id: str
    items: list[ArtifactOut]


class HealthOut(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    error: str | None = None
    state: Literal["ready", "starting", "failed", "stopped", "schema_ahead"] | None = Field(
        None, description="The validator's: ready, starting, failed or stopped (it starts "
        "with the next upload: a shared server that exited idle, or VALIDATION_WARM_START=false). "
        "The database's: schema_ahead when a newer release migrated it (a rolling deploy; still "
        "ok, error says which revision).")


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckOut]


class StoredBytesOut(BaseModel):
    """Bytes counted against ``max_stored_bytes``; ``used`` is the sum of the parts."""

    used: int = Field(description="What the quota compares with the limit (bytes).")
    limit: int = Field(description="max_stored_bytes: an upload or job taking 'used' past it "
                       "is refused with 413 quota_exceeded.")
    checkpoints: int
    datasets: int
    artifacts: int = Field(description="Job outputs, materialized weights included.")
    reserved_by_active_jobs: int = Field(
        description="What queued and running jobs may still store (their tuned weights and each "
        "fine-tuned candidate's, each the checkpoint's size, less what they stored already).")
    reserved_by_materializations: int = Field(
        description="Queued and running materializations, each the size of its job's θ_FT.")


class ActiveJobsOut(BaseModel):
    used: int = Field(description="Queued and running jobs.")
    limit: int = Field(description="max_active_jobs: a new job beyond it is refused with 429 "
                       "quota_exceeded.")


class PendingMaterializationsOut(BaseModel):
    used: int = Field(description="Queued and running materializations (POST "
                      "/v1/jobs/{id}/materialize).")
    limit: int = Field(description="max_pending_materializations (the MATERIALIZE_MAX_PENDING "
                       "setting, the same for every project): one more is refused with 429 "
                       "quota_exceeded.")


class RequestWindowOut(BaseModel):
    """The project's requests in the current fixed one-minute window, as the rate check counts
    them (this request included, for GET /v1/usage)."""

    used: int | None = Field(description="Requests counted so far in this minute; null when "
                             "the counter cannot be read (Redis down: requests are then let "
                             "through, uncounted).")
    limit: int = Field(description="max_requests_per_minute: the next request past it is "
                       "refused with 429 rate_limited.")
    resets_in_seconds: float = Field(description="Seconds until the window ends and the count "
                                     "starts again from 0.")
    counted_in: Literal["shared", "process"] = Field(
        description="'shared': in Redis, one count for every API process (BROKER_URL is Redis); "
        "'process': in the API process that answered (the embedded mode), whose count and "
        "limit are its own.")


class EventStreamsOut(BaseModel):
    """Open live event streams (GET /jobs/{id}/events as text/event-stream). A stream is a
    connection held by one API process, and the limit is checked there: these are the counts
    of the process that answered this request (with several API processes, each has its own
    count and lets each key open max_streams_per_key streams)."""

    open_by_this_key: int | None = Field(description="Streams the requesting key holds open "
                                         "in this process; null in the admin's view of "
                                         "another project.")
    open_by_project: int = Field(description="Streams every key of the project holds open in "
                                 "this process.")
    limit_per_key: int = Field(description="max_streams_per_key: a key's next stream past it "
                               "is refused with 429 quota_exceeded.")
    counted_in: Literal["process"] = "process"


class UsageOut(BaseModel):
    """A project's usage against its limits, counted as the quota checks count."""

    project: str
    stored_bytes: StoredBytesOut
    active_jobs: ActiveJobsOut
    pending_materializations: PendingMaterializationsOut
    max_job_cost: int = Field(description="Largest cost estimate of one job (example-passes; "
                              "422 cost_limit_exceeded beyond).")
    max_job_gflop: int = Field(description="Largest compute estimate of one job (GFLOP; 422 "
                               "cost_limit_exceeded beyond; not applied to a job whose model's "
                               "FLOPs could not be counted).")
    max_requests_per_minute: int = Field(description="Requests per minute of the whole project "
                                         "(429 rate_limited beyond).")
    max_streams_per_key: int = Field(description="Open event streams per API key.")
    requests_this_minute: RequestWindowOut = Field(
        description="Requests counted against max_requests_per_minute in the current minute.")
    event_streams: EventStreamsOut = Field(
        description="Event streams open now against max_streams_per_key.")


class AuditEventOut(BaseModel):
    """One change and who made it (persistence.audit). Never a secret: a key is named by its
    id and public prefix."""

    id: str
    occurred_at: datetime = Field(description="When the change committed (UTC).")
    project_id: str | None = Field(description="The project changed; kept after its deletion.")
    actor: Literal["api_key", "rift-admin"] = Field(
        description="api_key: a request with an API key; rift-admin: the command line.")
    actor_key_id: str | None = Field(description="The acting key's id (null for rift-admin).")
    actor_key_prefix: str | None = Field(
        description="The acting key's public prefix, rift_<prefix>_… (null for rift-admin).")
    action: str = Field(description="e.g. job.created, job.cancelled, key.revoked, "
                        "project.deleted.")
    resource_kind: str = Field(description="job, checkpoint, dataset, key, project, ...")
    resource_id: str | None
    request_id: str | None = Field(description="The request's X-Request-ID, as the API logs "
                                   "it (null from rift-admin).")
    details: dict[str, Any] | None = Field(description="A few facts of the change, e.g. the "
                                           "limits changed (from, to).")


class AuditEventPageOut(BaseModel):
    items: list[AuditEventOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")
