"""The torch-free launcher (``tests/preloaded_launcher.py``, preload ``api``) runs a program as its
own process would: its argv, working directory, environment, stdout and stderr apart, exit status
and signals; and nothing it runs has torch imported for it (the API must never import torch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.preloaded_launcher import Launcher

_SCRIPT = """
import json, os, sys, time
if sys.argv[1:] == ["sleep"]:
    print("sleeping", flush=True)
    time.sleep(60)
print(json.dumps({"torch": "torch" in sys.modules, "argv": sys.argv, "cwd": os.getcwd(),
                  "marker": os.environ.get("RIFT_LAUNCHER_MARKER"), "path0": sys.path[0]}))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "program" / "probe.py"
    path.parent.mkdir()
    path.write_text(_SCRIPT)
    return path


def test_a_forked_script_gets_its_argv_cwd_env_streams_and_exit_status(
        api_launcher: Launcher, script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RIFT_LAUNCHER_MARKER": "forked"}
    done = api_launcher.run([str(script), "a", "b"], env, tmp_path, script=script, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == "to stderr"
    probe = json.loads(done.stdout)
    # A fresh interpreter running the script would answer the same.
    fresh = subprocess.run([sys.executable, str(script), "a", "b"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(fresh.stdout) == probe
    assert probe == {"torch": False, "argv": [str(script), "a", "b"], "cwd": str(tmp_path),
                     "marker": "forked", "path0": str(script.parent)}


def test_a_forked_process_has_its_own_session_and_dies_of_the_signal_sent(
        api_launcher: Launcher, script: Path, tmp_path: Path) -> None:
    log = tmp_path / "sleep.log"
    process = api_launcher.spawn([str(script), "sleep"], dict(os.environ), tmp_path, log,
                                 script=script)
    deadline = time.monotonic() + 60
    while not (log.exists() and "sleeping" in log.read_text()):  # the child creates the log
        assert time.monotonic() < deadline and process.poll() is None, process.returncode
        time.sleep(0.05)
    assert os.getpgid(process.pid) == process.pid  # its own session and process group
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM


def test_a_run_past_its_timeout_is_killed(api_launcher: Launcher, script: Path,
                                          tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        api_launcher.run([str(script), "sleep"], dict(os.environ), tmp_path, script=script,
                         timeout=1)


def test_a_launcher_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preload must be one of"):
        Launcher(tmp_path, Path.cwd(), preload="everything")
