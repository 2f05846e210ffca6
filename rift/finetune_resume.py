"""Exact per-epoch resume of fine-tuning: what :func:`rift.finetune.finetune_module` keeps at the
end of each epoch so that another attempt (a worker that took over a handed-back or abandoned
stage) continues from there and ends with the same tensors as a run never interrupted.

The state is everything the next epoch reads: the tuned module's parameters and every buffer of
the model (BatchNorm statistics move in train mode, whichever module is tuned), the SGD momentum
buffers and learning-rate schedule, the batch-shuffling generator's state, the global RNG state
(dropout; the CUDA one on a GPU), the epochs' metrics, and the best epoch with its weights. Frozen
parameters are left out: they are θ_AT, which the resumed run starts from.

One file, safetensors (no pickle: a state read back cannot run code), its non-tensor part a JSON
document in the file's metadata. It carries the SHA-256 of everything the training is computed
from (:func:`finetune_inputs_digest`); a state under another digest (another checkpoint, data,
setting, seed, precision, device type or torch version) is never resumed from, as the MRC rows
(``module_scored``) and α points (``alpha_evaluated``) stored by a stage are taken only under an
equal digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from rift.data import DatasetSplits
from rift.mrc import update_digest
from rift.safetensors_bytes import safetensors_bytes

FORMAT = "rift.finetune_epoch_state/1"
_METADATA_KEY = "rift_finetune_state"


class EpochStateStore(Protocol):
    """Where one fine-tune run's epoch state lives (one file: the last epoch's replaces the one
    before). ``load`` returns None when there is none."""

    def load(self) -> bytes | None: ...

    def save(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class FinetuneResume:
    """Resume ``finetune_module`` from ``store`` when it holds a state of digest ``inputs``, and
    keep the state there after every epoch. ``on_resumed`` is told the number of epochs taken
    from the store, before the first epoch trained."""

    store: EpochStateStore
    inputs: str
    on_resumed: Callable[[int], None] | None = None


@dataclass
class EpochState:
    """Fine-tuning as it stood at the end of epoch ``epoch`` (1-based, the last one finished).

    ``model``: the tuned parameters and every buffer, by ``named_parameters``/``named_buffers``
    names (non-persistent buffers too: they move during training). ``best``: the best epoch's
    tuned parameters and persistent buffers, by state-dict names. ``optimizer`` and
    ``scheduler``: their ``state_dict()`` (the scheduler's without ``milestones``, which the
    spec gives again). ``history``: the epochs' ``EpochMetrics.as_dict()``."""

    inputs: str
    epoch: int
    history: list[dict[str, Any]]
    best_epoch: int
    best_accuracy: float
    model: dict[str, Tensor]
    best: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: Tensor
    rng: Tensor
    cuda_rng: Tensor | None = None


def finetune_inputs_digest(initial_state: Mapping[str, Tensor], splits: DatasetSplits,
                           module: str, settings: Iterable[Any]) -> str:
    """SHA-256 of everything fine-tuning computes from: the weights it starts from (θ_AT), the
    training and validation examples bit for bit, the augmentation, the module tuned and
    ``settings`` (the fine-tune spec, seed, precision, evaluation batch size, ... as JSON-able
    values). The device type and the torch version are added here: the same state on another
    kind of device or another torch would not continue the same computation."""
    digest = hashlib.sha256()
    for name in sorted(initial_state):
        digest.update(name.encode())
        update_digest(digest, initial_state[name])
    for split in (splits.train, splits.validation):
        update_digest(digest, split.images)
        update_digest(digest, split.labels)
    digest.update(json.dumps([FORMAT, splits.augment, module, list(settings),
                              torch.__version__], sort_keys=True, default=repr).encode())
    return digest.hexdigest()


#: Devices whose random state the epoch state holds (the CPU generator always, CUDA's beside
#: it). Another device's generator (``mps``, ``xpu``: dropout draws from it) is not saved, so a
#: resumed run there would differ from an uninterrupted one: fine-tuning starts over instead.
RESUMABLE_DEVICE_TYPES = ("cpu", "cuda")


