"""The deployment files: docker-compose.yml validates and describes the promised topology.

No Docker engine is needed: `docker-compose config -q` only parses and checks the file, and the
rest is read with PyYAML.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICE_ENV = (
    "DATABASE_URL",
    "BROKER_URL",
    "STORE_KIND",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_REGION",
)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    return document["services"]


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_compose_file_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package `docker-compose`)")
    # Variables the file interpolates must come from its defaults, not from this shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "worker", "postgres", "redis", "minio"} <= set(services)


def test_worker_reserves_one_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    long_running = {n: s for n, s in services.items() if str(s.get("restart")) != "no"}
    assert {"api", "worker", "postgres", "redis", "minio"} <= set(long_running)
    missing = [n for n, s in long_running.items() if not s.get("healthcheck", {}).get("test")]
    assert missing == []


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            condition = rule["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), name
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"
    for name in ("api", "worker"):
        assert {"postgres", "redis", "minio"} <= set(services[name]["depends_on"])


@pytest.mark.parametrize("name", ["api", "worker"])
def test_service_environment(services: dict[str, dict[str, Any]], name: str) -> None:
    env = services[name]["environment"]
    assert [k for k in SERVICE_ENV if k not in env] == []
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["BROKER_URL"].startswith("redis://redis:")
    assert env["STORE_KIND"] == "s3"
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"


def test_commands_name_the_entry_points(services: dict[str, dict[str, Any]]) -> None:
    api = command_text(services["api"])
    assert re.search(r"python -m api\.preflight && exec uvicorn api\.main:create_app --factory", api)
    # Several API processes in production, as many as API_WORKERS says.
    assert re.search(r'--workers "\$\$\{API_WORKERS:-\d+\}"', api)
    assert "API_WORKERS" in services["api"]["environment"]
    # uvicorn's own refusals in the API's JSON, the request head bounded by the setting.
    assert "--http api.http_protocol:HttpToolsProtocol" in api
    assert re.search(r'--h11-max-incomplete-event-size "\$\$\{REQUEST_HEAD_MAX_BYTES:-\d+\}"', api)
    assert "REQUEST_HEAD_MAX_BYTES" in services["api"]["environment"]
    assert "celery -A worker.celery_app worker" in command_text(services["worker"])
    assert services["api"]["image"] == services["worker"]["image"]  # one image, two roles
    # The API's processes share their metrics through files; a worker (same image) must not
    # switch prometheus_client to them (its metrics are its own, on its own port).
    assert services["api"]["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("${")
    assert all("PROMETHEUS_MULTIPROC_DIR" not in (service.get("environment") or {})
               for name, service in services.items() if name != "api")


def image_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the service's own image (the API's)."""
    return {name: service for name, service in services.items()
            if service.get("image") == services["api"]["image"]}


def test_every_service_of_the_image_can_build_it(services: dict[str, dict[str, Any]]) -> None:
    # `webhooks` had no `build`: Debian's docker-compose 1.29 readies the services' images in
    # dependency order, which puts webhooks before api and worker, and pulled rift-service from
    # Docker Hub ("pull access denied") on a host that had not built it yet.
    ours = image_services(services)
    assert {"api", "worker", "webhooks", "migrate"} <= set(ours)
    assert {name: service.get("build") for name, service in ours.items()} == {
        name: services["api"]["build"] for name in ours}


