"""The service's settings: one pydantic-settings class, read from environment variables.

Each entry point (the API's app factory, the Celery worker module, the CLI, tests) builds one
``Settings()`` and passes it down; nothing else reads the environment. The defaults give the
embedded mode (SQLite, a local folder as object store, kombu's SQLAlchemy transport as broker) so a
fresh clone runs without servers; production sets ``DATABASE_URL`` (Postgres), ``BROKER_URL``
(Redis) and ``STORE_KIND=s3`` with the ``S3_*`` variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from persistence.storage import ObjectStore

GIB = 1024**3


class Settings(BaseSettings):
    """All settings of the API and the workers. Field ``x_y`` is read from the variable ``X_Y``."""

    # No prefix and no .env file: the variable names are the documented ones, and tests set the
    # environment of the processes they start explicitly.
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- database ---------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./var/rift.db",
        description="SQLAlchemy URL. SQLite ('sqlite:///path') or Postgres "
        "('postgresql+psycopg://user:pass@host/db'; 'postgresql://' is taken to mean psycopg 3).",
    )
    database_echo: bool = Field(False, description="Log every SQL statement (debugging).")

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

    # --- workers --------------------------------------------------------------------------------
    worker_lease_seconds: float = Field(
        60.0, gt=0,
        description="A stage's lease: renewed by a heartbeat while the stage runs; once it has "
        "expired (the worker died) another worker may claim the stage.")
    worker_recovery_interval_seconds: float = Field(
        15.0, gt=0, description="How often a worker looks for stages whose lease expired.")
    stage_redispatch_seconds: float = Field(
        3600.0, gt=0,
        description="A stage waiting this long for a worker is sent again (its message may have "
        "been lost in a crash); duplicates are harmless but cost a little.")
    max_stage_attempts: int = Field(
        3, ge=1, description="Claims of one stage before the job fails instead of retrying.")
    stage_retry_delay_seconds: float = Field(
        2.0, ge=0, description="Delay before re-running a stage that raised an unexpected error.")
    progress_interval_seconds: float = Field(
        1.0, ge=0, description="Throttle of progress writes and cancellation checks (s).")
    work_dir: Path = Field(Path("./var/work"), description="Scratch space of the workers.")
    worker_device: str | None = Field(
        None, description="Overrides the job's 'device' (e.g. 'cpu'); None: the job's, whose "
        "default 'auto' picks CUDA when present.")

    # --- observability (metrics, logs) ---------------------------------------------------------
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics on the API requires 'Authorization: Bearer "
        "<token>'; unset, /metrics is open (scrapers usually sit on a private network).")
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

    def build_object_store(self) -> ObjectStore:
        """The object store these settings describe (one per process; it holds no global state)."""
        from persistence.storage import build_object_store

        return build_object_store(
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


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