def resumable_on(device: torch.device) -> bool:
    """Whether a fine-tune on ``device`` can continue exactly from a stored epoch state."""
    return device.type in RESUMABLE_DEVICE_TYPES


def device_settings(device: torch.device) -> list[str]:
    """What of ``device`` belongs in the digest: its type (a state made on a GPU is not resumed
    on a CPU, whose kernels round differently)."""
    return [device.type]


def encode_epoch_state(state: EpochState) -> bytes:
    """``state`` as the bytes of one safetensors file."""
    tensors: dict[str, Tensor] = {}
    for prefix, group in (("model", state.model), ("best", state.best)):
        for name, value in group.items():
            tensors[f"{prefix}/{name}"] = value
    optimizer_state: dict[str, dict[str, Any]] = {}
    for index, entry in state.optimizer.get("state", {}).items():
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                plain[key] = value
        optimizer_state[str(index)] = plain
    tensors["rng/generator"] = state.generator
    tensors["rng/global"] = state.rng
    if state.cuda_rng is not None:
        tensors["rng/cuda"] = state.cuda_rng
    document = {
        "format": FORMAT, "inputs": state.inputs, "epoch": state.epoch,
        "history": state.history, "best_epoch": state.best_epoch,
        "best_accuracy": state.best_accuracy,
        "optimizer": {"state": optimizer_state,
                      "param_groups": state.optimizer.get("param_groups", [])},
        "scheduler": {key: value for key, value in state.scheduler.items()
                      if key != "milestones"},
    }
    # Copies on the CPU, contiguous and unshared: safetensors refuses shared storage (tied
    # weights, a best state that is the current one).
    plain_tensors = {key: value.detach().to("cpu").contiguous().clone()
                     for key, value in tensors.items()}
    return safetensors_bytes(plain_tensors, {_METADATA_KEY: json.dumps(document)})


def decode_epoch_state(data: bytes) -> EpochState | None:
    """The state in ``data``; None for bytes that are not one of this format (damaged, another
    version): fine-tuning then starts from its beginning, as without a state."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        document = json.loads(_metadata(data))
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return None
        optimizer_state: dict[int, dict[str, Any]] = {
            int(index): dict(plain) for index, plain in document["optimizer"]["state"].items()}
        groups: dict[str, dict[str, Tensor]] = {"model": {}, "best": {}}
        for key, value in tensors.items():
            kind, _, rest = key.partition("/")
            if kind in groups:
                groups[kind][rest] = value
            elif kind == "optimizer":
                index, _, name = rest.partition("/")
                optimizer_state.setdefault(int(index), {})[name] = value
        return EpochState(
            inputs=str(document["inputs"]), epoch=int(document["epoch"]),
            history=list(document["history"]), best_epoch=int(document["best_epoch"]),
            best_accuracy=float(document["best_accuracy"]), model=groups["model"],
            best=groups["best"],
            optimizer={"state": optimizer_state,
                       "param_groups": list(document["optimizer"]["param_groups"])},
            scheduler=dict(document["scheduler"]), generator=tensors["rng/generator"],
            rng=tensors["rng/global"], cuda_rng=tensors.get("rng/cuda"))
    except Exception:  # the Rust reader's errors, JSON, missing keys: not a usable state
        return None


def _metadata(data: bytes) -> str:
    """The JSON document in the header of the safetensors bytes ``data``."""
    # The header is an 8-byte little-endian length and then JSON (safe_open reads files only).
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    return str(header["__metadata__"][_METADATA_KEY])


def load_epoch_state(resume: FinetuneResume) -> EpochState | None:
    """The state stored for ``resume``'s run: None when there is none, it cannot be read, or
    it was computed from other inputs (another digest)."""
    data = resume.store.load()
    if data is None:
        return None
    state = decode_epoch_state(data)
    return state if state is not None and state.inputs == resume.inputs else None
