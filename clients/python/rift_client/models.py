"""Typed views of the API's resources, mirroring the service's response bodies (``api/schemas.py``).

Fields the service adds later are ignored rather than refused, so an older client keeps working
against a newer service. Statuses are plain strings (the known values are listed in the constants
below) for the same reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

#: Job statuses; a job in one of TERMINAL_STATUSES changes no more.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: Materialization statuses are queued, running, succeeded or failed; these two are final.
MATERIALIZATION_TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED})
#: The statuses this client knows to be still moving: a status outside these and the terminal
#: ones came from a newer server, which is read as ended when the record has a ``finished_at``.
_MOVING_STATUSES = frozenset({QUEUED, RUNNING})


def _has_ended(status: str, terminal: frozenset[str], finished_at: datetime | None) -> bool:
    """Whether a record in ``status`` changes no more. A status this release does not know (a
    newer server's) counts as ended once the server stamped ``finished_at``, the one field
    every ended record carries, so a wait on it returns instead of running to its timeout."""
    if status in terminal:
        return True
    return status not in _MOVING_STATUSES and finished_at is not None
#: The shortest ``time_limit_seconds`` a job may ask for: the service's
#: ``api.schemas.MIN_TIME_LIMIT_SECONDS`` (a shorter one would only time the job out while it
#: starts).
MIN_TIME_LIMIT_SECONDS = 1.0


class _Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    #: The ``ETag`` the service answered a ``get_*`` of this resource with; not a field of the
    #: body, so not part of the model's value (equality, hashing, dumps ignore it).
    _etag: str | None = PrivateAttr(default=None)

    @property
    def etag(self) -> str | None:
        """The ETag the resource was read with (a ``get_*`` answer; None for list items and
        answers to writes): pass it as ``if_match=`` to a delete that must not act on a
        resource changed since it was read."""
        return self._etag

    def __eq__(self, other: object) -> bool:
        # Two reads of the same resource are equal whether or not one carried its ETag.
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (type(self) is type(other) and self.__dict__ == other.__dict__
                and self.__pydantic_extra__ == other.__pydantic_extra__)

    __hash__ = BaseModel.__hash__


class Checkpoint(_Resource):
    id: str
    filename: str
    size: int = Field(description="Bytes.")
    sha256: str
    format: str = Field(description="'safetensors' or 'torch'.")
    num_tensors: int
    num_parameters: int
    entries: list[str] | None = Field(
        None, description="Key paths of the weights entries in the file (a model and its EMA); "
        "a job on a file with several names one in config['checkpoint_entry'].")
    created_at: datetime


class Dataset(_Resource):
    id: str
    kind: str = Field(description="'npz', 'imagefolder' or 'builtin'.")
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None
    content: str | None = Field(None, description="'images' or 'features' (an npz of N×F).")
    image_shape: list[int] | None = None
    num_features: int | None = None
    num_classes: int | None = None
    num_examples: int | None = None
    label_min: int | None = None
    label_max: int | None = None
    value_min: float | None = Field(None, description="Smallest input value (uint8 pixels as "
                                    "value / 255); an explicit attack.domain must hold it.")
    value_max: float | None = None
    channel_value_min: list[float] | None = Field(
        None, description="Per channel (images) or feature (up to 1,000).")
    channel_value_max: list[float] | None = None
    image_sizes_differ: bool | None = None
    created_at: datetime | None = None


class CheckpointPage(_Resource):
    items: list[Checkpoint]
    next_cursor: str | None = None


class DatasetPage(_Resource):
    items: list[Dataset] = Field(description="Uploaded datasets only (built-in ones are not "
                                 "listed).")
    next_cursor: str | None = None


class AuditEvent(_Resource):
    """One change and who made it (``GET /v1/audit-events``); never a secret."""

    id: str
    occurred_at: datetime
    project_id: str | None = None
    actor: str = Field(description="'api_key' or 'rift-admin' (the command line).")
    actor_key_id: str | None = None
    actor_key_prefix: str | None = Field(None, description="The acting key's public prefix.")
    action: str = Field(description="e.g. 'job.created', 'key.revoked', 'project.deleted'.")
    resource_kind: str
    resource_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any] | None = None


class AuditEventPage(_Resource):
    items: list[AuditEvent]
    next_cursor: str | None = None


class StoredBytes(_Resource):
    """Bytes counted against ``max_stored_bytes``; ``used`` is the sum of the parts."""

    used: int
    limit: int
    checkpoints: int
    datasets: int
    artifacts: int
    reserved_by_active_jobs: int
    reserved_by_materializations: int


class ActiveJobs(_Resource):
    used: int = Field(description="Queued and running jobs.")
    limit: int


class PendingMaterializations(_Resource):
    used: int = Field(description="Queued and running materializations.")
    limit: int = Field(description="max_pending_materializations (a service setting).")


class RequestWindow(_Resource):
    """Requests counted against ``max_requests_per_minute`` in the current minute."""

    used: int | None = Field(description="This request included; None when the server's "
                             "counter could not be read.")
    limit: int
    resets_in_seconds: float
    counted_in: str = Field(description="'shared' (Redis: every API process) or 'process' "
                            "(the API process that answered).")


class EventStreams(_Resource):
    """Open event streams, as counted by the API process that answered (each process holds
    and limits its own streams)."""

    open_by_this_key: int | None = Field(description="None in an admin's view of a project.")
    open_by_project: int
    limit_per_key: int
    counted_in: str = "process"


class Usage(_Resource):
    """The project's usage against its limits: the numbers its 413 and 429 answers use."""

    project: str
    stored_bytes: StoredBytes
    active_jobs: ActiveJobs
    pending_materializations: PendingMaterializations | None = Field(
        None, description="None from a server older than it.")
    max_job_cost: int
    max_job_gflop: int | None = Field(None, description="None from a server older than it.")
    max_requests_per_minute: int
    max_streams_per_key: int
    requests_this_minute: RequestWindow | None = Field(
        None, description="None from a server older than these counts.")
    event_streams: EventStreams | None = Field(
        None, description="None from a server older than these counts.")


class JobError(_Resource):
    code: str
    message: str
    field: str | None = Field(
        None, description="The config setting the error blames (e.g. 'attack.domain'); None "
        "when none is blamed, or from a server older than it.")


class Stage(_Resource):
    stage: str
    status: str
    attempts: int
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobWarning(_Resource):
    """One of the job's warnings: the run went on, but the result may not be what was asked
    for. The same warning written again (a retried stage) is one item with its ``count``."""

    stage: str | None = Field(None, description="What it concerns: run, preflight, mrc, "
                              "finetune, interpolate, export; None if the event named none.")
    candidate: int | None = Field(None, description="The sweep candidate it concerns; None for "
                                  "the job's own.")
    message: str
    at: datetime = Field(description="When it was first written.")
    count: int = Field(1, description="Times it was written.")

    def line(self) -> str:
        """``warning (stage): message``, as riftctl and the library's CLI print it."""
        where = self.stage or "run"
        if self.candidate is not None:
            where += f", candidate {self.candidate}"
        repeated = f" (×{self.count})" if self.count > 1 else ""
        return f"warning ({where}): {self.message}{repeated}"


class Job(_Resource):
    id: str
    status: str
    stage: str | None = None
    progress: float = Field(0.0, description="Fraction of the current stage done, in [0, 1].")
    progress_message: str | None = None
    queue_position: int | None = None
    cancel_requested: bool = False
    checkpoint_id: str
    dataset_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    device: str | None = None
    attempts: int = Field(0, description="Stage runs over all its stages: 3 for a job whose three "
                          "stages ran once each; more only after retries.")
    selected_module: str | None = None
    chosen_alpha: float | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    stages: list[Stage] | None = Field(
        None, description="The job's stages; list items carry them only when listed with "
        "expand=stages.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    cost_estimate: int | None = Field(None, description="Estimated example-passes, all stages.")
    cost_gflop: float | None = Field(
        None, description="Estimated compute in GFLOP, all stages; None when the model's FLOPs "
        "were not counted (or from a server older than the count).")
    time_limit_seconds: float | None = Field(
        None, description="The job's own wall-clock limit; None: the service's.")
    estimated_finish: datetime | None = Field(
        None, description="When a running job should end (GET by id only).")
    config: dict[str, Any] | None = Field(
        None, description="The job's RiftConfig; list items carry it only with expand=config.")
    warnings: list[JobWarning] | None = Field(
        None, description="The job's warnings, first written first (at most 100: see "
        "warnings_total); list items carry them only with expand=warnings; None from a server "
        "older than them.")
    warnings_total: int | None = Field(
        None, description="Distinct warnings the job has; more than len(warnings) when the "
        "list was cut.")
    links: dict[str, str | None] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled; or a status a newer
        server added, with ``finished_at`` set)."""
        return _has_ended(self.status, TERMINAL_STATUSES, self.finished_at)


class JobPage(_Resource):
    items: list[Job]
    next_cursor: str | None = None


class Event(_Resource):
    id: int
    kind: str
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class EventPage(_Resource):
    items: list[Event]
    next_after: int
    job_status: str
    finished: bool


class MRCRow(_Resource):
    position: int
    module: str
    parameters: int
    mrc: float
    worst_robust_loss: float
    robust_accuracy_at_worst: float | None = None
    robust_accuracy_drop: float | None = None
    seconds: float | None = None
    max_ascent_loss: float | None = Field(
        None, description="Largest robust loss after an ascent pass; orders MRC ties.")
    passes: int | None = Field(None, description="Ascent passes run (None: not recorded).")
    exact: bool | None = Field(
        None, description="False: stopped early by mrc.table 'selection'; mrc is a lower bound.")
    zero_gradient: bool | None = Field(
        None, description="True: the output does not depend on the module (zero weight "
        "gradient on every MRC batch); MRC 0 by construction, never chosen. None: unknown.")
    selected: bool = False


class MRCTable(_Resource):
    job_id: str
    status: str
    selected_module: str | None = None
    rows: list[MRCRow]
    complete: bool | None = Field(
        None, description="True: the table the MRC stage recorded. False: the rows scored so "
        "far (the stage runs, or the job failed or was cancelled in it). None: a server from "
        "before partial tables (its table was empty until the stage ended).")
    modules_scored: int | None = Field(None, description="Rows in this answer.")
    modules_total: int | None = Field(
        None, description="Rows the table will have (None: not known yet).")


class Epoch(_Resource):
    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    seconds: float | None = None


class InterpolationPoint(_Resource):
    alpha: float
    clean_accuracy: float
    robust_accuracy: float | None = Field(
        None, description="None where interpolation.curve is 'selection' and this α could not "
        "change the choice, so it was not measured in full.")
    robust_accuracy_at_most: float | None = Field(
        None, description="An upper bound (percent) where the attack on this α stopped early; "
        "None for a point measured in full or never attacked.")
    chosen: bool = False


class CandidateWeights(_Resource):
    """A sweep candidate's fine-tuned weights θ_FT: only the chosen candidate's are kept (the
    job's ``finetuned.safetensors``); the others' are deleted once the sweep picks."""

    available: bool
    artifact: str | None = None
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    deleted: bool = False
    reason: str | None = Field(None, description="Why it cannot be downloaded.")


class CandidateCurve(_Resource):
    """One (module, lr) candidate of a sweep and its own interpolation curve."""

    index: int
    module: str
    lr: float
    status: str = Field(description="'failed': excluded from the pick (see ``reason``).")
    attempts: int = 0
    reason: str | None = Field(
        None, description="Why the candidate was excluded from the pick (its fine-tuning "
        "diverged in the first epoch); None otherwise, or from a server older than this field.")
    chosen: bool = Field(False, description="The candidate the α rule picked across all curves.")
    chosen_alpha: float | None = None
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    best_epoch: int | None = None
    points: list[InterpolationPoint] = Field(default_factory=list)
    finetuned: CandidateWeights | None = Field(
        None, description="The candidate's θ_FT: downloadable (``url``) for the chosen one only; "
        "None while it runs, or from a server older than this field.")


class Curves(_Resource):
    job_id: str
    status: str
    selected_module: str | None = None
    epochs: list[Epoch]
    interpolation: list[InterpolationPoint]
    chosen_alpha: float | None = None
    metrics: dict[str, Any] | None = None
    candidates: list[CandidateCurve] = Field(
        default_factory=list, description="A sweep's candidates side by side; empty otherwise.")
    chosen_candidate: int | None = None


class Artifact(_Resource):
    name: str
    size: int = Field(description="Bytes.")
    sha256: str
    content_type: str
    created_at: datetime
    url: str


class Materialization(_Resource):
    """The weights θ_α = (1 − α) θ_AT + α θ_FT of a succeeded job at an α asked for after it
    (``POST /v1/jobs/{id}/materialize``), made by a worker as the job artifact ``artifact``."""

    id: str
    job_id: str
    alpha: float
    evaluate: bool
    status: str = Field(description="queued, running, succeeded or failed.")
    artifact: str = Field(description="The weights' artifact name (tuned@<α>.safetensors); "
                          "downloadable once succeeded.")
    artifact_url: str | None = None
    clean_accuracy: float | None = Field(None, description="Percent, when evaluated.")
    robust_accuracy: float | None = Field(None, description="Percent, when evaluated.")
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    url: str

    @property
    def finished(self) -> bool:
        """Whether the worker is done with it (succeeded or failed; or a status a newer
        server added, with ``finished_at`` set)."""
        return _has_ended(self.status, MATERIALIZATION_TERMINAL_STATUSES, self.finished_at)


class MlflowExport(_Resource):
    """A succeeded job's MLflow export asked for again (``POST /v1/jobs/{id}/mlflow-export``),
    queued on a worker: its outcome is the job's next ``mlflow_exported`` event (run id, model,
    version) or ``warning`` (stage ``export``) after ``event_id``."""

    job_id: str
    status: str = Field(description="'queued': a worker exports the job.")
    event_id: int = Field(description="The request's mlflow_export_requested event.")
    url: str = Field(description="The job's events after the request.")


class MlflowExportOutcome(_Resource):
    """How a re-export asked for with :meth:`RiftClient.export_to_mlflow` ended: the job's
    ``mlflow_exported`` event (``exported``: run id, model, version) or its export ``warning``
    (``message`` says why), the one naming the request's ``event_id``."""

    job_id: str
    request_event_id: int = Field(description="The request's mlflow_export_requested event.")
    event_id: int = Field(description="The outcome's event.")
    exported: bool = Field(description="True: logged to MLflow; False: the warning's message "
                           "says why not.")
    run_id: str | None = None
    model: str | None = None
    version: str | None = Field(None, description="The registered model's version.")
    message: str | None = Field(None, description="Why the export failed (exported False).")


class JobSpec(BaseModel):
    """What a job runs: the RiftConfig (as the service documents it), an optional uploaded
    dataset and labels. The checkpoint is named separately (``RiftClient.create_job``)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]
    dataset_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    time_limit_seconds: float | None = Field(
        None, ge=MIN_TIME_LIMIT_SECONDS, allow_inf_nan=False, description="This job's "
        f"wall-clock limit in seconds, at least {MIN_TIME_LIMIT_SECONDS:g}, at most the "
        "service's JOB_TIME_LIMIT_SECONDS; None: the service's.")


#: The webhook event types a registration may name (``POST /v1/webhooks``'s ``events``).
WEBHOOK_EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")
#: Delivery statuses are pending, succeeded or failed; these two are final.
DELIVERY_TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED})


class Webhook(_Resource):
    """A registered webhook endpoint (``GET /v1/webhooks/{id}``); its secret is never shown
    again after registration."""

    id: str
    url: str
    events: list[str] = Field(description="Event types sent to it (of WEBHOOK_EVENT_TYPES).")
    description: str | None = None
    created_at: datetime


class CreatedWebhook(Webhook):
    """The answer to a registration: the endpoint and its signing secret, shown this once (and
    again only to a retry under the same Idempotency-Key)."""

    # Left out of repr() and str(): a notebook cell's echo, a log line or a traceback's locals
    # would show it to whoever reads them (before, the whole whsec_ secret); read .secret.
    secret: str = Field(repr=False, description="whsec_<base64>: pass it to "
                        "rift_client.verify_webhook.")


class WebhookAttempt(_Resource):
    attempt: int
    status_code: int | None = Field(None, description="The receiver's HTTP status; None if it "
                                    "gave no answer (timeout, refused target).")
    error: str | None = None
    started_at: datetime
    duration_ms: float | None = None


class WebhookDelivery(_Resource):
    """One message to an endpoint (one job's end) and each HTTP attempt to send it."""

    id: str = Field(description="The message's webhook-id header (the same on every attempt).")
    event_type: str
    job_id: str
    status: str = Field(description="pending, succeeded or failed.")
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    attempt_log: list[WebhookAttempt] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the service is done with it (delivered, or given up after its attempts)."""
        return self.status in DELIVERY_TERMINAL_STATUSES


class WebhookJobData(_Resource):
    """What a job's webhook message says about the job (its ``data``)."""

    job_id: str
    status: str
    labels: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    finished_at: datetime | None = None
    warnings_total: int | None = Field(
        None, description="How many distinct warnings the job had when it ended, as the job's "
        "own warnings_total (GET the job for them); None from a server older than this count.")
    links: dict[str, str | None] = Field(default_factory=dict)


class WebhookMessage(_Resource):
    """A verified webhook message as a receiver gets it (:func:`rift_client.verify_webhook`):
    the Standard Webhooks envelope ``{type, timestamp, data}`` and the ``webhook-id`` header,
    which stays the same on every attempt (use it to drop a repeated message)."""

    id: str = Field(description="The webhook-id header: the delivery's id.")
    type: str = Field(description="One of WEBHOOK_EVENT_TYPES.")
    timestamp: datetime = Field(description="When the message was made (not sent).")
    data: WebhookJobData


#: A project's own limits (``create_project(limits=)``, ``set_project_limits``), as the service's
#: admin routes name them; a limit left null is the service's setting of the same name.
PROJECT_LIMITS = ("max_active_jobs", "max_stored_bytes", "max_job_cost", "max_job_gflop",
                  "max_requests_per_minute", "max_streams_per_key")
#: The scopes an API key may hold (``create_key(scopes=)``; default read and write).
KEY_SCOPES = ("read", "write", "admin")


class Project(_Resource):
    """A project and its own limits (``GET /v1/admin/projects/{name}``; an admin key's view).
    A limit that is None is the service's default (its setting of the same name)."""

    id: str
    name: str
    created_at: datetime
    max_active_jobs: int | None = None
    max_stored_bytes: int | None = None
    max_job_cost: int | None = None
    max_job_gflop: int | None = None
    max_requests_per_minute: int | None = None
    max_streams_per_key: int | None = None


class ApiKey(_Resource):
    """A project's API key, never its secret (``GET /v1/admin/projects/{name}/keys/{id}``). Its
    ``.etag`` leaves ``last_used_at`` out: a key in use keeps it."""

    id: str
    project: str
    prefix: str = Field(description="The public part of the key, rift_<prefix>_….")
    scopes: list[str] = Field(description="Of KEY_SCOPES.")
    name: str | None = None
    created_at: datetime
    last_used_at: datetime | None = Field(None, description="Written at most once a minute.")
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key is revoked (it answers 401)."""
        return self.revoked_at is not None


class CreatedApiKey(ApiKey):
    """The answer to a key's creation: the key and its secret, shown this once."""

    # Out of repr() and str() as CreatedWebhook.secret is (the public part is ``prefix``).
    key: str = Field(repr=False, description="rift_<prefix>_<secret>: store it now, it is not "
                     "shown again.")


class Worker(_Resource):
    """A live worker process (seen within 3 heartbeats), as ``GET /v1/admin/workers`` lists it."""

    id: str = Field(description="host:pid:random, also the lease owner of the stages it runs.")
    hostname: str
    queues: list[str]
    devices: dict[str, int] = Field(description="Its devices by type, e.g. {'cpu': 1, 'cuda': 2}.")
    device_override: str | None = None
    datasets: list[str] | None = Field(
        None, description="The built-in datasets (cifar10, cifar100, svhn, mnist) whose files its "
        "DATA_ROOT holds; None: it does not say (an earlier release).")
    started_at: datetime
    last_seen_at: datetime
