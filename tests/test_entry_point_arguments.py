"""Every command an operator runs answers ``--help`` and ``--version`` without doing its work, and
refuses an argument it does not know (status 2) before it touches anything.

``python -m persistence.migrate`` and ``python -m api.preflight`` read no arguments: ``--help``
migrated the database (an operator trying the command made ``./var/rift.db`` where it ran) and
emptied the API's metrics folder, and ``python -m persistence.migrate 0020`` went to the newest
revision. No command had ``--version``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persistence.settings import Settings
from rift import __version__

ROOT = Path(__file__).resolve().parents[1]

#: prog (as its --version and usage print it), then the command.
COMMANDS = {
    "python -m persistence.migrate": [sys.executable, "-m", "persistence.migrate"],
    "python -m api.preflight": [sys.executable, "-m", "api.preflight"],
    "python -m persistence.janitor": [sys.executable, "-m", "persistence.janitor"],
    "rift-admin": [sys.executable, "-c", "from persistence.admin_cli import main; main()"],
    "python -m rift": [sys.executable, "-m", "rift"],
    "riftctl": [sys.executable, "-c", "from rift_client.cli import main; main()"],
}


def run(cwd: Path, command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``command`` in ``cwd`` with the default settings (SQLite under ``./var``) and a metrics
    folder holding one file, so that any work done shows in the folder."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}",
               PROMETHEUS_MULTIPROC_DIR=str(cwd / "metrics"))
    (cwd / "metrics").mkdir(exist_ok=True)
    (cwd / "metrics" / "counter_1.db").write_bytes(b"earlier run")
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def untouched(cwd: Path) -> bool:
    return not (cwd / "var").exists() and (cwd / "metrics" / "counter_1.db").exists()


@pytest.mark.parametrize("prog", COMMANDS)
def test_version_prints_the_release_and_does_nothing_else(prog: str, tmp_path: Path) -> None:
    result = run(tmp_path, COMMANDS[prog], "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {__version__}"
    assert untouched(tmp_path)


@pytest.mark.parametrize("prog", ["python -m persistence.migrate", "python -m api.preflight"])
def test_help_describes_the_command_and_does_nothing_else(prog: str, tmp_path: Path) -> None:
    result = run(tmp_path, COMMANDS[prog], "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {prog} ") and "Exit codes: 0" in result.stdout
    assert untouched(tmp_path)


@pytest.mark.parametrize("prog", ["python -m persistence.migrate", "python -m api.preflight"])
def test_an_unknown_argument_is_refused_before_any_work(prog: str, tmp_path: Path) -> None:
    result = run(tmp_path, COMMANDS[prog], "0020")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"{prog}: error: unrecognized arguments: 0020"
    assert untouched(tmp_path)
