"""A path that starts with ``~`` is in the home folder, as a shell would read it: a notebook
passes ``"~/weights/"`` as text (no shell expands it), and so does riftctl's ``--out=~/weights``
(bash expands ``~`` only at the start of a word) or a quoted value in a CI step.

Before, ``download(..., "~/weights/")`` and ``riftctl jobs download --out=~/weights`` made a folder
literally called ``~`` in the working directory (where a later ``rm -rf ~*`` is a disaster),
``upload_checkpoint("~/model.safetensors")`` was "no such file", and ``--config=~/c.json`` a
usage error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rift_client import RiftClient
from tests.api.helpers import digits_config
from tests.client.conftest import RunningApi
from tests.client.helpers import run_riftctl
from tests.preloaded_launcher import Launcher

pytestmark = pytest.mark.service


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of its own, and a working directory outside it (not tmp_path / "work":
    the API's WORK_DIR)."""
    home = tmp_path / "home"
    work = tmp_path / "notebook"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home


def _weights(folder: Path) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = folder / "model.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def test_the_client_reads_and_writes_home_paths(rift: RiftClient, home: Path) -> None:
    weights = _weights(home)
    checkpoint = rift.upload_checkpoint("~/model.safetensors")
    assert checkpoint.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    job = rift.create_job({"config": digits_config()}, checkpoint_file="~/model.safetensors")
    saved = rift.download_report(job.id, "~/reports/")
    assert saved == home / "reports" / f"{job.id}.html" and saved.read_bytes().startswith(b"<!")
    assert list(Path.cwd().iterdir()) == []  # no folder called ~ in the working directory


def test_riftctl_reads_and_writes_home_paths(queued_api: RunningApi, api_key: str | None,
                                             tmp_path: Path, cli_launcher: Launcher | None) -> None:
    home, work = tmp_path / "home", tmp_path / "notebook"
    home.mkdir()
    work.mkdir()
    _weights(home)
    (home / "config.json").write_text(json.dumps(digits_config()))

    def riftctl(*args: str) -> str:
        result = run_riftctl(["-o", "json", *args], url=queued_api.url, api_key=api_key,
                             home=home, cwd=work, launcher=cli_launcher)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    job = json.loads(riftctl("jobs", "create", "--config=~/config.json",
                             "--checkpoint=~/model.safetensors"))
    assert json.loads(riftctl("jobs", "report", job["id"], "--out=~/reports/"))["path"] == \
        str(home / "reports" / f"{job['id']}.html")
    # A queued job has nothing to download (exit 3), but the folder is made where asked.
    result = run_riftctl(["jobs", "download", job["id"], "--out=~/weights"], url=queued_api.url,
                         api_key=api_key, home=home, cwd=work, launcher=cli_launcher)
    assert result.exit_code == 3 and "queued" in result.stderr
    assert (home / "weights").is_dir() and list(work.iterdir()) == []
