"""``riftctl --help`` of every command: flags shown without a value type (typer 0.29's rich help
printed ``--wait <bool>``, ``--quiet <bool>``, ``--help <bool>``), options that take a value
still shown with theirs."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from rift_client.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of ``command`` and of every command under it (``("jobs", "create")``)."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer's own click)
        found += _commands(sub, (*path, name))
    return found


def test_no_command_shows_a_flag_as_taking_a_bool() -> None:
    runner = CliRunner()
    paths = _commands(typer.main.get_command(app))
    assert ("jobs", "create") in paths and ("jobs", "materialize") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        assert "--help" in result.output


def test_options_with_values_keep_their_type_and_flags_take_none() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["jobs", "create", "--help"], env={"COLUMNS": "160"}).output
    wait_line = next(line for line in shown.splitlines() if "--wait " in line)
    assert "Wait for the job" in wait_line and "<" not in wait_line
    assert "<path>" in next(line for line in shown.splitlines() if "--config " in line)
    assert "KEY=VALUE" in next(line for line in shown.splitlines() if "--label " in line)
    # Still a flag: a value after it is an extra argument, as before.
    refused = runner.invoke(app, ["jobs", "wait", "JOB", "--timeout", "1", "true"])
    assert refused.exit_code == 2


def test_the_top_help_lists_every_exit_code_of_the_readme() -> None:
    shown = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "160"}).output.split())
    # Before: 0 to 4, not the 130 of an interrupted command the README's table lists.
    for code in ("0 success", "1 job failed", "2 usage error", "3 refused by the service",
                 "4 wait timed out", "5 key missing", "6 not found", "7 service unreachable",
                 "130 interrupted"):
        assert code in shown, shown
