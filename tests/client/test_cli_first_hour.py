"""``riftctl`` as a first user meets it following the README: piped tables keep every column and
value, a mistyped file or missing config is a usage error naming its option, command summaries
are whole sentences, accuracies are rounded, and ``--out folder/`` is a folder (a scripted
server, no API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import RunningApi
from tests.client.helpers import ScriptedReply, ScriptedServer, run_riftctl
from tests.preloaded_launcher import Launcher

SHA = "8f3933a72a18903895fbf0c4e9a084c4f289bb3f79447fb546f8acdb2fab99f8"
CHECKPOINT = {"id": "4d453b1b08b64fb396ca99de0e7b01f5", "filename": "model.safetensors",
              "size": 98856, "sha256": SHA, "format": "safetensors", "num_tensors": 20,
              "num_parameters": 24285, "created_at": "2026-11-26T17:49:00Z"}


def _job(**changes: Any) -> dict[str, Any]:
    job = {"id": "job_1", "status": "succeeded", "checkpoint_id": CHECKPOINT["id"],
           "selected_module": "fc", "chosen_alpha": 1.0, "created_at": "2026-11-26T17:49:00Z",
           "updated_at": "2026-11-26T17:49:02Z", "finished_at": "2026-11-26T17:49:02Z"}
    return {**job, **changes}


def _flat(text: str) -> str:
    """The text with rich's box and wrapping undone, for messages in an error panel."""
    return " ".join(text.replace("│", " ").split())


def test_tables_piped_keep_every_column_and_whole_values(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, {"items": [CHECKPOINT], "next_cursor": None}),
                             ScriptedReply(200, CHECKPOINT)])
    narrow = {"COLUMNS": "80"}  # what rich assumes when stdout is not a terminal
    try:
        listed = run_riftctl(["checkpoints", "list"], url=server.url, api_key="rift_test",
                             home=tmp_path, env=narrow)
        shown = run_riftctl(["checkpoints", "get", CHECKPOINT["id"]], url=server.url,
                            api_key="rift_test", home=tmp_path, env=narrow)
    finally:
        server.stop()
    assert listed.exit_code == 0 and shown.exit_code == 0, listed.stderr + shown.stderr
    # Before: 80 columns, so "si…" / "98…" and no filename column at all; the SHA-256 cut.
    for word in ("safetensors", "98856", "model.safetensors", "filename", "2026-11-26 17:49:00"):
        assert word in listed.stdout, listed.stdout
    assert "…" not in listed.stdout
    assert SHA in shown.stdout and "…" not in shown.stdout


def test_a_checkpoint_that_is_neither_a_file_nor_an_id_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"architecture": {"name": "small_cnn"}}')
    server = ScriptedServer([ScriptedReply(500, {"error": {"code": "unexpected"}})])
    try:
        result = run_riftctl(["jobs", "create", "--checkpoint", "modl.safetensors",
                              "--config", str(config)], url=server.url, api_key="rift_test",
                             home=tmp_path, cwd=tmp_path)
    finally:
        server.stop()
    # Before: sent as an id, exit 3 with "checkpoint_id: String should match pattern ...".
    assert result.exit_code == 2, result.stderr
    message = _flat(result.stderr)
    assert "--checkpoint" in message and "modl.safetensors: no such file" in message
    assert server.seen == []


def test_a_missing_config_file_names_the_option(tmp_path: Path) -> None:
    result = run_riftctl(["jobs", "create", "--checkpoint", "ck_1", "--config", "confg.json"],
                         url="http://127.0.0.1:9", api_key="rift_test", home=tmp_path,
                         cwd=tmp_path)
    assert result.exit_code == 2
    # Before: "Invalid value: confg.json is not a file", naming no option.
    assert "Invalid value for --config: confg.json: no such file" in _flat(result.stderr)


def test_command_summaries_are_one_line_each(tmp_path: Path) -> None:
    result = run_riftctl(["jobs", "--help"], url=None, api_key=None, home=tmp_path)
    assert result.exit_code == 0, result.stderr
    # Before: the docstring's line break stayed: "exit 0 if the job" / "succeeded, 1 otherwise".
    events = next(line for line in result.stdout.splitlines() if "│ events " in line)
    assert "exit 0 if the job succeeded, 1 otherwise." in events


