"""Settings with bad values: refused when read, with one line naming the variable and the problem,
by every entry point (API, worker, migrations) — not a traceback from SQLAlchemy, kombu or boto3
at the first use, and never a silently ignored value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persistence.settings import (
    RENAMED_VARIABLES,
    InvalidSettings,
    Settings,
    load_settings,
    misspelt_settings,
)

ROOT = Path(__file__).resolve().parents[2]

#: (variable, bad value, words the one-line error must contain besides the variable's name)
BAD_VALUES = [
    ("MAX_STAGE_ATTEMPTS", "abc", "valid integer"),
    ("MAX_STAGE_ATTEMPTS", "0", "greater than or equal to 1"),
    ("WORKER_LEASE_SECONDS", "-5", "greater than 0"),
    ("WORKER_LEASE_SECONDS", "inf", "finite number"),
    ("JOB_TIME_LIMIT_SECONDS", "nan", "finite number"),
    ("API_WORKERS", "0", "greater than or equal to 1"),
    ("S3_PRESIGN_EXPIRY_S", "99999999", "less than or equal"),
    ("STORE_KIND", "ftp", "'local' or 's3'"),
    ("EVENT_NOTIFY", "kafka", "'poll'"),
    ("LOG_FORMAT", "xml", "'json' or 'text'"),
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ("DATABASE_ECHO", "maybe", "boolean"),
    ("DATABASE_URL", "not a url", "not a database URL"),
    ("DATABASE_URL", "mysql://u@host/db", "'mysql' is not supported"),
    ("DATABASE_URL", "postgresql+asyncpg://u@host/db", "'asyncpg' is not installed"),
    ("DATABASE_URL", "postgresql+psycopg:///db", "needs a host"),
    # An '@' of the password unescaped: the service started, "unreachable" for ever.
    ("DATABASE_URL", "postgresql+psycopg://rift:p@ss@db:5432/rift", "as %40"),
    ("DATABASE_URL", "postgresql+psycopg://rift@db:65536/rift", "bad port 65536"),
    # Two slashes: SQLAlchemy's ArgumentError traceback at the first connection.
    ("DATABASE_URL", "sqlite://var/rift.db", "three slashes before a relative path"),
    ("BROKER_URL", "127.0.0.1:6379", "redis://host:6379/0"),
    ("BROKER_URL", "kafka://broker:9092", "'kafka'"),
    ("BROKER_URL", "redis://redis:notaport/0", "bad port"),
    ("BROKER_URL", "redis://redis:6379/rift", "database number must be a whole number"),
    ("BROKER_URL", "sqla+nosuchdb://x", "not supported"),
    # boto3's ParamValidationError / botocore's InvalidRegionError tracebacks at the start.
    ("S3_BUCKET", "s3://rift", "bare name"),
    ("S3_BUCKET", "rift/jobs", "bare name"),
    ("S3_REGION", "us east 1", "'us-east-1'"),
    ("S3_ENDPOINT_URL", "minio:9000", "http://host:port"),
    ("S3_PUBLIC_ENDPOINT_URL", "ftp://files", "http://host:port"),
    ("S3_ENDPOINT_URL", "http://minio:port/", "bad port"),
    ("WORKER_DEVICE", "gpu", "unknown device 'gpu'"),
    ("WEBHOOK_ALLOW_LIST", "10.0.0.0/33", "'10.0.0.0/33'"),
    ("CORS_ALLOW_ORIGINS", '["https://console.example.org"', "not a valid JSON list"),
    ("CORS_ALLOW_ORIGINS", "https://console.example.org/app", "did you mean"),
    ("CORS_ALLOW_ORIGINS", "https://*.example.org", "no wildcards"),
    ("CORS_ALLOW_ORIGINS", "*, https://console.example.org", "'*' (any origin) stands alone"),
    ("CORS_ALLOW_ORIGINS", "console.example", "an origin is 'https://host'"),
    # prometheus_client would write its files into the current directory.
    ("PROMETHEUS_MULTIPROC_DIR", " ", "empty"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No service variable of the test process leaks into the settings read."""
    for name in (*Settings.model_fields, *RENAMED_VARIABLES.values()):
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch




