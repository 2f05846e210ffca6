"""One format for what each stage leaves behind, whoever runs it (the CLI into a folder, a worker
into the object store): one writer and one reader per file, over a storage that only reads and
writes bytes by name.

Files (names are the same everywhere):
    mrc.json, mrc.csv                      MRC stage: the table and its CSV view
    finetune.json, finetuned.safetensors   fine-tune stage: epochs and θ_FT
    tuned.safetensors, result.json         interpolation stage: θ_α* and the run's result document
    run.json                               folder runs only: what the outputs belong to (see
                                           ``RunIdentity``)
    manifest.json                          what reproduces the run (``rift.manifest``): written
                                           with the MRC stage's outputs
    candidate-NN.candidate.json,           a sequential sweep's candidate NN (folder runs):
    candidate-NN.finetune.json,            its outcome and curve, its fine-tune record and θ_FT
    candidate-NN.finetuned.safetensors     (the losers' θ_FT deleted once the sweep is done)
    finetune.epoch-state.safetensors       folder runs: fine-tuning's state at its last epoch
    (candidate-NN. too)                    (``rift.finetune_resume``), until finetune.json is
                                           saved: a run stopped mid-fine-tune continues there
    .rift.lock                             folder runs only: locked by the run using the folder
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rift.errors import ConfigError, StageOutputError
from rift.safetensors_bytes import safetensors_bytes

MRC_JSON = "mrc.json"
MRC_CSV = "mrc.csv"
FINETUNE_JSON = "finetune.json"
FINETUNED = "finetuned.safetensors"
TUNED = "tuned.safetensors"
RESULT_JSON = "result.json"
CURVES_JSON = "curves.json"  # a sweep's candidates side by side (rift.sweep)
RUN_JSON = "run.json"
MANIFEST_JSON = "manifest.json"
LOCK_FILE = ".rift.lock"  # folder runs: held by the run using the folder (FolderStorage.lock)
CANDIDATE_JSON = "candidate.json"  # under a candidate's prefix (candidate_prefix)
EPOCH_STATE = "finetune.epoch-state.safetensors"  # folder runs (StoredEpochState)
_CANDIDATE_GLOB = "candidate-*"
# The stage that writes each file (a worker stores each stage's files under that stage's keys).
STAGE_OF_FILE = {MRC_JSON: "mrc", MRC_CSV: "mrc", FINETUNE_JSON: "finetune",
                 FINETUNED: "finetune", TUNED: "interpolate", RESULT_JSON: "interpolate",
                 CURVES_JSON: "interpolate"}
CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv",
                 ".safetensors": "application/octet-stream"}
StateDict = dict[str, torch.Tensor]


class StageStorage(Protocol):
    """Where stage files live. ``read_bytes`` returns None for a file that is not there."""

    def read_bytes(self, name: str) -> bytes | None: ...

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None: ...


def output_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot hold a run's outputs (a file, not writable, a parent that is a
    file), or None once it exists and a scratch file could be written there. Makes the
    folder and its parents."""
    if folder.exists() and not folder.is_dir():
        return "a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        at = f" ({exc.filename})" if exc.filename and Path(exc.filename) != folder else ""
        return f"cannot write there: {exc.strerror or exc}{at}"
    return None


def check_output_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse an output folder that cannot be written, before any long work.

    Raises:
        ConfigError: (field ``output_dir``) naming the folder and the reason.
    """
    problem = output_folder_problem(Path(folder))
    if problem is not None:
        raise ConfigError(f"output_dir {folder}: {problem}", field="output_dir")


class FolderStorage:
    """Stage files in a folder; each write is atomic (a crash never leaves half a file)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)  # a str from a script is as good as a Path

    def read_bytes(self, name: str) -> bytes | None:
        path = self.folder / name
        return path.read_bytes() if path.is_file() else None

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Opened by name, not tempfile.mkstemp: mkstemp's files are 0600 whatever the umask, so
        # the outputs (tuned.safetensors) were unreadable to the user's group.
        temporary = self.folder / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            with temporary.open("xb") as output:
                output.write(data)
            os.replace(temporary, self.folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: a second run on it (another process, the same outputs
        folder) is refused instead of interleaving its stage files and ``run.json`` with this
        one's. The lock goes with the process (an interrupted or killed run leaves none behind).

        Raises:
            ConfigError: (field ``output_dir``) another run holds the folder.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK_FILE).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another run is using {self.folder}; wait for it to finish or use another "
                    "folder", field="output_dir") from None
            yield

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def remove_outputs(self) -> None:
        """Delete every stage file, a sweep's candidate files, ``run.json`` and ``manifest.json``
        (``--fresh``);
        other files stay."""
        for name in (*STAGE_OF_FILE, RUN_JSON, MANIFEST_JSON, EPOCH_STATE):
            self.remove(name)
        for path in self.folder.glob(_CANDIDATE_GLOB):
            path.unlink(missing_ok=True)

    def has_outputs(self) -> bool:
        return any((self.folder / name).is_file() for name in STAGE_OF_FILE)


def candidate_prefix(index: int) -> str:
    """The prefix of sequential-sweep candidate ``index``'s files in a run folder."""
    return f"candidate-{index:02d}."


