"""A scratch folder a live process holds is never removed by the janitor, whatever its age; one
its killed process left is. Before, age was all the janitor looked at: with a grace shorter than
the work (an operator lowering ``JANITOR_GRACE_SECONDS`` below ``JOB_TIME_LIMIT_SECONDS``, or 0
in a hand run) it removed the folder of a materialization still evaluating, an MLflow export
still uploading or a dataset still being unpacked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from persistence.janitor import sweep_scratch
from persistence.models import utcnow
from persistence.scratch_folders import held_scratch_folder

# Every entry is older than this: the grace period alone would remove them all.
_FUTURE = timedelta(hours=1)

_HOLDER = """
import sys, time
from pathlib import Path
from persistence.scratch_folders import held_scratch_folder
with held_scratch_folder(Path(sys.argv[1]), prefix=sys.argv[2]) as folder:
    (folder / "weights.safetensors").write_bytes(b"x")
    print(folder, flush=True)
    time.sleep(600)
"""


def _hold_in_another_process(parent: Path, prefix: str) -> tuple[subprocess.Popen[str], Path]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(parent), prefix],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout is not None
    return holder, Path(holder.stdout.readline().strip())


def test_a_held_folder_is_kept_and_a_killed_holders_folder_removed(tmp_path: Path) -> None:
    scratch, inputs = tmp_path / "scratch", tmp_path / "inputs" / "datasets"
    roots = [(scratch, False), (inputs, True)]
    holder, held = _hold_in_another_process(scratch, "job-alpha-")
    staging_holder, staging = _hold_in_another_process(inputs, ".ds_1.")
    try:
        left = scratch / "left-by-a-crash"
        left.mkdir()
        assert sweep_scratch(roots, utcnow() + _FUTURE) == [str(left)]
        assert held.is_dir() and (held / "weights.safetensors").exists() and staging.is_dir()
        assert sweep_scratch(roots, utcnow() + _FUTURE, dry_run=True) == []
    finally:
        for process in (holder, staging_holder):
            process.send_signal(signal.SIGKILL)
            process.wait()
    # Killed: the lock went with the process, the folders stayed; now they are removed.
    assert held.is_dir() and staging.is_dir()
    assert sorted(sweep_scratch(roots, utcnow() + _FUTURE)) == sorted([str(held), str(staging)])
    assert not held.exists() and not staging.exists()


def test_a_janitor_in_the_holding_process_keeps_the_folder_too(tmp_path: Path) -> None:
    # The workers' recovery loop runs the janitor in the very process a materialization or
    # export runs in: flock locks are per open file, so it sees the folder in use as well.
    with held_scratch_folder(tmp_path / "scratch", prefix="job-mlflow-") as folder:
        time.sleep(0.01)
        assert sweep_scratch([(tmp_path / "scratch", False)], utcnow() + _FUTURE) == []
        assert folder.is_dir()
    assert not folder.exists()  # the block's end removes it


def test_plain_files_and_folders_no_one_holds_go_as_before(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "upload-1.part").write_bytes(b"x")
    (uploads / "dangling").symlink_to(tmp_path / "nowhere")
    assert sorted(sweep_scratch([(uploads, False)], utcnow() + _FUTURE)) == sorted(
        [str(uploads / "upload-1.part"), str(uploads / "dangling")])
    assert list(uploads.iterdir()) == []
