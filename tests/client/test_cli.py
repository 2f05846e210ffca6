"""``riftctl`` end to end (its own process, forked from the torch-free launcher: see
``run_riftctl``) against the real API with jobs left queued: uploads (and their own timeout),
records, lists of uploads and jobs, job creation, cancelling, webhooks, the config file,
``--output json`` and the documented exit codes (0 success, 1 job failed or cancelled, 2 usage
error, 3 refused by the service, 4 wait timed out, 5 auth, 6 not found, 7 unreachable)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.api.helpers import digits_config, varied_images
from tests.client.conftest import RunningApi
from tests.client.helpers import CliResult, ScriptedReply, ScriptedServer, run_riftctl
from tests.preloaded_launcher import Launcher

pytestmark = pytest.mark.service


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path / "model.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(digits_config()))
    return path


class Cli:
    def __init__(self, api: RunningApi, api_key: str | None, home: Path,
                 launcher: Launcher | None) -> None:
        self.api, self.api_key, self.home, self.launcher = api, api_key, home, launcher

    def __call__(self, *args: str, **env: str) -> CliResult:
        return run_riftctl(args, url=self.api.url, api_key=self.api_key, home=self.home, env=env,
                           launcher=self.launcher)


@pytest.fixture
def cli(queued_api: RunningApi, api_key: str | None, tmp_path: Path,
        cli_launcher: Launcher | None) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(queued_api, api_key, home, cli_launcher)


def test_usage(cli: Cli, checkpoint_file: Path) -> None:
    uploaded = cli("--output", "json", "checkpoints", "upload", str(checkpoint_file))
    assert uploaded.exit_code == 0, uploaded.stderr
    size = uploaded.json()["size"]
    shown = cli("--output", "json", "usage")
    assert shown.exit_code == 0, shown.stderr
    usage = shown.json()
    assert usage["stored_bytes"]["used"] == usage["stored_bytes"]["checkpoints"] == size
    assert usage["active_jobs"]["used"] == 0
    text = cli("usage")
    assert text.exit_code == 0, text.stderr
    limit = usage["stored_bytes"]["limit"]
    assert f"stored bytes: {size} of {limit}" in text.stdout
    assert f"active jobs: 0 of {usage['active_jobs']['limit']}" in text.stdout
    pending = usage["pending_materializations"]
    assert f"materializations queued or running: 0 of {pending['limit']}" in text.stdout
    # The live counts: this process's requests (the JSON call above among them), no stream.
    assert usage["requests_this_minute"]["used"] >= 1
    assert "requests this minute: " in text.stdout and " of " in text.stdout.split(
        "requests this minute: ")[1].splitlines()[0]
    assert (f"event streams open: 0 of {usage['max_streams_per_key']} by this key, 0 by the "
            "project") in text.stdout


def test_checkpoint_upload_get_and_job_lifecycle(cli: Cli, checkpoint_file: Path,
                                                 config_file: Path) -> None:
    uploaded = cli("--output", "json", "checkpoints", "upload", str(checkpoint_file))
    assert uploaded.exit_code == 0, uploaded.stderr
    record = uploaded.json()
    assert record["sha256"] == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()

    shown = cli("checkpoints", "get", record["id"])
    assert shown.exit_code == 0 and record["sha256"] in shown.stdout

    created = cli("-o", "json", "jobs", "create", "--checkpoint", record["id"], "--config",
                  str(config_file), "--label", "team=vision", "--idempotency-key", "ci-7")
    assert created.exit_code == 0, created.stderr
    job = created.json()
    assert job["status"] == "queued" and job["labels"] == {"team": "vision"}
    again = cli("-o", "json", "jobs", "create", "--checkpoint", record["id"], "--config",
                str(config_file), "--label", "team=vision", "--idempotency-key", "ci-7")
    assert again.json()["id"] == job["id"]

    # A file given as --checkpoint is sent with the job; this one holds a model and its EMA.
    import torch

    from tests.api.helpers import small_cnn_state

    ema_file = checkpoint_file.with_name("ema.pt")
    state = small_cnn_state()
    torch.save({"state_dict": state, "state_dict_ema": {k: v + 1 for k, v in state.items()}},
               ema_file)
    from_file = cli("-o", "json", "jobs", "create", "--checkpoint", str(ema_file),
                    "--config", str(config_file), "--checkpoint-entry", "state_dict_ema")
    assert from_file.exit_code == 0, from_file.stderr
    assert from_file.json()["id"] != job["id"]
    assert from_file.json()["config"]["checkpoint_entry"] == "state_dict_ema"
    # The file travels in the job's own request: a job refused stores no checkpoint (before,
    # the file was uploaded first and stayed behind), and the text output names the one stored.
    stored = cli("-o", "json", "checkpoints", "list").json()
    refused = cli("-o", "json", "jobs", "create", "--checkpoint", str(ema_file),
                  "--config", str(config_file), "--checkpoint-entry", "state_dict_emma")
    assert refused.exit_code == 3 and refused.error()["code"] == "checkpoint_entry", refused.stderr
    assert cli("-o", "json", "checkpoints", "list").json() == stored
    as_text = cli("jobs", "create", "--checkpoint", str(checkpoint_file), "--config",
                  str(config_file))
    assert as_text.exit_code == 0, as_text.stderr
    made = cli("-o", "json", "jobs", "get", as_text.stdout.split()[1]).json()
    assert as_text.stdout.strip() == f"job {made['id']} queued"
    assert f"uploaded {checkpoint_file.name} as checkpoint {made['checkpoint_id']}" in \
        as_text.stderr

    listed = cli("-o", "json", "jobs", "list", "--label", "team=vision")
    assert listed.exit_code == 0 and [j["id"] for j in listed.json()] == [job["id"]]
    table = cli("jobs", "list", "--limit", "1")
    assert table.exit_code == 0 and made["id"] in table.stdout
    assert cli("jobs", "get", job["id"]).stdout.startswith(f"job {job['id']}: queued")

    # Waiting on a job that stays queued gives up: exit 4.
    waited = cli("-o", "json", "jobs", "wait", job["id"], "--timeout", "0.5",
                 "--poll-interval", "0.2")
    assert waited.exit_code == 4 and waited.error()["code"] == "wait_timeout"
    # Cancelled: cancel exits 0, waiting on it then exits 1 (the job did not succeed).
    cancelled = cli("-o", "json", "jobs", "cancel", job["id"])
    assert cancelled.exit_code == 0 and cancelled.json()["status"] == "cancelled"
    after = cli("jobs", "wait", job["id"])
    assert after.exit_code == 1 and "cancelled" in after.stdout
    events = cli("-o", "json", "jobs", "events", job["id"])
    assert events.exit_code == 1
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert kinds and kinds[-1] == "job_cancelled"
    no_follow = cli("jobs", "events", "--no-follow", job["id"])
    assert no_follow.exit_code == 0 and "job_cancelled" in no_follow.stdout

    # Deleting: an active job is refused naming it; a finished one goes, and then its
    # checkpoint can go too (no riftctl command deleted a job before).
    active = cli("-o", "json", "jobs", "delete", from_file.json()["id"])
    assert active.exit_code == 3
    assert active.error()["code"] == "job_active" and active.error()["field"] == "job_id"
    deleted = cli("-o", "json", "jobs", "delete", job["id"])
    assert deleted.exit_code == 0 and deleted.json() == {"deleted": job["id"]}
    assert cli("jobs", "get", job["id"]).exit_code == 6


def test_api_errors_exit_with_their_code_and_the_error(cli: Cli, config_file: Path,
                                                       cli_launcher: Launcher | None) -> None:
    missing = cli("-o", "json", "jobs", "get", "no-such-job")
    assert missing.exit_code == 6 and missing.stdout == ""
    error = missing.error()
    assert error["status"] == 404 and error["code"] == "job_not_found" and error["field"] == "job_id"
    text = cli("jobs", "get", "no-such-job")
    assert text.exit_code == 6 and "job_not_found" in text.stderr and "job_id" in text.stderr
    invalid = cli("-o", "json", "jobs", "create", "--checkpoint", "ck_nothing", "--config",
                  str(config_file))
    assert invalid.exit_code == 3 and invalid.error()["field"] == "checkpoint_id"
    unreachable = run_riftctl(["jobs", "list"], url="http://127.0.0.1:9", api_key=None,
                              home=cli.home, launcher=cli_launcher)
    assert unreachable.exit_code == 7 and "127.0.0.1:9" in unreachable.stderr


def test_usage_errors_exit_2(cli: Cli, tmp_path: Path, config_file: Path) -> None:
    assert cli().exit_code == 2  # no command
    assert cli("jobs", "wait").exit_code == 2  # missing argument
    assert cli("jobs", "frobnicate").exit_code == 2
    assert cli("--output", "yaml", "jobs", "list").exit_code == 2
    assert cli("checkpoints", "upload", str(tmp_path / "absent.safetensors")).exit_code == 2
    assert cli("jobs", "create", "--checkpoint", "ck", "--config",
               str(tmp_path / "absent.json")).exit_code == 2
    not_json = tmp_path / "config.txt"
    not_json.write_text("epochs: 3")
    bad = cli("jobs", "create", "--checkpoint", "ck", "--config", str(not_json))
    assert bad.exit_code == 2 and "not valid JSON" in bad.stderr
    label = cli("jobs", "create", "--checkpoint", "ck", "--config", str(config_file), "--label",
                "novalue")
    assert label.exit_code == 2 and "KEY=VALUE" in label.stderr
    tiny = cli("jobs", "create", "--checkpoint", "ck", "--config", str(config_file),
               "--time-limit", "1e-9")
    assert tiny.exit_code == 2 and "--time-limit" in tiny.stderr
    assert cli("--help").exit_code == 0 and "Exit codes" in cli("--help").stdout


def test_config_file_gives_url_and_key(queued_api: RunningApi, api_key: str | None,
                                       tmp_path: Path, cli_launcher: Launcher | None) -> None:
    config = tmp_path / "riftctl.toml"
    key_line = f'api_key = "{api_key}"\n' if api_key else ""
    config.write_text(f'api_url = "{queued_api.url}"\n{key_line}')
    # No RIFT_API_URL: the URL comes from the file named by RIFTCTL_CONFIG.
    result = run_riftctl(["-o", "json", "jobs", "list"], url=None, api_key=None, home=tmp_path,
                         env={"RIFTCTL_CONFIG": str(config)}, launcher=cli_launcher)
    assert result.exit_code == 0, result.stderr
    assert result.json() == []
    # The default place: ~/.config/riftctl/config.toml.
    default = tmp_path / ".config" / "riftctl" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text(config.read_text())
    assert run_riftctl(["jobs", "list"], url=None, api_key=None, home=tmp_path,
                       launcher=cli_launcher).exit_code == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("api_url = \n")
    result = run_riftctl(["jobs", "list"], url=None, api_key=None, home=tmp_path,
                         env={"RIFTCTL_CONFIG": str(broken)}, launcher=cli_launcher)
    assert result.exit_code == 2 and "not valid TOML" in result.stderr
    absent = run_riftctl(["jobs", "list"], url=None, api_key=None, home=tmp_path,
                         env={"RIFTCTL_CONFIG": str(tmp_path / "nothing.toml")}, launcher=cli_launcher)
    assert absent.exit_code == 2


def test_checkpoints_and_datasets_list(cli: Cli, checkpoint_file: Path, tmp_path: Path) -> None:
    import io

    import numpy as np

    ids = [cli("-o", "json", "checkpoints", "upload", str(checkpoint_file)).json()["id"]
           for _ in range(3)]
    listed = cli("-o", "json", "checkpoints", "list", "--limit", "2")
    assert listed.exit_code == 0, listed.stderr
    assert [c["id"] for c in listed.json()] == ids[:0:-1]
    assert cli("-o", "json", "checkpoints", "list", "--format", "torch").json() == []
    table = cli("checkpoints", "list", "--format", "safetensors")
    assert table.exit_code == 0 and all(i in table.stdout for i in ids)
    assert "model.safetensors" in table.stdout
    refused = cli("-o", "json", "checkpoints", "list", "--format", "onnx")
    assert refused.exit_code == 3 and refused.error()["field"] == "format"

    path = tmp_path / "tiny.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10)
    path.write_bytes(buffer.getvalue())
    dataset = cli("-o", "json", "datasets", "upload", str(path)).json()
    shown = cli("-o", "json", "datasets", "list", "--kind", "npz")
    assert shown.exit_code == 0 and shown.json() == [dataset]
    assert cli("-o", "json", "datasets", "list", "--kind", "imagefolder").json() == []
    table = cli("datasets", "list")
    assert table.exit_code == 0 and dataset["id"] in table.stdout and "tiny.npz" in table.stdout
    assert cli("datasets", "list", "--limit", "0").exit_code == 2  # a usage error, sent nowhere
    refused = cli("-o", "json", "datasets", "list", "--kind", "builtin")
    assert refused.exit_code == 3 and refused.error()["field"] == "kind"


def test_checkpoint_delete(cli: Cli, queued_api: RunningApi, checkpoint_file: Path) -> None:
    record = cli("-o", "json", "checkpoints", "upload", str(checkpoint_file)).json()
    deleted = cli("-o", "json", "checkpoints", "delete", record["id"])
    assert deleted.exit_code == 0 and deleted.json() == {"deleted": record["id"]}
    gone = cli("-o", "json", "checkpoints", "get", record["id"])
    assert gone.exit_code == 6 and gone.error()["status"] == 404


def test_audit_list(cli: Cli, checkpoint_file: Path) -> None:
    record = cli("-o", "json", "checkpoints", "upload", str(checkpoint_file)).json()
    assert cli("checkpoints", "delete", record["id"]).exit_code == 0
    listed = cli("-o", "json", "audit", "list")
    assert listed.exit_code == 0, listed.stderr
    assert [(e["action"], e["resource_id"]) for e in listed.json()] == [
        ("checkpoint.deleted", record["id"]), ("checkpoint.uploaded", record["id"])]
    only = cli("-o", "json", "audit", "list", "--action", "checkpoint.uploaded", "-n", "5")
    assert [e["action"] for e in only.json()] == ["checkpoint.uploaded"]
    table = cli("audit", "list", "--resource", record["id"])
    assert table.exit_code == 0 and "checkpoint.deleted" in table.stdout
    assert cli("audit", "list", "--resource", "nothing-here").stdout.startswith("no audit events")
    refused = cli("-o", "json", "audit", "list", "--action", "job.renamed")
    assert refused.exit_code == 3 and refused.error()["field"] == "action"


def test_dataset_upload_get_delete(cli: Cli, tmp_path: Path) -> None:
    import io

    import numpy as np

    path = tmp_path / "tiny.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10)
    path.write_bytes(buffer.getvalue())
    uploaded = cli("-o", "json", "datasets", "upload", str(path))
    assert uploaded.exit_code == 0, uploaded.stderr
    record = uploaded.json()
    assert record["kind"] == "npz" and record["num_examples"] == 20
    shown = cli("datasets", "get", record["id"])
    assert shown.exit_code == 0 and record["sha256"] in shown.stdout
    deleted = cli("-o", "json", "datasets", "delete", record["id"])
    assert deleted.exit_code == 0 and deleted.json() == {"deleted": record["id"]}
    assert cli("datasets", "get", record["id"]).exit_code == 6


def test_a_dataset_file_given_as_dataset_is_uploaded_for_the_job(
        cli: Cli, tmp_path: Path, checkpoint_file: Path) -> None:
    import io

    import numpy as np

    path = tmp_path / "digits.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((60, 8, 8), np.float32), y=np.arange(60) % 10)
    path.write_bytes(buffer.getvalue())
    config = tmp_path / "npz.json"
    config.write_text(json.dumps({**digits_config(), "dataset": {"name": "npz"}}))
    # Before: the service's 422 "pass its id as 'dataset_id'", a request field riftctl builds.
    missing = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
                  "--config", str(config))
    assert missing.exit_code == 2 and missing.error()["field"] == "--dataset", missing.stderr
    assert "--dataset ID" in missing.error()["message"]
    # Before: "--dataset digits.npz" was sent as an id (422 on its pattern, exit 3).
    absent = cli("jobs", "create", "--checkpoint", str(checkpoint_file), "--config",
                 str(config), "--dataset", str(tmp_path / "absent.npz"))
    assert absent.exit_code == 2 and "not a dataset id" in absent.stderr
    made = cli("jobs", "create", "--checkpoint", str(checkpoint_file), "--config", str(config),
               "--dataset", str(path), "--idempotency-key", "npz-1")
    assert made.exit_code == 0, made.stderr
    job = cli("-o", "json", "jobs", "get", made.stdout.split()[1]).json()
    stored = cli("-o", "json", "datasets", "list").json()
    assert [d["id"] for d in stored] == [job["dataset_id"]]
    assert stored[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"uploaded digits.npz as dataset {job['dataset_id']}" in made.stderr
    # Run again under the same key: the same job, and no second copy of the data.
    again = cli("jobs", "create", "--checkpoint", str(checkpoint_file), "--config", str(config),
                "--dataset", str(path), "--idempotency-key", "npz-1")
    assert again.exit_code == 0 and again.stdout == made.stdout, again.stderr
    assert cli("-o", "json", "datasets", "list").json() == stored


def test_a_library_config_naming_its_data_file_runs_with_that_file_as_dataset(
        cli: Cli, tmp_path: Path, checkpoint_file: Path) -> None:
    """A config written for ``python -m rift run`` (the tabular demo's) keeps its data file in
    ``dataset.path``. Before, ``--dataset FILE`` uploaded the file and the job was then refused,
    422 "leave out 'path'"; without ``--dataset`` the usage error did not name the file."""
    import io

    import numpy as np

    path = tmp_path / "dïgits.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((60, 8, 8), np.float32), y=np.arange(60) % 10)
    path.write_bytes(buffer.getvalue())
    config = tmp_path / "library.json"
    config.write_text(json.dumps({**digits_config(),
                                  "dataset": {"name": "npz", "path": str(path)}}))
    missing = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
                  "--config", str(config))
    assert missing.exit_code == 2, missing.stderr
    assert f"--dataset {path} (the config's dataset.path)" in missing.error()["message"]
    made = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
               "--config", str(config), "--dataset", str(path))
    assert made.exit_code == 0, made.stderr
    job = cli("-o", "json", "jobs", "get", made.json()["id"]).json()
    assert job["status"] == "queued" and job["dataset_id"]
    text = cli("jobs", "create", "--checkpoint", str(checkpoint_file), "--config", str(config),
               "--dataset", job["dataset_id"])
    assert text.exit_code == 0, text.stderr
    assert f"left out the config's dataset.path ({path})" in " ".join(text.stderr.split())


def test_materialize_errors_and_wait_timeout(cli: Cli, config_file: Path,
                                             checkpoint_file: Path, tmp_path: Path,
                                             cli_launcher: Launcher | None) -> None:
    job = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file), "--config",
              str(config_file)).json()
    # The job is still queued: 409, exit 3, with the API's code and field.
    refused = cli("-o", "json", "jobs", "materialize", job["id"], "--alpha", "0.5", "--wait")
    assert refused.exit_code == 3 and refused.stdout == ""
    error = refused.error()
    assert error["status"] == 409 and error["code"] == "job_not_succeeded"
    assert error["field"] == "job_id"
    text = cli("jobs", "materialize", job["id"], "--alpha", "0.5")
    assert text.exit_code == 3 and "job_not_succeeded" in text.stderr
    # α outside [0, 1] is refused before any request: a usage error.
    assert cli("jobs", "materialize", job["id"], "--alpha", "2").exit_code == 2
    assert cli("jobs", "materialize", job["id"]).exit_code == 2  # --alpha is required

    # A materialization that stays running: --wait gives up after --timeout, exit 4.
    running = {"id": "mat_1", "job_id": "job_1", "alpha": 0.25, "evaluate": False,
               "status": "running", "artifact": "tuned@0.25.safetensors", "artifact_url": None,
               "clean_accuracy": None, "robust_accuracy": None, "error": None,
               "created_at": "2026-01-01T00:00:00Z", "finished_at": None,
               "url": "/v1/jobs/job_1/materializations/mat_1"}
    server = ScriptedServer([ScriptedReply(202, running), ScriptedReply(200, running)])
    try:
        waited = run_riftctl(["-o", "json", "jobs", "materialize", "job_1", "--alpha", "0.25",
                              "--wait", "--timeout", "0.5", "--poll-interval", "0.2"],
                             url=server.url, api_key="rift_test", home=cli.home, launcher=cli_launcher)
    finally:
        server.stop()
    assert waited.exit_code == 4, waited.stderr
    timeout = waited.error()
    assert timeout["code"] == "wait_timeout" and timeout["materialization_id"] == "mat_1"
    assert timeout["status"] == "running"
    assert [r.method for r in server.seen][:2] == ["POST", "GET"]


def test_what_riftctl_cannot_use_or_write_exits_2_without_a_traceback(
        cli: Cli, config_file: Path, checkpoint_file: Path, tmp_path: Path,
        cli_launcher: Launcher | None) -> None:
    # Each used to end in a Python traceback with exit 1, the code of a failed job.
    for url, key in (("http://[::1", "rift_abc"), ("127.0.0.1:8000", "rift_abc"),
                     (cli.api.url, "rift_abc_é"), (cli.api.url, "rift_abc_def\n")):
        refused = run_riftctl(["-o", "json", "jobs", "list"], url=url, api_key=key, home=cli.home,
                              launcher=cli_launcher)
        assert refused.exit_code == 2, refused.stderr
        assert refused.error()["code"] == "usage_error" and "Traceback" not in refused.stderr
        assert "rift_abc" not in refused.stderr
    job = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file), "--config",
              str(config_file)).json()
    report = cli("-o", "json", "jobs", "report", job["id"], "--out",
                 str(tmp_path / "absent" / "report.html"))
    assert report.exit_code == 2 and "Traceback" not in report.stderr
    assert report.error()["code"] == "local_file_error"
    assert report.error()["path"] == str(tmp_path / "absent" / "report.html")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    download = cli("jobs", "download", job["id"], "--out", str(a_file / "weights"))
    assert download.exit_code == 2 and "Traceback" not in download.stderr
    assert str(a_file / "weights") in download.stderr


def test_a_url_naming_another_server_exits_7_naming_it(cli: Cli, cli_launcher: Launcher | None) -> None:
    server = ScriptedServer([ScriptedReply(200, raw=b"<html>sign in</html>",
                                           content_type="text/html")])
    try:
        result = run_riftctl(["-o", "json", "jobs", "get", "job_1"], url=server.url,
                             api_key="rift_test", home=cli.home, launcher=cli_launcher)
    finally:
        server.stop()
    assert result.exit_code == 7 and "Traceback" not in result.stderr
    error = result.error()
    assert error["code"] == "unexpected_response" and error["status"] == 200
    assert server.url in error["message"]


def test_webhooks_create_list_get_deliveries_delete(cli: Cli, checkpoint_file: Path,
                                                    config_file: Path) -> None:
    url = "http://127.0.0.1:9/hooks/rift"  # allowed by queued_api; nothing is sent there
    created = cli("-o", "json", "webhooks", "create", url, "--event", "job.cancelled",
                  "--description", "ci", "--idempotency-key", "hook-1")
    assert created.exit_code == 0, created.stderr
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.cancelled"]
    again = cli("-o", "json", "webhooks", "create", url, "--event", "job.cancelled",
                "--description", "ci", "--idempotency-key", "hook-1")
    assert (again.json()["id"], again.json()["secret"]) == (hook["id"], hook["secret"])
    # One endpoint per URL: the same URL without the key is refused, naming the endpoint.
    refused = cli("webhooks", "create", url)
    assert refused.exit_code == 3 and "webhook_url_registered" in refused.stderr
    assert hook["id"] in refused.stderr
    text = cli("webhooks", "create", f"{url}/second")
    assert text.exit_code == 0 and "secret whsec_" in text.stdout and "shown once" in text.stdout

    listed = cli("-o", "json", "webhooks", "list")
    assert listed.exit_code == 0 and len(listed.json()) == 2
    assert all("secret" not in h for h in listed.json())
    table = cli("webhooks", "list")
    assert table.exit_code == 0 and hook["id"] in table.stdout and url in table.stdout
    shown = cli("webhooks", "get", hook["id"])
    assert shown.exit_code == 0 and "job.cancelled" in shown.stdout
    fetched = cli("-o", "json", "webhooks", "get", hook["id"]).json()
    assert fetched.pop("etag").startswith('"')  # the ETag it was read with (delete --if-match)
    assert fetched == {k: v for k, v in hook.items() if k != "secret"}

    assert cli("-o", "json", "webhooks", "deliveries", hook["id"]).json() == []
    job = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file), "--config",
              str(config_file)).json()
    assert cli("jobs", "cancel", job["id"]).exit_code == 0
    [delivery] = cli("-o", "json", "webhooks", "deliveries", hook["id"], "--limit", "5").json()
    assert (delivery["event_type"], delivery["job_id"], delivery["status"]) == (
        "job.cancelled", job["id"], "pending")
    lines = cli("webhooks", "deliveries", hook["id"]).stdout
    assert f"{delivery['id']} job.cancelled job {job['id']}: pending, 0 attempts" in lines

    deleted = cli("-o", "json", "webhooks", "delete", hook["id"])
    assert deleted.exit_code == 0 and deleted.json() == {"deleted": hook["id"]}
    for args in (("webhooks", "get", hook["id"]), ("webhooks", "deliveries", hook["id"]),
                 ("webhooks", "delete", hook["id"])):
        gone = cli("-o", "json", *args)
        assert gone.exit_code == 6 and gone.error()["code"] == "webhook_not_found"
        assert gone.error()["field"] == "webhook_id"


def test_webhook_errors_exit_3_and_bad_options_exit_2(cli: Cli) -> None:
    forbidden = cli("-o", "json", "webhooks", "create", "http://10.1.2.3/hooks")
    assert forbidden.exit_code == 3 and forbidden.stdout == ""
    assert forbidden.error()["code"] == "webhook_target_forbidden"
    assert forbidden.error()["field"] == "url"
    text = cli("webhooks", "create", "ftp://example.org/hooks")
    assert text.exit_code == 3 and "url" in text.stderr
    unknown = cli("webhooks", "create", "http://127.0.0.1:9/h", "--event", "job.started")
    assert unknown.exit_code == 2 and "job.started" in unknown.stderr
    assert cli("webhooks", "deliveries", "wh_1", "--limit", "0").exit_code == 2
    assert cli("webhooks", "create").exit_code == 2  # the URL is required
    assert cli("-o", "json", "webhooks", "list").json() == []  # nothing was registered


def test_upload_timeout_covers_the_services_check(cli: Cli, checkpoint_file: Path,
                                                  cli_launcher: Launcher | None) -> None:
    record = {"id": "ck_1", "filename": checkpoint_file.name,
              "size": checkpoint_file.stat().st_size,
              "sha256": hashlib.sha256(checkpoint_file.read_bytes()).hexdigest(),
              "format": "safetensors", "num_tensors": 1, "num_parameters": 1,
              "created_at": "2026-01-01T00:00:00Z"}
    server = ScriptedServer([ScriptedReply(201, record, delay_s=1.0)])
    try:
        # The check outlasts --timeout-http, not --upload-timeout: one request, answered.
        waited = run_riftctl(["-o", "json", "--timeout-http", "0.3", "--upload-timeout", "10",
                              "checkpoints", "upload", str(checkpoint_file)],
                             url=server.url, api_key="rift_test", home=cli.home, launcher=cli_launcher)
        assert waited.exit_code == 0, waited.stderr
        assert waited.json()["id"] == "ck_1" and len(server.seen) == 1
        assert cli("--upload-timeout", "0", "checkpoints", "upload",
                   str(checkpoint_file)).exit_code == 2
    finally:
        server.stop()


def test_mrc_and_curves_as_tables_and_json(cli: Cli, queued_api: RunningApi, api_key: str | None,
                                           checkpoint_file: Path, config_file: Path) -> None:
    import httpx

    from persistence.db import session_factory_from_settings
    from persistence.models import InterpolationPoint, MRCRow

    created = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
                  "--config", str(config_file))
    assert created.exit_code == 0, created.stderr
    job_id = created.json()["id"]
    empty = cli("jobs", "curves", job_id)
    assert empty.exit_code == 0 and "no curves yet" in empty.stdout
    long_name = "backbone." + "stages.3.blocks.2." * 6 + "attn.qkv"
    sessions = session_factory_from_settings(queued_api.settings)
    try:
        with sessions() as session:
            # branch: its weight gradient was zero on every MRC batch (never chosen); its MRC
            # 0 read as the best candidate.
            for position, (module, mrc, flag) in enumerate([
                    ("conv1", 0.4, False), (long_name, 0.01, None), ("branch", 0.0, True)]):
                session.add(MRCRow(job_id=job_id, position=position, module=module,
                                   parameters=100, mrc=mrc, worst_robust_loss=1.0 + mrc,
                                   robust_accuracy_at_worst=None, robust_accuracy_drop=2.5,
                                   zero_gradient=flag))
            # The exact α selection leaves points unmeasured (null) or bounded (≤).
            for position, (alpha, robust, bound) in enumerate([(0.0, 41.0, None),
                                                               (0.5, None, 38.5),
                                                               (1.0, None, None)]):
                session.add(InterpolationPoint(job_id=job_id, position=position, alpha=alpha,
                                               clean_accuracy=80 + alpha, robust_accuracy=robust,
                                               robust_accuracy_at_most=bound))
            session.commit()
    finally:
        sessions.kw["bind"].dispose()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for command in ("mrc", "curves"):
        as_json = cli("-o", "json", "jobs", command, job_id)
        assert as_json.exit_code == 0, as_json.stderr
        assert len(as_json.stdout.strip().splitlines()) == 1  # one JSON document, one line
        # Machine-readable output is the API's own answer, unchanged.
        api_answer = httpx.get(f"{queued_api.url}/v1/jobs/{job_id}/{command}",
                               headers=headers).json()
        assert as_json.json() == api_answer
    table = cli("jobs", "mrc", job_id)
    assert table.exit_code == 0, table.stderr
    assert table.stdout.startswith(f"job {job_id}: queued, selected module –")
    assert "conv1" in table.stdout and "0.4" in table.stdout and "–" in table.stdout
    flagged = [line for line in table.stdout.splitlines() if "(no effect: not chosen)" in line]
    assert "branch (no effect: not chosen)" in flagged[0], table.stdout  # the table's row
    assert len(flagged) == 2 and "output does not depend on it" in flagged[1]  # the line under
    assert [row["zero_gradient"] for row in cli("-o", "json", "jobs", "mrc", job_id).json()[
        "rows"]] == [False, None, True]
    curves = cli("jobs", "curves", job_id)
    assert curves.exit_code == 0, curves.stderr
    assert "≤ 38.5" in curves.stdout and "41" in curves.stdout
    missing = cli("-o", "json", "jobs", "mrc", "0123456789abcdef0123456789abcdef")
    assert missing.exit_code == 6 and missing.error()["code"] == "job_not_found"


def test_a_jobs_warnings_in_get_wait_and_json(cli: Cli, queued_api: RunningApi,
                                              checkpoint_file: Path, config_file: Path) -> None:
    """``jobs get`` lists the job's warnings; ``jobs wait`` (as ``jobs create --wait``) prints
    them on stderr when the job has ended, also with --quiet; JSON carries them in the job."""
    from persistence import jobs
    from persistence.db import session_factory_from_settings
    from persistence.models import Job, utcnow

    created = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
                  "--config", str(config_file))
    assert created.exit_code == 0, created.stderr
    warned = created.json()["id"]
    again = cli("-o", "json", "jobs", "create", "--checkpoint", created.json()["checkpoint_id"],
                "--config", str(config_file))
    assert again.exit_code == 0, again.stderr
    quiet = again.json()["id"]
    unchanged = "no α > 0 kept the robust accuracy of the original weights [try a smaller lr]"
    sessions = session_factory_from_settings(queued_api.settings)
    try:
        with sessions() as session:
            for payload in ({"stage": "interpolate", "message": unchanged},
                            {"stage": "finetune", "candidate": 1, "message": "<b>diverged</b>"},
                            {"stage": "interpolate", "message": unchanged}):
                jobs.append_event(session, warned, "warning", payload)
            for job_id in (warned, quiet):  # ended, as a worker ends them
                row = session.get(Job, job_id)
                assert row is not None
                row.status, row.finished_at = "succeeded", utcnow()
            session.commit()
    finally:
        sessions.kw["bind"].dispose()
    lines = [f"warning (interpolate): {unchanged} (×2)",
             "warning (finetune, candidate 1): <b>diverged</b>"]

    waited = cli("jobs", "wait", warned)
    assert waited.exit_code == 0, waited.stderr
    assert [line for line in waited.stderr.splitlines() if line.startswith("warning")] == lines
    assert waited.stdout.strip() == f"job {warned} succeeded" and "warning" not in waited.stdout
    assert "warning (interpolate)" in cli("--quiet", "jobs", "wait", warned).stderr
    shown = cli("jobs", "get", warned)
    assert shown.exit_code == 0, shown.stderr
    assert [line.strip() for line in shown.stdout.splitlines()
            if line.strip().startswith("warning")] == lines
    as_json = cli("-o", "json", "jobs", "wait", warned)
    assert as_json.exit_code == 0 and "warning" not in as_json.stderr
    assert [(w["stage"], w["count"]) for w in as_json.json()["warnings"]] == [
        ("interpolate", 2), ("finetune", 1)]
    assert as_json.json()["warnings_total"] == 2

    listed = cli("jobs", "list")  # a column counts each job's distinct warnings
    assert listed.exit_code == 0, listed.stderr
    assert "warnings" in listed.stdout.splitlines()[1]
    rows = {job_id: line.split() for line in listed.stdout.splitlines()
            for job_id in (warned, quiet) if job_id in line}
    assert "2" in rows[warned] and "2" not in rows[quiet]  # the quiet job's cell is empty

    for args in (("jobs", "wait", quiet), ("jobs", "get", quiet)):
        none = cli(*args)
        assert none.exit_code == 0, none.stderr
        assert "warning" not in none.stderr + none.stdout


def test_a_failed_jobs_error_field_in_get_wait_and_json(
        cli: Cli, queued_api: RunningApi, checkpoint_file: Path, config_file: Path) -> None:
    """The setting a failed job's library error blames: ``jobs get`` prints it on a line of its
    own (``field: attack.domain``), ``jobs wait`` after the error, JSON as the API's
    ``error.field``. Before, the job's error had code and message only."""
    from persistence import stages
    from persistence.db import session_factory_from_settings

    created = cli("-o", "json", "jobs", "create", "--checkpoint", str(checkpoint_file),
                  "--config", str(config_file))
    assert created.exit_code == 0, created.stderr
    job_id = created.json()["id"]
    sessions = session_factory_from_settings(queued_api.settings)
    try:
        with sessions() as session:
            stages.fail_job(session, job_id, "invalid_config", "outside attack.domain",
                            field="attack.domain")
    finally:
        sessions.kw["bind"].dispose()
    shown = cli("jobs", "get", job_id)
    assert shown.exit_code == 0, shown.stderr
    assert "  error: invalid_config: outside attack.domain\n" in shown.stdout
    assert "  field: attack.domain\n" in shown.stdout, shown.stdout
    as_json = cli("-o", "json", "jobs", "get", job_id)
    assert as_json.json()["error"] == {"code": "invalid_config",
                                       "message": "outside attack.domain",
                                       "field": "attack.domain"}
    waited = cli("jobs", "wait", job_id)
    assert waited.exit_code == 1
    assert (f"job {job_id} failed: invalid_config: outside attack.domain "
            "(field: attack.domain)") in waited.stdout + waited.stderr


def test_a_jobs_manifest_or_result_given_as_the_config_creates_the_job_again(
        cli: Cli, checkpoint_file: Path, tmp_path: Path) -> None:
    """A job's manifest.json or result.json, downloaded, is what a researcher repeats it from:
    its config is the one sent. Before, the file was refused as "a whole job request"."""
    uploaded = cli("--output", "json", "checkpoints", "upload", str(checkpoint_file)).json()
    config = digits_config()
    for name, record in (("manifest.json", {"manifest_version": 1, "config": config,
                                            "checkpoint_sha256": uploaded["sha256"]}),
                         ("result.json", {"config": config, "chosen_alpha": 0.5})):
        path = tmp_path / name
        path.write_text(json.dumps(record))
        created = cli("-o", "json", "jobs", "create", "--checkpoint", uploaded["id"],
                      "--config", str(path))
        assert created.exit_code == 0, created.stderr
        from rift.config import RiftConfig

        assert RiftConfig.model_validate(created.json()["config"]) == \
            RiftConfig.model_validate(config), name
