"""``riftctl ... | head -1``: a reader that leaves early ends the command quietly with exit 0, as
``rift-admin`` does. Before, a table (rich) ended with exit 1, the code of a failed job, and a
JSON line with ``local_file_error: [Errno 32] Broken pipe`` and exit 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.client.helpers import CLIENT_SOURCE, ScriptedReply, ScriptedServer, riftctl_command

_JOB = {"id": "job_1", "status": "succeeded", "stage": None, "progress": 1.0,
        "checkpoint_id": "ck_1", "labels": {"team": "vision"}, "attempts": 1,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
_EVENT = {"id": 1, "kind": "job_created", "payload": {}, "created_at": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(("args", "reply"), [
    (["jobs", "list"], ScriptedReply(200, {"items": [_JOB] * 50, "next_cursor": None})),
    (["-o", "json", "jobs", "list"], ScriptedReply(200, {"items": [_JOB] * 50,
                                                         "next_cursor": None})),
    (["-o", "json", "jobs", "events", "job_1", "--no-follow"],
     ScriptedReply(200, {"items": [_EVENT] * 50, "next_after": 1, "job_status": "succeeded",
                         "finished": True})),
], ids=["table", "json", "json-lines"])
def test_a_closed_stdout_ends_the_command_quietly(args: list[str], reply: ScriptedReply,
                                                  tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before riftctl writes a byte: every write fails
    env = {k: v for k, v in os.environ.items()
           if k not in ("RIFT_API_URL", "RIFT_API_KEY", "RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    server = ScriptedServer([reply])
    env.update({"HOME": str(tmp_path), "RIFT_API_KEY": "rift_test", "RIFT_API_URL": server.url,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(CLIENT_SOURCE),
                                                            env.get("PYTHONPATH")]))})
    try:
        done = subprocess.run([*riftctl_command(), *args], stdout=write_end,
                              stderr=subprocess.PIPE, env=env, timeout=120, text=True)
    finally:
        os.close(write_end)
        server.stop()
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def _run_with_a_closed_stdout(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before a byte is written: every write fails
    try:
        done = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, env=env,
                              timeout=120, text=True)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize("args", [
    ["--help"], ["jobs", "--help"], ["jobs", "list", "--help"], ["-o", "json", "--help"],
    ["-o", "json", "jobs", "list", "--help"],
], ids=["root", "group", "command", "json-root", "json-command"])
def test_help_read_by_a_closed_pipe_ends_quietly(args: list[str], tmp_path: Path) -> None:
    """``riftctl --help | head -1``. Before: exit 1 (rich's console answers a closed stdout
    with SystemExit(1) while click draws the help, before any command runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    env.update({"HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(CLIENT_SOURCE), env.get("PYTHONPATH")]))})
    assert _run_with_a_closed_stdout([*riftctl_command(), *args], env) == (0, "")