def test_a_jobs_accuracies_are_shown_to_two_decimals(tmp_path: Path) -> None:
    metrics = {"before": {"clean_accuracy": 90.42316258351893, "robust_accuracy": 66.3697},
               "after": {"clean_accuracy": 92.20489977728285, "robust_accuracy": None}}
    server = ScriptedServer([ScriptedReply(200, _job(metrics=metrics))])
    try:
        result = run_riftctl(["jobs", "get", "job_1"], url=server.url, api_key="rift_test",
                             home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    assert "before (test split): clean 90.42%, robust 66.37%" in result.stdout
    assert "after (test split): clean 92.20%, robust –" in result.stdout


def test_a_report_out_written_with_a_slash_is_a_folder(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, raw=b"<html>page</html>",
                                           content_type="text/html")])
    try:
        result = run_riftctl(["jobs", "report", "job_1", "--out", "reports/"], url=server.url,
                             api_key="rift_test", home=tmp_path, cwd=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    # Before: a file called "reports".
    assert (tmp_path / "reports" / "job_1.html").read_bytes() == b"<html>page</html>"


def test_downloading_all_of_a_cancelled_jobs_nothing_is_an_error(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, {"items": []}),
                             ScriptedReply(200, _job(status="cancelled", selected_module=None,
                                                     chosen_alpha=None))])
    try:
        result = run_riftctl(["jobs", "download", "job_1", "--out", "weights/"], url=server.url,
                             api_key="rift_test", home=tmp_path, cwd=tmp_path)
    finally:
        server.stop()
    # Before: exit 0 and not a word, as if the weights had been saved.
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "job job_1 is cancelled: it has no artifacts to download" in _flat(result.stderr)


def test_quiet_silences_progress_messages_not_results(tmp_path: Path) -> None:
    import hashlib

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    config = tmp_path / "config.json"
    config.write_text('{"architecture": {"name": "small_cnn"}}')
    stored = {**CHECKPOINT, "sha256": hashlib.sha256(b"weights").hexdigest(), "size": 7}
    created = ScriptedReply(202, _job(status="queued", checkpoint_id=stored["id"]))
    server = ScriptedServer([created, ScriptedReply(200, stored)] * 2)  # two runs
    args = ["jobs", "create", "--checkpoint", str(checkpoint), "--config", str(config)]
    try:
        loud = run_riftctl(args, url=server.url, api_key="rift_test", home=tmp_path)
        quiet = run_riftctl(["--quiet", *args], url=server.url, api_key="rift_test",
                            home=tmp_path)
    finally:
        server.stop()
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.stderr + quiet.stderr
    assert "uploaded model.safetensors as checkpoint" in loud.stderr
    # Before: --quiet hid the progress bars only; the README says it turns messages off too.
    assert quiet.stderr == "" and quiet.stdout == loud.stdout == "job job_1 queued\n"


