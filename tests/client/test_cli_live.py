"""``riftctl`` end to end against the whole service (Postgres, Redis, a real Celery worker): a job
created from a checkpoint file and waited for (exit 0), a cancelled one (exit 1), the events of a
finished job, its artifacts downloaded with their SHA-256 checked, its report page, and its weights
materialized at another α, evaluated and downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from tests.client.conftest import FinishedJob, RunningApi
from tests.client.helpers import CLI_TIMEOUT_S, CLIENT_SOURCE, riftctl_command, run_riftctl
from tests.preloaded_launcher import Launcher

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_create_wait_succeeds(live_service: RunningApi, live_api_key: str | None,
                              digits_checkpoint_path: Path, finished_job: FinishedJob,
                              tmp_path: Path, cli_launcher: Launcher | None) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(finished_job.config))
    result = run_riftctl(["-o", "json", "jobs", "create", "--checkpoint",
                          str(digits_checkpoint_path), "--config", str(config), "--label",
                          "suite=riftctl", "--wait", "--timeout", "300"],
                         url=live_service.url, api_key=live_api_key, home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 0, result.stderr
    job = result.json()
    assert job["status"] == "succeeded" and job["labels"] == {"suite": "riftctl"}
    assert job["id"] != finished_job.job.id
    # The same checkpoint bytes, uploaded again by the CLI, have the same SHA-256.
    checkpoint = run_riftctl(["-o", "json", "checkpoints", "get", job["checkpoint_id"]],
                             url=live_service.url, api_key=live_api_key, home=tmp_path,
                             launcher=cli_launcher).json()
    assert checkpoint["sha256"] == finished_job.checkpoint.sha256


def test_cancelled_job_exits_1(live_service: RunningApi, live_api_key: str | None,
                               finished_job: FinishedJob, tmp_path: Path,
                               cli_launcher: Launcher | None) -> None:
    # The most fine-tuning epochs the service allows, far more than the few seconds the commands
    # take: the job cannot finish before the cancel arrives, which stops it at its next batch.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**finished_job.config,
                                  "finetune": {**finished_job.config["finetune"], "epochs": 200}}))

    def riftctl(*args: str) -> dict[str, object]:
        result = run_riftctl(["-o", "json", *args], url=live_service.url, api_key=live_api_key,
                             home=tmp_path, launcher=cli_launcher)
        assert result.exit_code == 0, result.stderr
        return dict(result.json())

    job = riftctl("jobs", "create", "--checkpoint", finished_job.checkpoint.id, "--config",
                  str(config))
    cancelled = riftctl("jobs", "cancel", str(job["id"]))
    assert cancelled["status"] == "cancelled" or cancelled["cancel_requested"] is True
    waited = run_riftctl(["jobs", "wait", str(job["id"]), "--timeout", "120"],
                         url=live_service.url, api_key=live_api_key, home=tmp_path, launcher=cli_launcher)
    assert waited.exit_code == 1, waited.stderr
    assert f"job {job['id']} cancelled" in waited.stdout


def test_events_and_download_of_a_finished_job(
        live_service: RunningApi, live_api_key: str | None, finished_job: FinishedJob,
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    job_id = finished_job.job.id

    def riftctl(*args: str) -> tuple[int, str, str]:
        result = run_riftctl(args, url=live_service.url, api_key=live_api_key, home=tmp_path,
                             launcher=cli_launcher)
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
    assert code == 6 and "nothing.bin" in err  # not found


def _small_files_only() -> None:
    """In the riftctl process: no file may grow past 16 KiB (a full disk, as near as a test
    gets without one: the write fails with an errno and no file name)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_a_download_that_cannot_be_written_names_the_file(
        live_service: RunningApi, live_api_key: str | None, finished_job: FinishedJob,
        tmp_path: Path) -> None:
    # Before, the error was "[Errno 27] File too large" ("No space left on device" on a full
    # disk) with "path": null: nothing said what was being saved, nor where.
    out = tmp_path / "weights"
    env = {k: v for k, v in os.environ.items() if k not in ("RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    env.update({"HOME": str(tmp_path), "RIFT_API_URL": live_service.url,
                "RIFT_API_KEY": live_api_key or "",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(CLIENT_SOURCE),
                                                            os.environ.get("PYTHONPATH")]))})
    done = subprocess.run([*riftctl_command(), "-o", "json", "jobs", "download",
                           finished_job.job.id, "tuned.safetensors", "--out", f"{out}/"],
                          env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          preexec_fn=_small_files_only, check=False)
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "local_file_error"
    assert error["path"] == str(out / "tuned.safetensors")
    assert "File too large" in error["message"] and "nothing was kept" in error["message"]
    assert list(out.iterdir()) == []  # neither the file nor a .part


def test_report_of_a_finished_job(live_service: RunningApi, live_api_key: str | None,
                                  finished_job: FinishedJob, tmp_path: Path,
                                  cli_launcher: Launcher | None) -> None:
    job_id = finished_job.job.id
    result = run_riftctl(["-o", "json", "jobs", "report", job_id, "--out", str(tmp_path)],
                         url=live_service.url, api_key=live_api_key, home=tmp_path, launcher=cli_launcher)
    code, out, err = result.exit_code, result.stdout, result.stderr
    assert code == 0, err
    report = Path(json.loads(out)["path"])
    assert report == tmp_path / f"{job_id}.html"
    assert "<html" in report.read_text().lower()


def test_materialize_wait_download(live_service: RunningApi, live_api_key: str | None,
                                   finished_job: FinishedJob, digits_checkpoint_path: Path,
                                   tmp_path: Path, cli_launcher: Launcher | None) -> None:
    job_id = finished_job.job.id
    alpha = 0.5
    result = run_riftctl(["-o", "json", "jobs", "materialize", job_id, "--alpha", str(alpha),
                          "--evaluate", "--wait", "--timeout", "240", "--download",
                          str(tmp_path / "weights")],
                         url=live_service.url, api_key=live_api_key, home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 0, result.stderr
    record = result.json()
    assert record["status"] == "succeeded" and record["alpha"] == alpha and record["evaluate"]
    assert 0 <= record["robust_accuracy"] <= record["clean_accuracy"] <= 100
    saved = Path(record["downloaded"]["path"])
    assert saved == tmp_path / "weights" / "tuned@0.5.safetensors"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == record["downloaded"]["sha256"]
    # The file holds (1 − α) θ_AT + α θ_FT.
    theta_at = safetensors.numpy.load_file(str(digits_checkpoint_path))
    finetuned = run_riftctl(["jobs", "download", job_id, "finetuned.safetensors", "--out",
                             str(tmp_path / "ft")], url=live_service.url, api_key=live_api_key,
                            home=tmp_path, launcher=cli_launcher)
    assert finetuned.exit_code == 0, finetuned.stderr
    theta_ft = safetensors.numpy.load_file(str(tmp_path / "ft" / "finetuned.safetensors"))
    tuned = safetensors.numpy.load_file(str(saved))
    assert tuned.keys() == theta_at.keys()
    for key, value in tuned.items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(value, (1 - alpha) * theta_at[key] + alpha * theta_ft[key],
                                       rtol=1e-6, atol=1e-6)
    # Text output of the same α: the record made above, not a new one.
    again = run_riftctl(["jobs", "materialize", job_id, "--alpha", str(alpha)],
                        url=live_service.url, api_key=live_api_key, home=tmp_path, launcher=cli_launcher)
    assert again.exit_code == 0, again.stderr
    assert f"materialization {record['id']} of job {job_id}: α = 0.5 succeeded" in again.stdout
