"""``riftctl --output json``: usage errors (exit 2) are one JSON object on stderr naming the
option or argument at fault, as API errors are (they were typer's framed text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.client.helpers import ScriptedReply, ScriptedServer, run_riftctl
from tests.preloaded_launcher import Launcher

#: Nothing listens there: a usage error is found before anything is sent.
NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize(("args", "field"), [
    (["-o", "json", "jobs", "materialize", "JOB", "--alpha", "2"], "--alpha"),
    (["jobs", "list", "--limit", "x", "--output", "json"], "--limit"),
    (["--output=json", "jobs", "wait"], "job_id"),
    (["-o", "json", "jobs", "list", "--frobnicate"], "--frobnicate"),
    (["-o", "json", "checkpoints", "upload", "/no/such/model.safetensors"], "PATH"),
    (["-o", "json", "jobs", "nope"], None),
])
def test_usage_errors_are_json_naming_the_field(args: list[str], field: str | None,
                                                tmp_path: Path,
                                                cli_launcher: Launcher | None) -> None:
    result = run_riftctl(args, url=NOWHERE, api_key=None, home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "usage_error" and error["message"]
    assert error["field"] == field


def test_text_output_keeps_typers_usage_text(tmp_path: Path,
                                             cli_launcher: Launcher | None) -> None:
    result = run_riftctl(["jobs", "materialize", "JOB", "--alpha", "2"], url=NOWHERE,
                         api_key=None, home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 2 and "--alpha" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_every_error_object_has_a_field(tmp_path: Path, cli_launcher: Launcher | None) -> None:
    """A connection refused names nothing the caller typed: "field" is null, not missing (a
    script reading error["field"] got a KeyError for these and a value for API errors)."""
    refused = run_riftctl(["-o", "json", "jobs", "list"], url=NOWHERE, api_key=None,
                          home=tmp_path, launcher=cli_launcher)
    assert refused.exit_code == 7
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "connection_error" and "field" in error and error["field"] is None
    bad_key = run_riftctl(["-o", "json", "jobs", "list"], url=NOWHERE, api_key="two words",
                          home=tmp_path, launcher=cli_launcher)
    assert bad_key.exit_code == 2
    assert json.loads(bad_key.stderr)["error"] == {
        "code": "usage_error", "field": "api_key",  # the argument at fault, as the client names it
        "message": json.loads(bad_key.stderr)["error"]["message"]}


def test_an_answers_http_status_is_not_overwritten_by_the_jobs(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    """A 409 for a finished job carries the job's ``status``; spread into the JSON error line it
    replaced the HTTP status, so ``error["status"]`` read ``"failed"`` there and 409 for a
    materialize refused the same way."""
    server = ScriptedServer([ScriptedReply(409, {"error": {
        "code": "job_finished", "message": "job job_1 has already finished with status 'failed'",
        "field": "job_id", "status": "failed"}})])
    try:
        result = run_riftctl(["-o", "json", "jobs", "cancel", "job_1"], url=server.url,
                             api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert result.exit_code == 3, result.stderr
    error = json.loads(result.stderr)["error"]
    assert (error["status"], error["job_status"], error["code"], error["field"]) == (
        409, "failed", "job_finished", "job_id")
