"""``riftctl``'s exit codes tell a script what to do next: fix the key (5), fix the id (6), try
again later (7), or read the refusal (3). All four were exit 3 before, so a CI step that retried
an outage also retried a typo, and one that gave up on a typo gave up on a restart too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client.helpers import ScriptedReply, ScriptedServer, run_riftctl
from tests.preloaded_launcher import Launcher


def _error(status: int, code: str, field: str | None) -> ScriptedReply:
    return ScriptedReply(status, {"error": {"code": code, "message": f"{code} here",
                                            "field": field}})


@pytest.mark.parametrize(("reply", "exit_code"), [
    (_error(401, "unauthorized", "Authorization"), 5),
    (_error(403, "insufficient_scope", "Authorization"), 5),
    (_error(404, "job_not_found", "job_id"), 6),
    (_error(409, "job_finished", "job_id"), 3),
    (_error(422, "invalid_input", "status"), 3),
    (_error(500, "internal_error", None), 7),
    (_error(503, "database_unavailable", None), 7),
    (ScriptedReply(200, raw=b"<html>sign in</html>", content_type="text/html"), 7),
], ids=["401", "403", "404", "409", "422", "500", "503", "not-the-api"])
def test_each_kind_of_failure_has_its_exit_code(reply: ScriptedReply, exit_code: int,
                                                tmp_path: Path,
                                                cli_launcher: Launcher | None) -> None:
    server = ScriptedServer([reply])
    try:
        for output in ("text", "json"):
            result = run_riftctl(["--retries", "0", "-o", output, "jobs", "get", "job_1"],
                                 url=server.url, api_key="rift_test", home=tmp_path,
                                 launcher=cli_launcher)
            assert result.exit_code == exit_code, (output, result.stderr)
            assert result.stdout == "" and "Traceback" not in result.stderr
    finally:
        server.stop()


def test_nothing_listening_is_the_unavailable_code(tmp_path: Path,
                                                   cli_launcher: Launcher | None) -> None:
    result = run_riftctl(["--retries", "0", "jobs", "list"], url="http://127.0.0.1:9",
                         api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 7, result.stderr