class PrefixedStorage:
    """The files of ``inner`` whose names start with ``prefix``, by their names without it: one
    candidate's stage files written and read with the usual names."""

    def __init__(self, inner: FolderStorage, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def read_bytes(self, name: str) -> bytes | None:
        return self.inner.read_bytes(self.prefix + name)

    def write_bytes(self, name: str, data: bytes, content_type: str) -> None:
        self.inner.write_bytes(self.prefix + name, data, content_type)

    def remove(self, name: str) -> None:
        self.inner.remove(self.prefix + name)


class StoredEpochState:
    """Fine-tuning's epoch state (``rift.finetune_resume.EpochStateStore``) as the file
    ``EPOCH_STATE`` of a folder run's storage (a candidate's prefixed one too)."""

    def __init__(self, storage: FolderStorage | PrefixedStorage) -> None:
        self.storage = storage

    def load(self) -> bytes | None:
        return self.storage.read_bytes(EPOCH_STATE)

    def save(self, data: bytes) -> None:
        self.storage.write_bytes(EPOCH_STATE, data, content_type(EPOCH_STATE))

    def discard(self) -> None:
        self.storage.remove(EPOCH_STATE)


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


def write_json(storage: StageStorage, name: str, document: Mapping[str, Any]) -> None:
    storage.write_bytes(name, json.dumps(document, indent=2).encode("utf-8"), content_type(name))


def unreadable(name: str, detail: str) -> StageOutputError:
    """The error for a saved stage file that cannot be used, naming it and the way out."""
    return StageOutputError(
        f"the saved stage output {name} cannot be read ({detail}); it is damaged or was written "
        "by another version. Start the run over to recompute it (the CLI's --fresh)")


def read_json(storage: StageStorage, name: str) -> dict[str, Any] | None:
    """The JSON object saved as ``name``, or None when there is none.

    Raises:
        StageOutputError: the file is not a JSON object.
    """
    data = storage.read_bytes(name)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(name, f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise unreadable(name, f"a JSON {type(document).__name__}, not an object")
    return document


def write_text(storage: StageStorage, name: str, text: str) -> None:
    storage.write_bytes(name, text.encode("utf-8"), content_type(name))


def write_weights(storage: StageStorage, name: str, state_dict: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str]) -> None:
    """``state_dict`` as safetensors bytes (CPU, contiguous, no shared storage), the same bytes
    for the same tensors and metadata (:mod:`rift.safetensors_bytes`)."""
    tensors = {key: value.detach().to("cpu").contiguous().clone()
               for key, value in state_dict.items()}
    storage.write_bytes(name, safetensors_bytes(tensors, metadata), content_type(name))


def read_weights(storage: StageStorage, name: str) -> StateDict | None:
    """The tensors saved as ``name``, or None when there is none.

    Raises:
        StageOutputError: the file is not a readable safetensors file.
    """
    data = storage.read_bytes(name)
    if data is None:
        return None
    from safetensors.torch import load

    try:
        return dict(load(data))
    except Exception as exc:  # the Rust reader raises SafetensorError and others
        raise unreadable(name, f"not a readable safetensors file: {exc}") from exc


# --------------------------------------------------------------------------- run identity


@dataclass(frozen=True)
class RunIdentity:
    """What a folder's stage outputs were computed from: reuse them only if all three match."""

    checkpoint_sha256: str
    dataset_fingerprint: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint_sha256": self.checkpoint_sha256,
                "dataset_fingerprint": self.dataset_fingerprint, "config": self.config}

    def differences(self, other: RunIdentity) -> list[str]:
        """The parts that differ, named for a message: 'checkpoint', 'dataset', 'config'."""
        names = []
        if self.checkpoint_sha256 != other.checkpoint_sha256:
            names.append("checkpoint")
        if self.dataset_fingerprint != other.dataset_fingerprint:
            names.append("dataset")
        if self.config != other.config:
            names.append("config")
        return names


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        # Flattened first: a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes of another element size.
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    return digest.hexdigest()


def check_run_identity(folder: FolderStorage, identity: RunIdentity) -> None:
    """Refuse a folder whose stage outputs belong to another run; otherwise record ``identity``.

    A folder without stage outputs (new, or left by a run that failed before its first stage
    finished) is taken over whatever its ``run.json`` says, so a failed run never blocks a
    corrected one.
    """
    if folder.has_outputs():
        saved = read_json(folder, RUN_JSON)
        if saved is None:
            raise ConfigError(
                f"{folder.folder} holds stage outputs but no {RUN_JSON} saying what they were "
                "computed from; use --fresh to start over or another folder", field="output_dir")
        recorded = RunIdentity(saved.get("checkpoint_sha256", ""),
                               saved.get("dataset_fingerprint", ""), saved.get("config", {}))
        different = identity.differences(recorded)
        if different:
            raise ConfigError(
                f"{folder.folder} holds the outputs of a run with another "
                f"{' and '.join(different)}; reusing them would mix two runs. Use --fresh to "
                "start over (deletes those outputs) or another folder", field="output_dir")
        return
    write_json(folder, RUN_JSON, identity.to_json())
