"""``riftctl ... delete --if-match ETAG`` (the Python client's ``if_match=``) and the ETag that
``get`` shows (a row of its table, ``etag`` in ``--output json``): a stale tag is exit 3 with
the current one named and nothing deleted, a malformed one a usage error (exit 2)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.api.helpers import varied_images
from tests.client.test_cli import Cli, checkpoint_file, cli, config_file  # noqa: F401 (fixtures)

pytestmark = pytest.mark.service


def _etag(cli: Cli, *get: str) -> str:  # noqa: F811
    shown = cli("-o", "json", *get)
    assert shown.exit_code == 0, shown.stderr
    etag = shown.json()["etag"]
    assert isinstance(etag, str) and etag.startswith('"') and etag.endswith('"')
    return etag


def test_get_shows_the_etag_and_delete_takes_it(cli: Cli, checkpoint_file: Path,  # noqa: F811
                                                config_file: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    checkpoint = cli("-o", "json", "checkpoints", "upload", str(checkpoint_file)).json()
    held = _etag(cli, "checkpoints", "get", checkpoint["id"])
    text = cli("checkpoints", "get", checkpoint["id"])
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")]
            for line in text.stdout.splitlines()]
    assert text.exit_code == 0 and ["etag", held] in rows, text.stdout

    job = cli("-o", "json", "jobs", "create", "--checkpoint", checkpoint["id"], "--config",
              str(config_file)).json()
    job_tag = _etag(cli, "jobs", "get", job["id"])
    assert f"  etag: {job_tag}" in cli("jobs", "get", job["id"]).stdout.splitlines()
    assert cli("jobs", "cancel", job["id"]).exit_code == 0
    # The job changed (cancelled) since its tag was read: refused, naming the current tag.
    stale = cli("jobs", "delete", job["id"], "--if-match", job_tag)
    current = _etag(cli, "jobs", "get", job["id"])
    assert current != job_tag
    assert stale.exit_code == 3 and "412 precondition_failed" in stale.stderr, stale.stderr
    assert f"its current ETag is {current}" in stale.stderr
    assert f"--if-match '{current}'" in stale.stderr
    refused = cli("-o", "json", "jobs", "delete", job["id"], "--if-match", job_tag)
    assert refused.exit_code == 3 and refused.stdout == ""
    error = refused.error()
    assert error["status"] == 412 and error["code"] == "precondition_failed"
    assert error["field"] == "--if-match" and error["etag"] == current
    assert cli("jobs", "get", job["id"]).exit_code == 0  # still there
    # A tag whose double quotes the shell took (`--if-match "ab12…"`) is quoted again.
    deleted = cli("-o", "json", "jobs", "delete", job["id"], "--if-match", current.strip('"'))
    assert deleted.exit_code == 0 and deleted.json() == {"deleted": job["id"]}, deleted.stderr

    for bad in ("", "  ", 'a"b c'):
        usage = cli("-o", "json", "checkpoints", "delete", checkpoint["id"], "--if-match", bad)
        assert usage.exit_code == 2, usage.stderr
        assert usage.error()["field"] == "--if-match", usage.stderr
    assert cli("checkpoints", "delete", checkpoint["id"], "--if-match", held).exit_code == 0
    assert cli("checkpoints", "get", checkpoint["id"]).exit_code == 6  # not found

    path = tmp_path / "tiny.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10)
    path.write_bytes(buffer.getvalue())
    dataset = cli("-o", "json", "datasets", "upload", str(path)).json()
    tag = _etag(cli, "datasets", "get", dataset["id"])
    assert cli("datasets", "delete", dataset["id"], "--if-match", '"0"').exit_code == 3
    assert cli("datasets", "delete", dataset["id"], "--if-match", tag).exit_code == 0

    hook = cli("-o", "json", "webhooks", "create", "http://127.0.0.1:9/hook").json()
    tag = _etag(cli, "webhooks", "get", hook["id"])
    assert cli("webhooks", "delete", hook["id"], "--if-match", '"0"').exit_code == 3
    assert cli("webhooks", "delete", hook["id"], "--if-match", "*").exit_code == 0
    assert cli("webhooks", "get", hook["id"]).exit_code == 6  # not found
