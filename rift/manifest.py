"""The reproducibility manifest of a run (``manifest.json``): what went in and what ran it.

It records the SHA-256 of the checkpoint and of the dataset (an uploaded file's, or None for a
built-in dataset, named in the config) and of the examples the run read (``splits_sha256``: every
image and label of its train, validation and test splits, as ``run.json``'s
``dataset_fingerprint``, so a built-in dataset's copy or a changed split is told apart too), the
full config (defaults filled in), the seed and the deterministic flag, the device and torch's CPU
thread count (``torch_threads``: another count changes θ_FT in its last bits), and the versions
of this package, Python, torch, torchvision, scikit-learn (the digits source), CUDA and cuDNN,
plus the git commit of the code when known. :func:`config_from_manifest` gives
the config back, so a run can be repeated from its manifest: on the CPU the same inputs and
config give bit-identical weights (``tests/rift/test_manifest.py``).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rift.config import RiftConfig, stored_config

MANIFEST_VERSION = 1
PACKAGE = "rift-service"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: Path | None = None) -> str | None:
    """The commit checked out at ``directory`` (default: this package's folder), or None when
    it is not a git checkout or git is missing (e.g. inside an image: set the commit there).

    For this package's own folder the answer is read once per process: the code a process runs
    is what it imported, even if the checkout moves on later (and a job need not pay a git
    subprocess)."""
    if directory is None:
        return _own_commit()
    return _checked_out_commit(directory)


@functools.cache
def _own_commit() -> str | None:
    return _checked_out_commit(Path(__file__).resolve().parent)


def _checked_out_commit(where: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def software_versions() -> dict[str, Any]:
    """Versions of what computes the result (read once per process: the first read loads the
    installed packages' metadata and the cuDNN library, ≈ 0.4 s here)."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        PACKAGE: _version(PACKAGE),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "scikit-learn": _version("scikit-learn"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "platform": platform.platform(),
    }


def build_manifest(config: RiftConfig, *, checkpoint_sha256: str, device: str,
                   dataset_sha256: str | None = None, splits_sha256: str | None = None,
                   commit: str | None = None, extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The manifest document. ``device`` as the run resolved it (``cpu``, ``cuda:0 (H100)``);
    ``splits_sha256`` the loaded splits' fingerprint
    (:func:`rift.pipeline.splits_fingerprint`); ``commit`` defaults to :func:`git_commit`;
    ``extra`` adds keys (e.g. the job id). The thread count is this process's now: build the
    manifest in the process that runs the job."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **dict(extra or {}),
        "checkpoint_sha256": checkpoint_sha256,
        "dataset": {"name": config.dataset.name, "sha256": dataset_sha256,
                    "splits_sha256": splits_sha256},
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "deterministic": config.deterministic,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "versions": software_versions(),
        "git_commit": commit or git_commit(),
    }


def config_from_manifest(manifest: Mapping[str, Any]) -> RiftConfig:
    """The config a manifest recorded, validated again as the run that wrote it read it
    (:func:`rift.config.stored_config`: an earlier release's manifest holds settings checks added
    since refuse)."""
    return stored_config(manifest["config"])
