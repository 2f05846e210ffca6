"""``riftctl --output json``: usage errors (exit 2) are one JSON object on stderr naming the
option or argument at fault, as API errors are (they were typer's framed text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.client.helpers import run_riftctl
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
