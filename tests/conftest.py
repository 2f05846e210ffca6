"""Shared fixtures: a real adversarially trained checkpoint on the sklearn digits, and its job config.

The checkpoint is made once per test session (about ten seconds on two cores) and cached on disk,
keyed by the source of everything that shapes it, so a second local run reuses it. CI starts from a
clean clone, so it always trains one.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from api.validation import Validator

pytest_plugins = ["tests.service_fixtures", "tests.worker_jobs", "tests.shared_validator"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SOURCES_THAT_SHAPE_THE_CHECKPOINT = (
    "rift/demo.py", "rift/adversarial_training.py", "rift/attacks.py", "rift/models/small_cnn.py",
    "rift/data/digits.py", "rift/data/splits.py", "rift/data/batches.py", "rift/data/augment.py",
)


def _source_digest() -> str:
    digest = hashlib.sha256()
    for relative in _SOURCES_THAT_SHAPE_THE_CHECKPOINT:
        path = PROJECT_ROOT / relative
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:16]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist several test processes share the cores: one math thread each (and for
    the worker and API processes they start, which inherit the environment), instead of every
    process spinning a thread per core against the others."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test distribution of ``tests/entry_point_dist.py`` (its ``rift.architectures`` entry
    points), installed for this test: its folder is on ``sys.path``."""
    from tests.entry_point_dist import write_entry_point_dist

    folder = write_entry_point_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture(scope="session")
def digits_checkpoint_info() -> dict[str, Any]:
    """Path and measured test accuracies of ``small_cnn`` adversarially trained on digits (CPU)."""
    import json

    from rift.demo import make_digits_checkpoint

    cache = Path(os.environ.get("RIFT_TEST_CACHE", PROJECT_ROOT / ".cache" / "test-fixtures"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"digits-small-cnn-{_source_digest()}.safetensors"
    info_path = path.with_suffix(".json")
    # Several test processes (pytest-xdist) ask for it at once on a clean clone: one makes it
    # while the others wait on the lock (training it three times over would cost the cores
    # they share); files are renamed into place, the checkpoint before the info that marks it
    # complete, so an interrupted run leaves nothing half-written.
    with open(cache / ".digits-checkpoint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path.exists() and info_path.exists()):
            def own(final: Path) -> Path:
                return final.with_name(f".{os.getpid()}-{final.name}")

            info = make_digits_checkpoint(own(path), seed=0, device="cpu")
            info.pop("history", None)
            info["path"] = str(path)
            own(info_path).write_text(json.dumps(info))
            os.replace(own(path), path)
            os.replace(own(info_path), info_path)
    return json.loads(info_path.read_text())


@pytest.fixture(scope="session")
def digits_checkpoint_path(digits_checkpoint_info: dict[str, Any]) -> Path:
    return Path(digits_checkpoint_info["path"])


@pytest.fixture
def digits_job_config() -> dict[str, Any]:
    """The demo's fast RiftConfig as a dict (a fresh copy per test), pinned to the CPU."""
    from rift.demo import DIGITS_DEMO_CONFIG

    config = copy.deepcopy(DIGITS_DEMO_CONFIG)
    config["device"] = "cpu"
    return config


@pytest.fixture(scope="session")
def shared_validator() -> Iterator[Validator]:
    """One validator server for the session's API apps: each would otherwise start its own and
    pay torch's import (seconds). Checks still run one forked child each, with default limits."""
    from api.validation import Validator
    from persistence.settings import Settings

    validator = Validator(Settings())
    yield validator
    validator.close()