def test_curves_say_what_an_unmeasured_robust_accuracy_means(tmp_path: Path) -> None:
    def point(alpha: float, robust: float | None, chosen: bool = False) -> dict[str, Any]:
        return {"alpha": alpha, "clean_accuracy": 90 + alpha, "robust_accuracy": robust,
                "robust_accuracy_at_most": None, "chosen": chosen}

    curves = {"job_id": "job_1", "status": "succeeded", "selected_module": "fc",
              "epochs": [], "chosen_alpha": 1.0, "metrics": {}, "candidates": [],
              "chosen_candidate": None,
              "interpolation": [point(0.0, 66.4), point(0.5, None), point(1.0, 67.3, True)]}
    server = ScriptedServer([ScriptedReply(200, curves)])
    try:
        result = run_riftctl(["jobs", "curves", "job_1"], url=server.url, api_key="rift_test",
                             home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    # Before: "–" in the robust column and no word on why.
    assert "– not attacked: only the α points that could be chosen are" in result.stdout
    assert "≤ x" not in result.stdout


def test_usage_shows_stored_bytes_in_units_a_reader_takes_in(tmp_path: Path) -> None:
    usage = {"project": "vision",
             "stored_bytes": {"used": 1508892, "limit": 53687091200, "checkpoints": 593136,
                              "datasets": 0, "artifacts": 915756, "reserved_by_active_jobs": 0,
                              "reserved_by_materializations": 0},
             "active_jobs": {"used": 0, "limit": 20}, "max_job_cost": 1000000000,
             "max_requests_per_minute": 1200, "max_streams_per_key": 10}
    server = ScriptedServer([ScriptedReply(200, usage)])
    try:
        result = run_riftctl(["usage"], url=server.url, api_key="rift_test", home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    # Before: "1508892 of 53687091200" alone.
    assert "1508892 of 53687091200 (0.0%)" in result.stdout
    assert "1.4 MiB of 50.0 GiB" in result.stdout


def test_output_and_quiet_after_the_command_are_riftctls_own() -> None:
    from rift_client.cli import hoist_root_options

    assert hoist_root_options(["jobs", "list", "--output", "json", "-n", "5"]) == \
        ["--output", "json", "jobs", "list", "-n", "5"]
    assert hoist_root_options(["--url", "http://h", "jobs", "get", "J", "-q", "--output=json"]) \
        == ["--url", "http://h", "-q", "--output=json", "jobs", "get", "J"]
    # Nothing after "--" moves; a line without them is unchanged.
    assert hoist_root_options(["jobs", "get", "--", "-q"]) == ["jobs", "get", "--", "-q"]
    assert hoist_root_options(["-o", "json", "usage"]) == ["-o", "json", "usage"]


@pytest.mark.service
def test_connection_options_after_the_command_are_riftctls_own(
        queued_api: RunningApi, api_key: str | None, tmp_path: Path,
        cli_launcher: Launcher | None) -> None:
    # A CI step appends them to the command it runs: before, "No such option: --url", exit 2.
    assert api_key is not None
    result = run_riftctl(["jobs", "list", "--url", queued_api.url, f"--api-key={api_key}",
                          "--retries", "0", "--timeout-http=30", "--upload-timeout", "60",
                          "-o", "json"], url=None, api_key=None, home=tmp_path,
                         launcher=cli_launcher)
    assert result.exit_code == 0 and json.loads(result.stdout) == [], result.stderr


def test_a_listing_asked_as_json_after_the_command_is_json(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, {"items": [CHECKPOINT], "next_cursor": None})])
    try:
        result = run_riftctl(["checkpoints", "list", "--output", "json"], url=server.url,
                             api_key="rift_test", home=tmp_path)
    finally:
        server.stop()
    # Before: "No such option: --output", exit 2.
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["id"] == CHECKPOINT["id"]


def test_an_empty_listing_says_so_and_a_job_shows_its_times_to_the_second(
        tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, {"items": [], "next_cursor": None}),
                             ScriptedReply(200, _job(created_at="2026-11-26T17:49:25.801126Z"))])
    try:
        empty = run_riftctl(["jobs", "list", "--status", "running"], url=server.url,
                            api_key="rift_test", home=tmp_path)
        shown = run_riftctl(["jobs", "get", "job_1"], url=server.url, api_key="rift_test",
                            home=tmp_path)
    finally:
        server.stop()
    # Before: a table of headers alone.
    assert empty.exit_code == 0 and empty.stdout == "no jobs match\n", empty.stdout
    # Before: "created: 2026-11-26 17:49:25.801126+00:00".
    assert "created: 2026-11-26 17:49:25\n" in shown.stdout, shown.stdout


