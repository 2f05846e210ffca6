"""User-facing error text: a refused pickle names the refused global in full and never advises
weights_only=False; the CLI reports file problems in one line without a traceback."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pytest
import torch

from rift.checkpoints import load_state_dict
from rift.errors import CheckpointError
from tests.preloaded_launcher import Launcher, run_python_module

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class _Hostile:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


class _UserModule(torch.nn.Module):
    pass


@pytest.mark.parametrize(("payload", "refused"), [
    (_Hostile(), "builtins.print"),
    (_UserModule(), f"{__name__}._UserModule"),
    (collections.Counter(a=1), "collections.Counter"),
])
def test_refused_pickle_names_the_global_in_full(tmp_path: Path, payload: object,
                                                 refused: str, capsys) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(1), "x": payload}, path)
    with pytest.raises(CheckpointError) as error:
        load_state_dict(path)
    message = error.value.message
    assert refused in message or refused.rsplit(".", 1)[-1] in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "add_safe_globals" not in message
    assert "this must never run" not in capsys.readouterr().out


def _cli(*args: str, cwd: Path, launcher: Launcher | None) -> subprocess.CompletedProcess[str]:
    """``python -m rift ARGS``, forked from the worker launcher (torch imported once) when given."""
    return run_python_module(launcher, "rift", list(args), cwd=cwd, timeout=120,
                             env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("problem", ["missing_config", "bad_json", "missing_checkpoint"])
def test_cli_file_errors_are_one_line(tmp_path: Path, problem: str,
                                      optional_worker_launcher: Launcher | None) -> None:
    config = tmp_path / "spec.json"
    checkpoint = tmp_path / "ck.safetensors"
    checkpoint.write_bytes(b"")
    if problem == "bad_json":
        config.write_text("{not json")
    elif problem == "missing_checkpoint":
        config.write_text('{"architecture": {"name": "mlp"}, "dataset": {"name": "digits"}}')
        checkpoint = tmp_path / "absent.safetensors"
    done = _cli("run", "--config", str(config), "--checkpoint", str(checkpoint), cwd=tmp_path,
                launcher=optional_worker_launcher)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (str(checkpoint) if problem == "missing_checkpoint" else str(config)) in lines[0]
