"""The service's settings: one pydantic-settings class, read from environment variables.

Each entry point (the API's app factory, the Celery worker module, the CLI, tests) builds one
``Settings()`` and passes it down; nothing else reads the environment. The defaults give the
embedded mode (SQLite, a local folder as object store, kombu's SQLAlchemy transport as broker) so a
fresh clone runs without servers; production sets ``DATABASE_URL`` (Postgres), ``BROKER_URL``
(Redis) and ``STORE_KIND=s3`` with the ``S3_*`` variables.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from persistence import setting_checks

if TYPE_CHECKING:
    from persistence.storage import ObjectStore

GIB = 1024**3


class Settings(BaseSettings):
    """All settings of the API and the workers. Field ``x_y`` is read from the variable ``X_Y``."""

    # No prefix and no .env file: the variable names are the documented ones, and tests set the
    # environment of the processes they start explicitly.
    # allow_inf_nan=False: 'inf' passes every 'gt=0' bound and then overflows a sleep or a
    # deadline in a thread; no setting means "infinite" by it.
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore",
                                      allow_inf_nan=False)

    # --- database ---------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./var/rift.db",
        description="SQLAlchemy URL. SQLite ('sqlite:///path') or Postgres "
        "('postgresql+psycopg://user:pass@host/db'; 'postgresql://' is taken to mean psycopg 3).",
    )
    database_echo: bool = Field(False, description="Log every SQL statement (debugging).")
    database_connect_timeout_seconds: int = Field(
        5, ge=2,
        description="How long opening a Postgres connection may take (s; libpq counts whole "
        "seconds, at least 2). Without it, a database host that drops packets holds each "
        "request (and the start-up check) for the kernel's TCP timeout, about two minutes, "
        "instead of answering 503 'database_unavailable'.")
    database_pool_size: int = Field(
        5, ge=1,
        description="Postgres connections each process (an API process, a worker) keeps open. "
        "An API process serves up to 40 requests at once; size pool + overflow, times the "
        "processes, to what the database (or its pooler) accepts.")
    database_pool_overflow: int = Field(
        10, ge=0,
        description="Postgres connections a process may open beyond DATABASE_POOL_SIZE under load "
        "(closed again when given back).")
    database_lock_timeout_seconds: float = Field(
        30.0, gt=0,
        description="SQLite only: how long a transaction waits for the database's write lock "
        "(s; SQLite's busy timeout). Every transaction takes that lock (the service begins "
        "them IMMEDIATE), so a request waits while another process writes, then answers 503 "
        "'database_busy' with Retry-After naming this setting.")
    database_pool_timeout_seconds: float = Field(
        30.0, gt=0,
        description="How long a request waits for a free connection when all are taken (s), "
        "then answers 503 'database_unavailable' with Retry-After: lower it to fail fast when "
        "the database is slow.")

    # --- broker / Celery --------------------------------------------------------------------
    broker_url: str = Field(
        "sqla+sqlite:///./var/broker.db",
        description="Celery broker: 'redis://host:6379/0' in production; the default is kombu's "
        "SQLAlchemy transport on a SQLite file, which needs no server.",
    )
    broker_visibility_timeout: int = Field(
        3600, ge=1,
        description="Seconds after which Redis hands an unacknowledged message to another worker. "
        "Leases in the database, not this, decide who runs a stage.",
    )
    celery_queue: str = Field("rift", min_length=1, description="Queue the stage tasks go to.")

    # --- object store -----------------------------------------------------------------------
    store_kind: Literal["local", "s3"] = Field("local", description="'local' folder or 's3'.")
    store_root: Path = Field(Path("./var/objects"), description="Folder of the local store.")
    s3_bucket: str | None = Field(None, description="Bucket (required when STORE_KIND=s3).")
    s3_endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None: AWS.")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint clients use for presigned URLs when it differs.")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_presign_expiry_s: int = Field(300, ge=1, le=7 * 24 * 3600,
                                     description="Lifetime of presigned download URLs (s).")
    s3_create_bucket: bool = Field(False, description="Create the bucket if it is missing.")
    s3_redirect_downloads: bool = Field(
        True, description="Answer artifact downloads with a redirect to a presigned URL.")

    # --- data ---------------------------------------------------------------------------------
    data_root: Path = Field(
        Path("./var/data"),
        description="Folder on the workers holding the built-in datasets (cifar10, cifar100, svhn, "
        "mnist) in torchvision's layout. Jobs cannot name another folder, and nothing is downloaded.")

    # --- upload limits (bytes) ----------------------------------------------------------------
    max_checkpoint_bytes: int = Field(2 * GIB, ge=1)
    max_dataset_bytes: int = Field(8 * GIB, ge=1)

    # --- upload validation (the sandboxed ``python -m validator`` process) -----------------------
    validation_max_concurrency: int = Field(
        2, ge=1,
        description="Validation processes run at once (each may take up to "
        "VALIDATION_MEMORY_BYTES) by one API process, or by the whole host when VALIDATION_SOCKET "
        "is set; further uploads wait for a slot.")
    validation_max_pending_per_project: int = Field(
        8, ge=1,
        description="Uploads and job creations one project may have waiting for or in the "
        "validator at once, per API process; one more is a 429 validation_pending_limit at once. "
        "Each waiting one holds one of the process's 40 worker threads (every synchronous route "
        "runs in them) for up to VALIDATION_QUEUE_TIMEOUT_SECONDS: one project's burst held "
        "them all. 8: a fifth of them, above a client's parallel uploads.")
    validation_fit_cache_size: int = Field(
        1024, ge=0,
        description="Fit checks that passed, remembered by each API process (api/validation.py) "
        "by what the check reads (architecture, MRC module selection, fine-tuned module, the "
        "checkpoint's shapes and dtypes, the data's geometry), so that another job of the same "
        "checkpoint and model skips the validator run; least recently used dropped first. "
        "0: every job is checked.")
    validation_socket: str = Field(
        "",
        description="Unix socket path of one validator server shared by every API process of the "
        "host (e.g. /run/rift/validator.sock, with `uvicorn --workers N`): one torch import and "
        "one VALIDATION_MAX_CONCURRENCY bound for the host instead of one per process. Its "
        "folder is created when missing and must belong to the API's user, writable by no one "
        "else. Empty: each API process starts a private server of its own.")
    validation_warm_start: bool = Field(
        True,
        description="Start (or find) the validator server when the API process starts, in the "
        "background, so that the first upload does not wait for its torch import (seconds); "
        "/readyz says not ready until it serves. false: started by the first upload, which waits "
        "for it (saves the server's ~0.8 GB until an upload comes).")
    validation_idle_exit_seconds: float = Field(
        600.0, gt=0,
        description="A shared validator server (VALIDATION_SOCKET) exits after this long without "
        "a check; the next upload starts another (seconds).")
    validation_queue_timeout_seconds: float = Field(
        120.0, gt=0,
        description="How long an upload waits for a free validation slot before it is answered "
        "503 (seconds).")
    validation_timeout_seconds: float = Field(
        600.0, gt=0,
        description="Wall-clock limit of one validation (seconds); reading 2 GiB at disk speed "
        "takes seconds, so a file that takes longer is refused (422).")
    validation_cpu_seconds: int = Field(
        300, ge=1,
        description="CPU-time limit of one validation process (RLIMIT_CPU, seconds).")
    validation_memory_bytes: int = Field(
        2 * GIB, ge=64 * 1024**2,
        description="Memory limit of one validation process (RLIMIT_DATA, bytes): importing torch "
        "takes about 0.8 GB of it; a PyTorch file's private memory map counts too, so its size is "
        "added for checkpoint checks.")

    # --- workers --------------------------------------------------------------------------------
    worker_lease_seconds: float = Field(
        60.0, gt=0,
        description="A stage's (or materialization's) lease: renewed by a heartbeat while the "
        "work runs; once it has expired (the worker died) another worker may claim it.")
    worker_recovery_interval_seconds: float = Field(
        15.0, gt=0, description="How often a worker looks for work whose lease expired or "
        "whose message is late (stages, MRC shards, sweep candidates, materializations, webhook "
        "messages; seconds).")
    # The old name is still read so a deployment that set it keeps its period.
    queued_resend_after_seconds: float = Field(
        3600.0, gt=0,
        validation_alias=AliasChoices("queued_resend_after_seconds", "stage_redispatch_seconds"),
        description="Work still waiting for a worker this long after its message was sent (a "
        "stage, MRC shard, sweep candidate or materialization) is sent again: the message may "
        "have been lost (a broker restarted without persistence, a process killed between its "
        "commit and the send) or may still wait in a long queue, hence an hour. A copy that "
        "comes second finds the work claimed and does nothing (persistence/resend.py). Was "
        "STAGE_REDISPATCH_SECONDS (stages and parts only), which is still read.")
    max_stage_attempts: int = Field(
        3, ge=1, description="Claims of one stage before the job fails instead of retrying (of "
        "one materialization before it fails).")
    incompatible_message_delay_seconds: float = Field(
        10.0, gt=0,
        description="Seconds before a message this worker's release cannot take (a task it "
        "does not have, arguments its task does not accept: a newer or older API during a "
        "rolling deploy) goes back to the queue for a worker that can (worker/message_compat.py)."
        " Such a message is given up, logged, once it has waited QUEUED_RESEND_AFTER_SECONDS, "
        "when the recovery loop sends the work it drives again.")
    stage_retry_delay_seconds: float = Field(
        2.0, ge=0, description="Delay before re-running a stage that raised an unexpected error.")
    progress_interval_seconds: float = Field(
        1.0, ge=0, description="Throttle of progress writes and cancellation checks (s).")
    worker_prepared_run_cache_bytes: int = Field(
        GIB, ge=0,
        description="Bytes of prepared runs (data splits, model, θ_AT) a worker process keeps so "
        "that the next stage of a job on it skips fetching and building them (worker/"
        "prepared_runs.py); per process, so a prefork worker holds up to concurrency × this. "
        "0: nothing is kept.")
    worker_chain_stages: bool = Field(
        True,
        description="A worker that finishes a stage claims the job's next stage in the same "
        "transaction and runs it with the run it holds, instead of sending the next stage's "
        "message and taking it back from the queue (worker/tasks.py); the claim is the usual "
        "lease, so cancellation, retries and the recovery of a dead worker's stage are "
        "unchanged. False: every stage goes through the queue.")
    worker_malloc_threshold_bytes: int = Field(
        32 * 1024**2, ge=0, le=32 * 1024**2,
        description="glibc only (at most 32 MiB, glibc's limit): the worker process's malloc "
        "serves blocks below this size from its heap and keeps up to twice this free at the "
        "heap's top (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD; worker/allocator.py), instead of "
        "mapping and unmapping a CPU tensor's memory at every step (page faults: a fifth of the "
        "demo job's CPU MRC stage). 32 MiB is where glibc's own sliding threshold ends; 0: "
        "leave malloc as it is.")
    worker_heartbeat_seconds: float = Field(
        30.0, gt=0,
        description="How often a worker process renews its row in the worker registry (s). A "
        "worker not seen for 3 of these counts as gone: job creation no longer counts its "
        "devices and the janitor deletes its row. One small UPDATE per process each time.")
    worker_datasets_check_seconds: float = Field(
        60.0, ge=0,
        description="How often a worker process looks again at which built-in datasets its "
        "DATA_ROOT holds (s), at its next heartbeat once this has passed; the registry row is "
        "rewritten only when they changed, so a dataset copied in later is seen within this "
        "plus a heartbeat. A look is one stat() per file of each dataset (at most 14), but a "
        "hung network mount would hold the heartbeat with it, hence not at every beat. 0: at "
        "every heartbeat.")
    work_dir: Path = Field(Path("./var/work"), description="Scratch space of the workers.")
    worker_device: str | None = Field(
        None, description="Overrides the job's 'device' (e.g. 'cpu'); None: the job's, whose "
        "default 'auto' picks CUDA when present.")

    # --- access and per-project limits (a project's own column, when set, wins) ----------------
    # NoDecode: read by the check below, which takes a comma-separated value as well as the
    # JSON list this setting was first written as.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose browser pages may call the API, comma-separated, each "
        "'scheme://host[:port]' as a browser sends it in Origin (e.g. "
        "'https://console.example.org,http://localhost:3000'), or '*' alone for any origin; a "
        "JSON list is read too. Credentials (cookies) are never allowed: pages send the key in "
        "Authorization. Empty: no CORS headers, so browsers refuse cross-origin calls.")
    default_max_active_jobs: int = Field(
        20, ge=1, description="Queued + running jobs a project may have at once (429 beyond).")
    default_max_stored_bytes: int = Field(
        50 * GIB, ge=1, description="Bytes of checkpoints, datasets and artifacts a project may "
        "keep in the object store (uploads beyond are refused with 413).")
    default_max_job_cost: int = Field(
        1_000_000_000, ge=1,
        description="Largest cost estimate of one job, in example-passes (persistence/cost.py). "
        "A ResNet-18 RiFT run on CIFAR-10 with the paper's settings is about 1e7; the default "
        "allows 100 times that and refuses specs that would hold a worker for days.")
    default_max_job_gflop: int = Field(
        1_000_000_000, ge=1,
        description="Largest compute estimate of one job, in GFLOP (persistence/cost.py: its "
        "example-passes times the model's FLOPs on one example, counted at job creation). A "
        "ResNet-18 RiFT run on CIFAR-10 with the paper's settings is about 1.5e7; the default "
        "(1e18 FLOP) allows about 68 times that, some 3 hours of an H100 at the pace of the "
        "README's whole-job run.")
    default_max_requests_per_minute: int = Field(
        1200, ge=1, description="Requests per minute per project (429 with Retry-After beyond); "
        "counted in Redis when BROKER_URL is Redis, else in the API process.")
    default_max_streams_per_key: int = Field(
        10, ge=1, description="Open event streams (SSE) per API key; each holds a connection.")
    # --- limits, housekeeping ----------------------------------------------------------------
    project_delete_wait_seconds: float = Field(
        30.0, ge=0,
        description="How long a forced project deletion (DELETE /v1/admin/projects/{name}?force="
        "true, rift-admin projects delete --force) waits for the workers of its cancelled jobs to "
        "stop (s). A worker checks for cancellation between batches and every "
        "PROGRESS_INTERVAL_SECONDS, so seconds suffice; past it the deletion is refused (409 "
        "jobs_stopping) and can be retried.")
    job_time_limit_seconds: float = Field(
        6 * 3600.0, gt=0,
        description="Wall-clock limit of one job in seconds, from its first stage's start: past it "
        "the worker stops at its next batch and the job fails with code 'timeout' (the recovery "
        "loop fails it too if its worker died). Six hours fit every reference run (docs/algorithm.md) on "
        "one GPU with room to spare; a job that needs more is mis-specified or should be split.")
    broker_connect_timeout_seconds: float = Field(
        3.0, gt=0,
        description="How long the API waits for the broker when it queues a job or probes "
        "readiness (s). Short, because a client is waiting: with the broker down, POST /v1/jobs "
        "answers 503 'broker_unavailable' within a few of these and records no job.")
    janitor_interval_seconds: float = Field(
        3600.0, gt=0,
        description="How often a worker's recovery loop runs the janitor (s); it lists the whole "
        "store, so hourly is plenty. 'python -m persistence.janitor' runs it once on demand.")
    janitor_grace_seconds: float = Field(
        24 * 3600.0, ge=0,
        description="Age (s) below which the janitor never removes a scratch file, partial "
        "object, unrecorded object or incomplete S3 multipart upload, so it cannot race an upload "
        "or a stage still in progress. Must exceed the longest upload and the longest stage.")
    artifact_retention_days: float = Field(
        0.0, ge=0,
        description="The janitor deletes the stored files (artifacts, intermediate records) of "
        "jobs that finished more than this many days ago, and their artifact rows; the job row, "
        "its tables and events stay. 0 keeps them for ever.")
    audit_retention_days: int = Field(
        365, ge=0,
        description="The janitor deletes audit events (GET /v1/audit-events: who created, "
        "cancelled or deleted what) older than this many days; a deleted project's trail too. "
        "0 keeps them for ever. A year answers the usual 'who deleted this' and bounds the "
        "table.")
    test_upload_pause: str | None = Field(
        None,
        description="Test only, never set in a deployment: 'PHASE:SECONDS' makes every object "
        "write sleep at PHASE, 'store' (three quarters of the bytes written) or 'record' (the "
        "object stored, its row not yet written), so a test can kill the API exactly there.")
    # --- live events and the API processes ------------------------------------------------
    event_notify: Literal["auto", "postgres", "redis", "poll"] = Field(
        "auto",
        description="How an event stream learns that its job has new events. 'postgres': "
        "LISTEN/NOTIFY (a trigger on job_events notifies at commit); 'redis': pub/sub on the "
        "broker's Redis (writers publish after commit); 'poll': one query per API process every "
        "EVENT_POLL_INTERVAL_SECONDS, whatever the number of streams. 'auto': postgres when the "
        "database is Postgres, else redis when the broker is Redis, else poll.")
    event_poll_interval_seconds: float = Field(
        1.0, gt=0,
        description="With EVENT_NOTIFY=poll: seconds between the API process's looks for new "
        "events (one query for all its streams). Also the delay before a listener that lost its "
        "Postgres or Redis connection tries again.")
    event_stream_recheck_seconds: float = Field(
        60.0, gt=0,
        description="An idle event stream reads the database anyway after this many seconds, "
        "a safety net for a notification lost while a listener was reconnecting (s).")
    request_head_max_bytes: int = Field(
        64 * 1024, ge=8 * 1024, le=1024 * 1024,
        description="Most bytes of a request line and headers the API's HTTP server reads "
        "before refusing the request with 431 request_head_too_large (the image and compose "
        "pass it to uvicorn as --h11-max-incomplete-event-size, read by api.http_protocol). "
        "URLs of 64 KiB or more are refused whatever it says (httptools' URL parser).")
    api_workers: int = Field(
        2, ge=1,
        description="uvicorn worker processes of the API in production (docker-compose and the "
        "image's command read API_WORKERS): one process serves about 200 requests/s by id on "
        "one core, so give it about one per core.")

    # --- webhooks -------------------------------------------------------------------------
    webhook_queue: str = Field(
        "rift-webhooks", min_length=1,
        description="Celery queue of the webhook deliveries: kept apart from the stage tasks so "
        "a long GPU stage never holds a notification back (run a worker with -Q on it).")
    webhook_allow_list: str = Field(
        "",
        description="Comma-separated webhook targets allowed although they are not public "
        "addresses: IP networks ('10.1.0.0/16', '127.0.0.1') matched against every address the "
        "host resolves to, or host names matched exactly. Empty: only public addresses.")
    webhook_max_attempts: int = Field(
        6, ge=1, description="HTTP attempts of one webhook message before it is marked failed.")
    webhook_retry_base_seconds: float = Field(
        10.0, gt=0,
        description="Delay before the second attempt; each further one doubles it (exponential "
        "backoff), at most WEBHOOK_RETRY_MAX_SECONDS (s).")
    webhook_retry_max_seconds: float = Field(
        3600.0, gt=0, description="Longest delay between two attempts of one message (s).")
    webhook_timeout_seconds: float = Field(
        10.0, gt=0,
        description="Time limit of one webhook attempt (s): connecting, sending and the "
        "answer's head together (its body is never read); a slow receiver must not hold a "
        "delivery worker.")
    webhook_max_endpoints: int = Field(
        20, ge=1, description="Webhook endpoints one project may register.")
    materialize_max_pending: int = Field(
        16, ge=1, description="Materializations (POST /v1/jobs/{id}/materialize) one project may "
        "have queued or running at once; one more is a 429 naming max_pending_materializations. "
        "Each is worker time (an evaluated one attacks the whole test split), and without it only "
        "the stored-bytes quota bounded how many a client could queue.")
    # --- observability (metrics, logs) ---------------------------------------------------------
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics on the API requires 'Authorization: Bearer "
        "<token>'; unset, /metrics is open (scrapers usually sit on a private network).")
    prometheus_multiproc_dir: Path | None = Field(
        None, description="Directory where each API process writes its metric values, so that a "
        "scrape of GET /metrics (answered by any one of the uvicorn --workers processes) sums "
        "all of them; unset: each process counts alone, right for one process only. The start "
        "command's 'python -m api.preflight' empties it (a RAM-backed directory, such as "
        "/dev/shm/..., fits). prometheus_client reads this variable itself when imported.")
    worker_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="TCP port on which each worker process serves Prometheus metrics; 0: off. "
        "With the prefork pool the port is opened by the pool's child (run one child per worker, "
        "--concurrency=1, as the deployment does).")
    log_format: Literal["json", "text"] = Field(
        "json", description="'json': one JSON object per line carrying job_id and request_id "
        "(for log shippers); 'text': plain lines for a terminal.")
    log_level: str = Field("INFO", description="Level of the service's loggers (DEBUG, INFO...).")
    build_commit: str | None = Field(
        None, description="Git commit of the deployed code, written into each job's manifest.json "
        "(set by the image build); unset, the manifest asks git when the code is a checkout.")

    # --- model registry export (optional, needs the 'mlflow' extra) ---------------------------
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking (and registry) URI, e.g. 'http://mlflow:5000' or "
        "'sqlite:///mlflow.db'; unset: finished jobs are not exported.")
    mlflow_experiment: str = Field("rift", min_length=1,
                                   description="MLflow experiment the job runs are logged under.")
    mlflow_model_name: str = Field(
        "rift-tuned", min_length=1,
        description="Registered model that each job's tuned weights become a new version of.")
    mlflow_artifact_location: str | None = Field(
        None, description="Artifact root for a new experiment (e.g. an s3:// or file:// URI); "
        "unset: the tracking server's default.")
    mlflow_http_max_retries: int = Field(
        2, ge=0, le=10, description="Retries of each MLflow HTTP request (MLflow's own "
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES, set from this in the exporting worker). MLflow's default "
        "of 7 with exponential back-off kept a worker busy 246 s after each job while the "
        "tracking server was down, before the export gave up with a warning event.")
    mlflow_http_timeout_seconds: int = Field(
        30, ge=1, le=600, description="Seconds one MLflow HTTP request may take (MLflow's "
        "MLFLOW_HTTP_REQUEST_TIMEOUT, default 120, set from this in the exporting worker).")
    mlflow_allow_file_store: bool = Field(
        False, description="MLflow's own MLFLOW_ALLOW_FILE_STORE, read here too: MLflow 3 refuses "
        "a file tracking store (a folder, file:// URI) unless it is true, so a worker whose "
        "MLFLOW_TRACKING_URI is one stops at its start without it.")

    # --- checks beyond the types (persistence/setting_checks.py) -------------------------------
    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return setting_checks.check_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return setting_checks.check_broker_url(value)

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return setting_checks.check_http_url(value)

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return setting_checks.check_bucket_name(value)

    @field_validator("s3_region")
    @classmethod
    def _region(cls, value: str) -> str:
        return setting_checks.check_region_name(value)

    @field_validator("prometheus_multiproc_dir", mode="before")
    @classmethod
    def _multiproc_dir(cls, value: object) -> object:
        return setting_checks.check_not_blank(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return setting_checks.check_log_level(value)

    @field_validator("worker_device")
    @classmethod
    def _worker_device(cls, value: str | None) -> str | None:
        return setting_checks.check_device_name(value)

    @field_validator("webhook_allow_list")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        return setting_checks.check_allow_list(value)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: object) -> object:
        return setting_checks.check_cors_origins(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.store_kind == "s3" and not self.s3_bucket:
            raise ValueError("S3_BUCKET: required when STORE_KIND=s3 (the bucket to store in)")
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ValueError("S3_ACCESS_KEY and S3_SECRET_KEY: set both or neither (neither: "
                             "boto3's own chain, e.g. an instance role)")
        # The API would stop in create_app with kombu's "Redis URL must specify one of the
        # following schemes" traceback ('redis'), or listen on no Postgres at all ('postgres').
        if (self.event_notify == "postgres"
                and setting_checks.database_backend(self.database_url) != "postgresql"):
            raise ValueError("EVENT_NOTIFY: 'postgres' needs a Postgres DATABASE_URL (LISTEN/"
                             "NOTIFY); use 'auto' or 'poll'")
        if self.event_notify == "redis" and not setting_checks.is_redis_url(self.broker_url):
            raise ValueError("EVENT_NOTIFY: 'redis' needs a Redis BROKER_URL (pub/sub on the "
                             "broker's Redis); use 'auto' or 'poll'")
        if self.webhook_retry_base_seconds > self.webhook_retry_max_seconds:
            raise ValueError("WEBHOOK_RETRY_BASE_SECONDS: must not exceed "
                             "WEBHOOK_RETRY_MAX_SECONDS")
        setting_checks.check_durations({
            name: getattr(self, name) for name in type(self).model_fields
            if name.endswith(("_seconds", "_days"))})
        return self

    def build_object_store(self) -> ObjectStore:
        """The object store these settings describe (one per process; it holds no global state)."""
        from persistence.storage import build_object_store

        store = build_object_store(
            self.store_kind,
            local_root=self.store_root,
            s3_bucket=self.s3_bucket,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_access_key=_secret(self.s3_access_key),
            s3_secret_key=_secret(self.s3_secret_key),
            s3_region=self.s3_region,
            s3_public_endpoint_url=self.s3_public_endpoint_url,
            s3_presign_expiry_s=self.s3_presign_expiry_s,
            s3_create_bucket=self.s3_create_bucket,
        )
        if self.test_upload_pause:
            from persistence.fault_injection import PausingObjectStore

            return PausingObjectStore.from_setting(store, self.test_upload_pause)
        return store

    @property
    def upload_scratch_dir(self) -> Path:
        """Where the API spools uploads while it checks them (the janitor sweeps it)."""
        return self.work_dir / "uploads"


class InvalidSettings(ValueError):
    """The environment holds settings the service cannot run with; the message is one line
    naming each variable at fault and what is wrong with it."""


#: Settings whose value may hold a password or token: their value is never quoted in an error.
_SECRET_BEARING = re.compile(r"url|key|token|secret|password", re.IGNORECASE)


#: variables renamed and still read under their old names: {new: old}
RENAMED_VARIABLES = {"QUEUED_RESEND_AFTER_SECONDS": "STAGE_REDISPATCH_SECONDS"}


def _variable_named(name: str) -> str:
    """The variable an error is about: a renamed one set only under its old name is named so,
    since that is the line the operator has to find."""
    old = RENAMED_VARIABLES.get(name)
    environ = {key.upper() for key in os.environ}
    if old is not None and old in environ and name not in environ:
        return old
    return name


def load_settings(**values: Any) -> Settings:
    """``Settings(**values)``, read from the environment, or :class:`InvalidSettings`.

    Pydantic's own error is a multi-line block that names the field in lower case; an operator
    sets upper-case variables and reads the first line of a crash-looping container's log.
    """
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _variable_named(".".join(str(part) for part in error["loc"]).upper())
            message = str(error["msg"]).removeprefix("Value error, ")
            if name and not _SECRET_BEARING.search(name) and "input" in error:
                message += f" (got {str(error['input'])[:100]!r})"
            problems.append(f"{name}: {message}" if name else message)
        raise InvalidSettings("invalid settings: " + "; ".join(problems)) from None
    except SettingsError as exc:
        # Raised before validation when a complex value (a JSON list) does not parse.
        match = re.search(r'field "(\w+)"', str(exc))
        name = match.group(1).upper() if match else "a setting"
        raise InvalidSettings(f"invalid settings: {name}: not valid JSON (a list is written "
                              '\'["a", "b"]\')') from None


#: How alike a variable's name must be to a setting's to be taken for a misspelling of it
#: (difflib's ratio): one letter dropped, doubled or swapped in ``DATABASE_URL``, ``S3_BUCKET``,
#: ``LOG_LEVEL`` passes (0.90-0.97), while other software's variables found beside ours
#: (``BUILD_COMMIT_SHA``: 0.86, ``AWS_*``, ``POSTGRES_*``, ``CELERY_*``) stay below.
MISSPELLING_CUTOFF = 0.88


#: Prefixes an operator may put in front of a setting's name, taking the service's variables to
#: be namespaced as many services' are (the clients' own are: ``RIFT_API_URL``); they are not.
GUESSED_PREFIXES = ("RIFT_",)


def misspelt_settings(environ: Mapping[str, str]) -> list[str]:
    """``'NAME' is not a setting (did you mean 'SETTING'?)`` for each upper-case variable of
    ``environ`` that is not a setting but nearly spells one, also behind a guessed prefix
    (``RIFT_DATABASE_URL``, ``RIFT_DATABSE_URL``). Such a variable is ignored, so the setting
    kept its default: a ``DATABSE_URL`` ran the service on the embedded SQLite file."""
    fields = list(Settings.model_fields)
    found = []
    for name in sorted(environ):
        if (not re.fullmatch(r"[A-Z][A-Z0-9_]+", name) or name.lower() in fields
                or name in RENAMED_VARIABLES.values()):
            continue
        meant = _setting_meant(name, fields)
        if meant is not None:
            setting, prefix = meant
            hint = f" settings have no {prefix} prefix" if prefix else ""
            found.append(f"{name} is not a setting (did you mean {setting.upper()}?{hint})")
    return found


def _setting_meant(name: str, fields: list[str]) -> tuple[str, str] | None:
    """The setting ``name`` nearly spells, with the guessed prefix it carries ('' for none)."""
    candidates = [("", name)] + [(prefix, name.removeprefix(prefix))
                                 for prefix in GUESSED_PREFIXES if name.startswith(prefix)]
    for prefix, candidate in candidates:
        close = difflib.get_close_matches(candidate.lower(), fields, n=1,
                                          cutoff=MISSPELLING_CUTOFF)
        if close:
            return close[0], prefix
    return None


def settings_or_exit(**values: Any) -> Settings:
    """:func:`load_settings` for an entry point (API, worker, CLIs): invalid settings, or a
    variable that misspells one (:func:`misspelt_settings`), stop the process with the one-line
    message and status 1 (``SystemExit``), not a traceback."""
    misspelt = misspelt_settings(os.environ)
    if misspelt:
        raise SystemExit("rift: invalid settings: " + "; ".join(misspelt)
                         + "; rename or unset it")
    try:
        return load_settings(**values)
    except InvalidSettings as exc:
        raise SystemExit(f"rift: {exc}") from None


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