def test_a_renamed_variable_is_still_read_and_the_new_name_wins(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STAGE_REDISPATCH_SECONDS", "120")
    assert load_settings().queued_resend_after_seconds == 120
    clean_env.setenv("QUEUED_RESEND_AFTER_SECONDS", "90")
    assert load_settings().queued_resend_after_seconds == 90
    clean_env.delenv("QUEUED_RESEND_AFTER_SECONDS")
    clean_env.setenv("STAGE_REDISPATCH_SECONDS", "-1")
    with pytest.raises(InvalidSettings, match="STAGE_REDISPATCH_SECONDS"):
        load_settings()


@pytest.mark.parametrize(("name", "value", "words"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_variable(clean_env: pytest.MonkeyPatch, name: str,
                                                     value: str, words: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(InvalidSettings) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert f"{name}:" in message and words in message, message


def test_urls_are_never_quoted_in_the_error(clean_env: pytest.MonkeyPatch) -> None:
    # A URL may carry a password; its value stays out of the message (and so out of the logs).
    clean_env.setenv("DATABASE_URL", "mysql://admin:hunter2@db/x")
    clean_env.setenv("BROKER_URL", "redis://:hunter2@redis:xx/0")
    with pytest.raises(InvalidSettings) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)
    assert "DATABASE_URL:" in str(raised.value) and "BROKER_URL:" in str(raised.value)


@pytest.mark.parametrize(("env", "words"), [
    ({"STORE_KIND": "s3"}, "S3_BUCKET: required when STORE_KIND=s3"),
    ({"S3_ACCESS_KEY": "AKIA"}, "S3_ACCESS_KEY and S3_SECRET_KEY: set both or neither"),
    ({"WEBHOOK_RETRY_BASE_SECONDS": "60", "WEBHOOK_RETRY_MAX_SECONDS": "10"},
     "WEBHOOK_RETRY_BASE_SECONDS: must not exceed WEBHOOK_RETRY_MAX_SECONDS"),
    # Passed, then the API stopped in create_app with kombu's ValueError traceback ('redis'),
    # or its streams listened on no Postgres ('postgres' on the embedded SQLite).
    ({"EVENT_NOTIFY": "redis", "BROKER_URL": "sqla+sqlite:///var/broker.db"},
     "EVENT_NOTIFY: 'redis' needs a Redis BROKER_URL"),
    ({"EVENT_NOTIFY": "postgres", "DATABASE_URL": "sqlite:///var/rift.db"},
     "EVENT_NOTIFY: 'postgres' needs a Postgres DATABASE_URL"),
])
def test_settings_that_contradict_each_other(clean_env: pytest.MonkeyPatch, env: dict[str, str],
                                             words: str) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(InvalidSettings, match=words):
        load_settings()


#: Every setting that is a duration (a field named *_seconds or *_days).
DURATIONS = sorted(name.upper() for name in Settings.model_fields
                   if name.endswith(("_seconds", "_days")))


@pytest.mark.parametrize("name", DURATIONS)
def test_a_duration_past_a_century_is_refused(clean_env: pytest.MonkeyPatch, name: str) -> None:
    # 1e12 s or 999999 days, written to mean "never", passed and overflowed where a deadline was
    # computed from them: JOB_TIME_LIMIT_SECONDS in every recovery pass (no expired lease was
    # taken over any more), ARTIFACT_RETENTION_DAYS and JANITOR_GRACE_SECONDS in every janitor
    # run, the heartbeat and poll intervals in the thread that waits.
    value = "999999" if name.endswith("_DAYS") else "1000000000000"
    clean_env.setenv(name, value)
    with pytest.raises(InvalidSettings) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    # Named with this bound, or with a tighter one the setting had already.
    assert ((f"{name}: at most " in message and "(100 years; got " in message)
            or f"{name}: Input should be less than or equal to" in message
            or f"{name}: must not exceed" in message), message


def test_durations_of_a_century_pass(clean_env: pytest.MonkeyPatch) -> None:
    for name in DURATIONS:
        if name not in ("S3_PRESIGN_EXPIRY_S", "VALIDATION_CPU_SECONDS",
                        "DATABASE_CONNECT_TIMEOUT_SECONDS", "MLFLOW_HTTP_TIMEOUT_SECONDS"):
            clean_env.setenv(name, "36500" if name.endswith("_DAYS") else "3153600000")
    assert load_settings().job_time_limit_seconds == 3153600000


def test_good_values_pass_and_empty_optionals_mean_unset(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DATABASE_URL": "postgres://u:p@db:5432/rift", "BROKER_URL": "rediss://:p@r:6380/1",
        "STORE_KIND": "s3", "S3_BUCKET": "rift", "S3_ENDPOINT_URL": "http://minio:9000",
        "S3_PUBLIC_ENDPOINT_URL": "", "WORKER_DEVICE": "", "LOG_LEVEL": "debug",
        "WEBHOOK_ALLOW_LIST": "10.1.0.0/16, hooks.internal, 127.0.0.1, ::1",
        "CORS_ALLOW_ORIGINS": "https://console.example.org, http://localhost:3000",
    }.items():
        clean_env.setenv(name, value)
    settings = load_settings()
    assert settings.s3_public_endpoint_url is None and settings.worker_device is None
    assert settings.log_level == "DEBUG"
    assert settings.cors_allow_origins == ["https://console.example.org", "http://localhost:3000"]
    assert load_settings(broker_url="sqla+sqlite:///var/broker.db").broker_url.startswith("sqla")
    # The Postgres DATABASE_URL and the Redis BROKER_URL above carry either notification.
    assert load_settings(event_notify="postgres").event_notify == "postgres"
    assert load_settings(event_notify="redis").event_notify == "redis"


def _entry_point_env(**bad: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return {**env, "PYTHONPATH": str(ROOT), **bad}


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "api.preflight"],
    [sys.executable, "-m", "persistence.migrate"],
    [sys.executable, "-c", "from api.main import create_app; create_app()"],
    [sys.executable, "-c", "import worker.celery_app"],
], ids=["api-preflight", "migrate", "create_app", "worker"])
def test_every_entry_point_stops_with_one_line(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(command, cwd=tmp_path, env=_entry_point_env(MAX_STAGE_ATTEMPTS="0"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "rift: invalid settings: MAX_STAGE_ATTEMPTS: Input should be greater than or equal to 1 "
        "(got '0')"], result.stderr


def test_a_variable_misspelling_a_setting_is_named_with_the_setting_meant() -> None:
    environ = {"DATABSE_URL": "postgresql+psycopg://db/rift", "LOGLEVEL": "debug",
               "S3_BUCKETS": "rift", "MAX_STAGE_ATTEMPT": "5",
               # Settings themselves, and other software's variables found beside them.
               "DATABASE_URL": "sqlite:///x.db", "AWS_ACCESS_KEY_ID": "a", "POSTGRES_PASSWORD": "p",
               "CELERY_BROKER_URL": "redis://r", "BUILD_COMMIT_SHA": "abc", "RIFT_API_URL": "u",
               "RIFT_API_KEY": "k", "HOSTNAME": "h", "database_urls": "lower case: not ours",
               # A renamed setting's old name, still read.
               **{old: "60" for old in RENAMED_VARIABLES.values()}}
    assert misspelt_settings(environ) == [
        "DATABSE_URL is not a setting (did you mean DATABASE_URL?)",
        "LOGLEVEL is not a setting (did you mean LOG_LEVEL?)",
        "MAX_STAGE_ATTEMPT is not a setting (did you mean MAX_STAGE_ATTEMPTS?)",
        "S3_BUCKETS is not a setting (did you mean S3_BUCKET?)"]


def test_a_misspelt_variable_stops_the_start_with_one_line(tmp_path: Path) -> None:
    # Was ignored: DATABSE_URL left DATABASE_URL at its default, and the API served from an
    # SQLite file inside the container, its jobs lost with it.
    result = subprocess.run([sys.executable, "-m", "api.preflight"], cwd=tmp_path,
                            env=_entry_point_env(DATABSE_URL="postgresql+psycopg://db/rift"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "rift: invalid settings: DATABSE_URL is not a setting (did you mean DATABASE_URL?); "
        "rename or unset it"], result.stderr


def test_a_setting_behind_a_rift_prefix_is_named_with_the_setting_meant() -> None:
    # Was ignored: an operator taking the variables to be namespaced (as the clients' RIFT_API_URL
    # is) set RIFT_DATABASE_URL, and the service ran on its embedded SQLite file.
    environ = {"RIFT_DATABASE_URL": "postgresql+psycopg://db/rift", "RIFT_DATABSE_URL": "x",
               "RIFT_STORE_KIND": "s3",
               # The clients', the demo's, the tests' and compose's own RIFT_ variables.
               "RIFT_API_URL": "u", "RIFT_API_KEY": "k", "RIFT_DEMO_DIR": "d",
               "RIFT_DEMO_PORT": "8000", "RIFT_DATA_DIR": "./data", "RIFT_TEST_CACHE": "c",
               "RIFT_TEST_REDIS_URL": "redis://r", "RIFT_TEST_POSTGRES_ADMIN_URL": "p",
               "RIFT_TEST_FORK_WORKERS": "1", "RIFT_TEST_PROCESSES": "2"}
    assert misspelt_settings(environ) == [
        "RIFT_DATABASE_URL is not a setting (did you mean DATABASE_URL? settings have no RIFT_ "
        "prefix)",
        "RIFT_DATABSE_URL is not a setting (did you mean DATABASE_URL? settings have no RIFT_ "
        "prefix)",
        "RIFT_STORE_KIND is not a setting (did you mean STORE_KIND? settings have no RIFT_ "
        "prefix)"]
