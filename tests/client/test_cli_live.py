"""``riftctl`` end to end against the whole service (Postgres, Redis, a real Celery worker): a job
created from a checkpoint file and waited for (exit 0), a cancelled one (exit 1), the events of a
finished job, its artifacts downloaded with their SHA-256 checked, and its report page."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.client.conftest import FinishedJob, RunningApi
from tests.client.helpers import run_riftctl

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_create_wait_succeeds(live_service: RunningApi, live_api_key: str | None,
                              digits_checkpoint_path: Path, finished_job: FinishedJob,
                              tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(finished_job.config))
    result = run_riftctl(["-o", "json", "jobs", "create", "--checkpoint",
                          str(digits_checkpoint_path), "--config", str(config), "--label",
                          "suite=riftctl", "--wait", "--timeout", "300"],
                         url=live_service.url, api_key=live_api_key, home=tmp_path)
    assert result.exit_code == 0, result.stderr
    job = result.json()
    assert job["status"] == "succeeded" and job["labels"] == {"suite": "riftctl"}
    assert job["id"] != finished_job.job.id
    # The same checkpoint bytes, uploaded again by the CLI, have the same SHA-256.
    checkpoint = run_riftctl(["-o", "json", "checkpoints", "get", job["checkpoint_id"]],
                             url=live_service.url, api_key=live_api_key, home=tmp_path).json()
    assert checkpoint["sha256"] == finished_job.checkpoint.sha256


def test_cancelled_job_exits_1(live_service: RunningApi, live_api_key: str | None,
                               finished_job: FinishedJob, tmp_path: Path) -> None:
    # The most fine-tuning epochs the service allows, far more than the few seconds the commands
    # take: the job cannot finish before the cancel arrives, which stops it at its next batch.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**finished_job.config,
                                  "finetune": {**finished_job.config["finetune"], "epochs": 200}}))

    def riftctl(*args: str) -> dict[str, object]:
        result = run_riftctl(["-o", "json", *args], url=live_service.url, api_key=live_api_key,
                             home=tmp_path)
        assert result.exit_code == 0, result.stderr
        return dict(result.json())

    job = riftctl("jobs", "create", "--checkpoint", finished_job.checkpoint.id, "--config",
                  str(config))
    cancelled = riftctl("jobs", "cancel", str(job["id"]))
    assert cancelled["status"] == "cancelled" or cancelled["cancel_requested"] is True
    waited = run_riftctl(["jobs", "wait", str(job["id"]), "--timeout", "120"],
                         url=live_service.url, api_key=live_api_key, home=tmp_path)
    assert waited.exit_code == 1, waited.stderr
    assert f"job {job['id']} cancelled" in waited.stdout


def test_events_and_download_of_a_finished_job(
        live_service: RunningApi, live_api_key: str | None, finished_job: FinishedJob,
        tmp_path: Path) -> None:
    job_id = finished_job.job.id

    def riftctl(*args: str) -> tuple[int, str, str]:
        result = run_riftctl(args, url=live_service.url, api_key=live_api_key, home=tmp_path)
        return result.exit_code, result.stdout, result.stderr

    code, out, err = riftctl("-o", "json", "jobs", "events", job_id)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [
        e.id for e in finished_job.streamed]
    code, out, _ = riftctl("jobs", "events", job_id, "--after", str(finished_job.streamed[-2].id))
    assert code == 0 and out.splitlines()[0].split()[2] == "job_succeeded"

    code, out, err = riftctl("-o", "json", "jobs", "download", job_id, "--out",
                             str(tmp_path / "all"))
    assert code == 0, err
    saved = {item["name"]: item for item in json.loads(out)}
    assert {"tuned.safetensors", "mrc.csv", "result.json"} <= set(saved)
    for item in saved.values():
        assert hashlib.sha256(Path(item["path"]).read_bytes()).hexdigest() == item["sha256"]
    code, out, err = riftctl("jobs", "download", job_id, "mrc.csv", "--out", str(tmp_path / "one"))
    assert code == 0 and "sha256 verified" in out and (tmp_path / "one" / "mrc.csv").is_file()
    code, _, err = riftctl("jobs", "download", job_id, "nothing.bin")
    assert code == 3 and "nothing.bin" in err


def test_report_of_a_finished_job(live_service: RunningApi, live_api_key: str | None,
                                  finished_job: FinishedJob, tmp_path: Path) -> None:
    job_id = finished_job.job.id
    result = run_riftctl(["-o", "json", "jobs", "report", job_id, "--out", str(tmp_path)],
                         url=live_service.url, api_key=live_api_key, home=tmp_path)
    code, out, err = result.exit_code, result.stdout, result.stderr
    assert code == 0, err
    report = Path(json.loads(out)["path"])
    assert report == tmp_path / f"{job_id}.html"
    assert "<html" in report.read_text().lower()