def test_a_materializations_accuracies_are_shown_to_two_decimals(tmp_path: Path) -> None:
    record = {"id": "m_1", "job_id": "job_1", "alpha": 0.35, "evaluate": True,
              "status": "succeeded", "artifact": "tuned@0.35.safetensors",
              "artifact_url": "/v1/jobs/job_1/artifacts/tuned@0.35.safetensors",
              "clean_accuracy": 90.86859688195992, "robust_accuracy": 66.36971046770601,
              "error": None, "created_at": "2026-11-26T18:29:48Z",
              "finished_at": "2026-11-26T18:29:49Z",
              "url": "/v1/jobs/job_1/materializations/m_1"}
    server = ScriptedServer([ScriptedReply(200, record)])
    try:
        result = run_riftctl(["jobs", "materialize", "job_1", "--alpha", "0.35"],
                             url=server.url, api_key="rift_test", home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    # Before: "clean 90.8686%, robust 66.3697%", where `jobs get` printed 14 decimals.
    assert "clean 90.87%, robust 66.37%" in result.stdout


def test_a_sweep_candidates_alpha_reads_as_on_its_curve(tmp_path: Path) -> None:
    """A 0.00015 grid's α = 0.13095: the candidates' table rounded it to 0.131 (4 significant
    digits, as an accuracy), an α the curve above it does not have."""
    point = {"alpha": 0.13095, "clean_accuracy": 91.0, "robust_accuracy": 64.0,
             "robust_accuracy_at_most": None, "chosen": True}
    candidate = {"index": 0, "module": "fc", "lr": 0.01, "status": "done", "attempts": 1,
                 "chosen": True, "chosen_alpha": 0.13095, "clean_accuracy": 91.0,
                 "robust_accuracy": 64.0, "best_epoch": 1, "points": [point]}
    curves = {"job_id": "job_1", "status": "succeeded", "selected_module": "fc", "epochs": [],
              "chosen_alpha": 0.13095, "metrics": {}, "candidates": [candidate],
              "chosen_candidate": 0, "interpolation": [point]}
    server = ScriptedServer([ScriptedReply(200, curves)])
    try:
        result = run_riftctl(["jobs", "curves", "job_1"], url=server.url, api_key="rift_test",
                             home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    assert "0.131 " not in result.stdout and result.stdout.count("0.13095") == 3, result.stdout


def test_curves_and_job_name_the_split_of_their_accuracies(tmp_path: Path) -> None:
    """α chosen on the validation split: the curve's α = 0 row and the job's before (test split)
    differ, and neither command said which split it showed."""
    point = {"alpha": 0.0, "clean_accuracy": 90.67, "robust_accuracy": 72.67,
             "robust_accuracy_at_most": None, "chosen": True}
    metrics = {"selection_split": "validation",
               "before": {"clean_accuracy": 91.33, "robust_accuracy": 69.33}}
    curves = {"job_id": "job_1", "status": "succeeded", "selected_module": "fc", "epochs": [],
              "chosen_alpha": 0.0, "metrics": metrics, "candidates": [],
              "chosen_candidate": None, "interpolation": [point]}
    server = ScriptedServer([ScriptedReply(200, curves),
                             ScriptedReply(200, _job(chosen_alpha=0.0, metrics=metrics))])
    try:
        shown = run_riftctl(["jobs", "curves", "job_1"], url=server.url, api_key="rift_test",
                            home=tmp_path)
        job = run_riftctl(["jobs", "get", "job_1"], url=server.url, api_key="rift_test",
                          home=tmp_path)
    finally:
        server.stop()
    assert shown.exit_code == 0 and job.exit_code == 0, shown.stderr + job.stderr
    assert "interpolation curve on the validation split" in _flat(shown.stdout)
    assert "before (test split): clean 91.33%" in job.stdout


def test_jobs_get_and_usage_show_the_compute_estimate_and_its_limit(tmp_path: Path) -> None:
    # Before: neither the job's cost estimate nor the GFLOP figure was printed anywhere.
    usage = {"project": "vision",
             "stored_bytes": {"used": 0, "limit": 1, "checkpoints": 0, "datasets": 0,
                              "artifacts": 0, "reserved_by_active_jobs": 0,
                              "reserved_by_materializations": 0},
             "active_jobs": {"used": 0, "limit": 20}, "max_job_cost": 1000000000,
             "max_job_gflop": 1000000000, "max_requests_per_minute": 1200,
             "max_streams_per_key": 10}
    server = ScriptedServer([
        ScriptedReply(200, _job(cost_estimate=292_344, cost_gflop=91.9812)),
        ScriptedReply(200, _job(cost_estimate=292_344, cost_gflop=None)),
        ScriptedReply(200, usage)])
    try:
        counted, uncounted, limits = (
            run_riftctl(args, url=server.url, api_key="rift_test", home=tmp_path)
            for args in (["jobs", "get", "job_1"], ["jobs", "get", "job_1"], ["usage"]))
        assert counted.exit_code == 0, counted.stderr
        assert "cost estimate: 292344 example-passes, 91.98 GFLOP" in counted.stdout
        assert uncounted.exit_code == 0, uncounted.stderr
        assert "cost estimate: 292344 example-passes\n" in uncounted.stdout
        assert limits.exit_code == 0, limits.stderr
        assert "max_job_gflop: 1000000000 GFLOP" in limits.stdout
    finally:
        server.stop()


def test_a_refused_url_names_where_riftctl_read_it(tmp_path: Path,
                                                  cli_launcher: Launcher | None) -> None:
    # Before: "check the URL (riftctl --url, RIFT_API_URL or the config file's api_url)": all
    # four places listed, the one read not named (a stale RIFT_API_URL left in the shell).
    # --retries 0: the hint is the same after any number of retries, and the default four
    # retries' backoff made this test sit through 12-16 s of refused connections.
    from_env = run_riftctl(["--retries", "0", "jobs", "list"], url="http://127.0.0.1:9",
                           api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    assert from_env.exit_code == 7
    assert "the URL came from RIFT_API_URL" in _flat(from_env.stderr), from_env.stderr
    config = tmp_path / "riftctl.toml"
    config.write_text('api_url = "http://127.0.0.1:9"\n')
    from_file = run_riftctl(["-o", "json", "--retries", "0", "jobs", "list"], url=None,
                            api_key="rift_test", home=tmp_path,
                            env={"RIFTCTL_CONFIG": str(config)}, launcher=cli_launcher)
    error = json.loads(from_file.stderr)["error"]
    assert error["code"] == "connection_error" and error["hint"] == f"the URL came from api_url in {config}"


def test_retries_sets_how_often_a_refused_request_is_sent_again(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    down = ScriptedReply(503, {"error": {"code": "service_unavailable", "message": "restarting",
                                         "field": None}}, {"Retry-After": "0"})
    # Two 503s, then an answer: the default four retries would reach it (exit 0).
    server = ScriptedServer([down, down, ScriptedReply(200, {"items": [], "next_cursor": None})])
    try:
        result = run_riftctl(["--retries", "1", "jobs", "list"], url=server.url,
                             api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert (result.exit_code, len(server.seen)) == (7, 2), result.stderr
    assert "503" in _flat(result.stderr), result.stderr


@pytest.mark.parametrize(("api_key", "hint"), [
    (None, "riftctl sent no API key: set RIFT_API_KEY, give --api-key or put api_key in the "
           "config file"),
    ("rift_revoked_key", "the key sent came from RIFT_API_KEY"),
])
def test_a_401_says_which_key_was_sent_or_how_to_give_one(api_key: str | None, hint: str,
                                                          tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(401, {"error": {
        "code": "unauthorized", "message": "the API key is not valid", "field": "Authorization"}})])
    try:
        result = run_riftctl(["jobs", "list"], url=server.url, api_key=api_key, home=tmp_path)
    finally:
        server.stop()
    # Before: the service's words alone; a first user with no key, or a stale RIFT_API_KEY in
    # the shell, was not told where riftctl reads one.
    assert result.exit_code == 5
    assert hint in _flat(result.stderr), result.stderr
    # One hint, riftctl's: the client's own (api_key=, for Python callers) is not added too.
    assert "api_key=" not in _flat(result.stderr), result.stderr


@pytest.mark.parametrize("output", ["text", "json"])
def test_jobs_wait_says_when_an_outage_begins_and_ends(output: str, tmp_path: Path) -> None:
    # One look fails its 5 tries (Retry-After 0: no backoff to sit through), the next answers.
    down = ScriptedReply(503, {"error": {"code": "service_unavailable", "message": "restarting",
                                         "field": None}}, {"Retry-After": "0"})
    server = ScriptedServer([ScriptedReply(200, _job(status="running")), *[down] * 5,
                             ScriptedReply(200, _job(status="succeeded"))])
    try:
        result = run_riftctl(["--output", output, "jobs", "wait", "job_1", "--poll-interval",
                              "0.1"], url=server.url, api_key="rift_test", home=tmp_path)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    err = _flat(result.stderr)
    # Before: nothing on stderr while the wait went on through the outage.
    began = "the service is not answering"
    ended = "the service answers again; waiting for job job_1"
    if output == "text":
        assert began in err and "503 service_unavailable: restarting" in err, err
        assert "for up to 300 s" in err and err.index(began) < err.index(ended), err
    else:  # JSON output: the job on stdout, nothing more on stderr
        assert began not in err and ended not in err, err
        assert json.loads(result.stdout)["status"] == "succeeded"