def test_the_database_is_migrated_once_before_any_service_uses_it(
        services: dict[str, dict[str, Any]]) -> None:
    # The api migrated in its own command while the workers started beside it: on a fresh
    # database, or after an upgrade, worker and webhooks met a schema not yet (or not fully)
    # migrated, stopped ("run python -m persistence.migrate") and restarted until the api was done.
    migrate = services["migrate"]
    assert command_text(migrate) == "python -m persistence.migrate"
    assert str(migrate["restart"]) == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["environment"]["DATABASE_URL"] == services["api"]["environment"]["DATABASE_URL"]
    for name, service in image_services(services).items():
        if name == "migrate":
            continue
        assert service["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}, name
        assert not re.search(r"alembic|persistence\.migrate", command_text(service)), name


@pytest.mark.parametrize("name", ["worker", "webhooks"])
def test_worker_healthchecks_ping_their_own_node_without_loading_torch(
        services: dict[str, dict[str, Any]], name: str) -> None:
    # Was `celery -A worker.celery_app inspect ping`: the worker module, and torch with it, loaded
    # every 30 s (6 CPU s; 20 s on a loaded host, against the check's 15 s timeout).
    node = re.search(r"--hostname=(\w+)@%h", command_text(services[name]))
    assert node is not None, command_text(services[name])
    test = services[name]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "celery" not in test[1]
    assert re.fullmatch(rf"python -m worker\.healthcheck {node.group(1)}@\$\$HOSTNAME --timeout \d+",
                        test[1]), test[1]


def test_workers_serving_metrics_run_one_pool_child(services: dict[str, dict[str, Any]]) -> None:
    # A prefork worker serves WORKER_METRICS_PORT from its pool child; the webhooks worker ran 4
    # children on port 9100: three warned "port is not free" at every start, and their counts
    # were served by no one.
    for name, service in image_services(services).items():
        command = command_text(service)
        if "celery" not in command:
            continue
        port = str((service.get("environment") or {}).get("WORKER_METRICS_PORT", "0"))
        concurrency = re.search(r"--concurrency[= ](\d+)", command)
        assert port == "0" or (concurrency is not None and concurrency.group(1) == "1"), name


def test_dockerfile_base_and_default_command() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r'^CMD \["sh", "-c", "export PROMETHEUS_MULTIPROC_DIR=\\"\$\{'
                     r'PROMETHEUS_MULTIPROC_DIR:-/dev/shm/[^}]+\}\\" && python -m api\.preflight && '
                     r'exec uvicorn api\.main:create_app --factory .*'
                     r'--workers \\"\$\{API_WORKERS\}\\"[^\]]*"\]', text, re.MULTILINE)
    assert re.search(r"^ENV API_WORKERS=\d+", text, re.MULTILINE)
    assert '--http api.http_protocol:HttpToolsProtocol --h11-max-incomplete-event-size ' \
        '\\"${REQUEST_HEAD_MAX_BYTES}\\"' in text
    assert re.search(r"^ENV REQUEST_HEAD_MAX_BYTES=\d+", text, re.MULTILINE)
    from uvicorn.importer import import_from_string

    from api.http_protocol import HttpToolsProtocol
    assert import_from_string("api.http_protocol:HttpToolsProtocol") is HttpToolsProtocol
    # The uvicorn workers share one validator server, in a folder the rift user owns (/app/var).
    socket = re.search(r"^ENV VALIDATION_SOCKET=(\S+)$", text, re.MULTILINE)
    assert socket is not None and socket.group(1).startswith("/app/var/")
    assert "chown rift:rift /app/var" in text


def _api_server_command(shell_text: str) -> list[str]:
    """The words of the API's start command from ``preflight`` on, each variable written
    ``$NAME`` whatever its quoting or default (compose's ``$${NAME:-4}``, the image's
    ``${NAME}``)."""
    words = shlex.split(shell_text)
    words = words[words.index("python"):]
    return [re.sub(r"^\$+\{(\w+)(?::-[^}]*)?\}$", r"$\1", word) for word in words]


def test_the_image_and_compose_start_the_api_alike(services: dict[str, dict[str, Any]]) -> None:
    # The image's own command kept uvicorn's access log, which compose turns off: run without
    # compose, every request was logged twice, once as uvicorn's plain text (not JSON, not
    # carrying the request id).
    compose = services["api"]["command"]
    assert compose[:2] == ["sh", "-c"]
    match = re.search(r'^CMD (\[.*\])$', DOCKERFILE.read_text(), re.MULTILINE)
    assert match is not None
    image = json.loads(match.group(1))
    assert image[:2] == ["sh", "-c"]
    image_words, compose_words = _api_server_command(image[2]), _api_server_command(compose[2])
    assert image_words == compose_words
    assert image_words[:4] == ["python", "-m", "api.preflight", "&&"]
    assert "--no-access-log" in image_words


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", "alembic.ini", "migrations", "api", "worker",
              "persistence", "rift", "validator", "reporting"]  # fmt: skip
    excluded = [n for n in needed if any(fnmatch.fnmatch(n, p) for p in patterns)]
    assert excluded == []


def test_entry_points_exist_once_written() -> None:
    """The module names compose runs are the ones the code defines."""
    targets = {ROOT / "api" / "main.py": "create_app", ROOT / "worker" / "celery_app.py": "app"}
    for path, name in targets.items():
        if not path.exists():
            pytest.skip(f"{path.relative_to(ROOT)} is not written yet")
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        }
        assert name in defined, f"{path.relative_to(ROOT)} defines no {name!r}"


def test_image_requirements_add_the_extras_named_and_refuse_unknown_ones() -> None:
    script = ROOT / "scripts" / "image_requirements.py"

    def run(extras: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), extras], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = run("")
    assert base.returncode == 0 and base.stdout.split() == project["dependencies"]
    with_mlflow = run(" mlflow ")
    assert with_mlflow.stdout.split() == [*project["dependencies"],
                                          *project["optional-dependencies"]["mlflow"]]
    unknown = run("mlflow,gpu-extra")
    assert unknown.returncode == 2 and "gpu-extra is not an extra" in unknown.stderr
    assert unknown.stdout == ""
    # The image's dependency layer is made by the script from the build argument.
    text = DOCKERFILE.read_text()
    assert re.search(r'^ARG EXTRAS=""$', text, re.MULTILINE)
    assert 'python image_requirements.py "${EXTRAS}" > /tmp/requirements.txt' in text
