"""``rift-admin --help`` tells a first user what the README does: which settings it reads, the
exit codes, and what each argument is (the groups' help was their own name, "projects")."""

from __future__ import annotations

import pytest

from persistence.admin_cli import LIMIT_MAXIMA, _parser
from persistence.settings import Settings


def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        _parser().parse_args([*args, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_top_help_names_the_database_setting_and_the_exit_codes(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help([], capsys)
    assert "DATABASE_URL" in text and "sqlite:///./var/rift.db" in text
    assert "Exit codes: 0 done, 1" in text
    assert "projects create, list and delete projects" in text


def test_every_argument_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    keys = _help(["keys", "create"], capsys)
    assert "--project PROJECT the project the key acts for" in keys
    limits = _help(["projects", "limits"], capsys)
    for limit in LIMIT_MAXIMA:  # each names the setting 'default' goes back to
        assert f"DEFAULT_{limit.upper()}" in limits and f"default_{limit}" in Settings.model_fields
