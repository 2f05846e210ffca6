"""The API process never imports torch: a fresh interpreter builds the app, uploads a checkpoint
and a dataset, creates a job and reads the records back, and torch is still not loaded (the
checks ran in validator processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from rift.checkpoints import save_safetensors
from tests.api.helpers import digits_config, small_cnn_state

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from persistence.migrate import upgrade_database
from persistence.settings import Settings

folder = Path(sys.argv[1])
url = f"sqlite:///{folder / 'rift.db'}"
upgrade_database(url)
settings = Settings(database_url=url, broker_url="memory://", store_kind="local",
                    store_root=folder / "objects", work_dir=folder / "work")


class Dispatcher:
    def enqueue_job(self, job_id): pass
    def check(self): pass
    def enqueue_webhook(self, delivery_id, countdown=None): pass
    def close(self): pass


from persistence.api_keys import create_key, create_project
from persistence.db import session_factory_from_settings

with session_factory_from_settings(settings)() as session:
    key = create_key(session, create_project(session, "tests"), ["read", "write"]).key

statuses = {}
with TestClient(create_app(settings, dispatcher=Dispatcher()),
                headers={"Authorization": f"Bearer {key}"}) as client:
    with open(folder / "model.safetensors", "rb") as handle:
        answer = client.post("/v1/checkpoints", files={"file": ("model.safetensors", handle)})
    statuses["checkpoint"] = answer.status_code
    checkpoint_id = answer.json()["id"]
    with open(folder / "data.npz", "rb") as handle:
        answer = client.post("/v1/datasets", files={"file": ("data.npz", handle)})
    statuses["dataset"] = answer.status_code
    statuses["dataset_read"] = client.get(f"/v1/datasets/{answer.json()['id']}").status_code
    config = json.loads((folder / "config.json").read_text())
    answer = client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "config": config})
    statuses["job"] = answer.status_code
    with open(folder / "model.safetensors", "rb") as handle:
        answer = client.post("/v1/jobs", files={"checkpoint": ("m.safetensors", handle)},
                             data={"spec": json.dumps({"config": config})})
    statuses["multipart_job"] = answer.status_code
print(json.dumps({"statuses": statuses, "torch": "torch" in sys.modules,
                  "rift_models": "rift.models" in sys.modules}))
"""


def test_api_process_never_imports_torch(tmp_path: Path) -> None:
    save_safetensors(tmp_path / "model.safetensors", small_cnn_state())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((20, 1, 8, 8), dtype=np.float32),
             y=np.arange(20) % 10)
    (tmp_path / "config.json").write_text(json.dumps(digits_config()))
    result = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == {"checkpoint": 201, "dataset": 201, "dataset_read": 200,
                                  "job": 201, "multipart_job": 201}
    assert report["torch"] is False and report["rift_models"] is False
