"""A worker process's cache of prepared runs, so that the next stage of a job on the same process
skips fetching its inputs, decoding the checkpoint and data set and building the model again.

A stage task takes the job's run out of the cache (:meth:`PreparedRunCache.take`), building it on
a miss, and gives it back (:meth:`PreparedRunCache.keep`) only after the stage was recorded and
another stage of the job follows. While a task holds a run, the cache does not: two tasks of one
process never share a model. A run is given back as the stage left it and is put back into its
prepared state when taken: the config as prepared, θ_AT loaded into the model (weights and
BatchNorm buffers, :meth:`rift.pipeline.PreparedRun.reset_weights`), the train/eval mode and every
``requires_grad`` flag as right after preparing, no gradients. Nothing else of a run changes in a
stage: the library's stages never write ``original_state`` or the data splits (tested in
``tests/rift/test_pipeline.py``), and every stage starts from ``reset_weights`` anyway.

Entries are keyed by :class:`RunKey` (job id, checkpoint and data set SHA-256, the job's config),
so a job's run serves only that job. The memory held is bounded by ``max_bytes``
(``WORKER_PREPARED_RUN_CACHE_BYTES``): data splits (on the device where they live there) plus the
model's tensors and the CPU copy of θ_AT; the least recently kept entries go first, and a run
larger than the bound is not kept. A job's entry goes when the job ends on this process (the last
stage is never kept, a failed or cancelled stage gives nothing back) and when a message of a job
that ended elsewhere or was deleted reaches it (:meth:`PreparedRunCache.discard_job`); an entry
whose next stage ran on another worker waits for eviction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imports no torch: worker.runtime, and so the webhook tasks, import this
    from persistence.models import Checkpoint, Dataset, Job
    from rift.config import RiftConfig
    from rift.pipeline import PreparedRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunKey:
    """What a prepared run was built from. The job's spec is fixed once submitted; the digests
    make an entry unusable should the job's rows ever point to other inputs."""

    job_id: str
    checkpoint_sha256: str
    dataset_sha256: str | None
    config_sha256: str

    @classmethod
    def of(cls, job: Job, checkpoint: Checkpoint, dataset: Dataset | None) -> RunKey:
        spec = json.dumps(job.spec, sort_keys=True, separators=(",", ":"))
        return cls(job.id, checkpoint.sha256, dataset.sha256 if dataset is not None else None,
                   hashlib.sha256(spec.encode("utf-8")).hexdigest())


@dataclass
class _PreparedState:
    """What a stage may change on a run and taking it from the cache puts back."""

    config: RiftConfig
    training: bool
    requires_grad: list[bool]

    @classmethod
    def of(cls, run: PreparedRun) -> _PreparedState:
        return cls(run.config, run.model.training,
                   [parameter.requires_grad for parameter in run.model.parameters()])

    def restore(self, run: PreparedRun) -> None:
        run.config = self.config
        run.reset_weights()
        run.model.train(self.training)
        for parameter, flag in zip(run.model.parameters(), self.requires_grad, strict=True):
            parameter.requires_grad_(flag)
            parameter.grad = None


@dataclass
class TakenRun:
    """A run held by one stage task; ``cached`` says whether it came from the cache."""

    key: RunKey
    run: PreparedRun
    cached: bool
    _prepared: _PreparedState = field(repr=False)


@dataclass
class _Entry:
    taken: TakenRun
    nbytes: int


def run_nbytes(run: PreparedRun) -> int:
    """Bytes a kept run holds: its data splits, the model's parameters and buffers, and the CPU
    copy of θ_AT."""
    model = sum(tensor.nbytes for tensor in [*run.model.parameters(), *run.model.buffers()])
    original = sum(tensor.nbytes for tensor in run.original_state.values())
    return run.splits.nbytes + model + original


class PreparedRunCache:
    """Prepared runs of one worker process, least recently kept evicted first beyond
    ``max_bytes`` (0: nothing is kept). Safe to use from several threads of the process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[RunKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: RunKey, build: Callable[[], PreparedRun]) -> TakenRun:
        """The run for ``key`` in its prepared state, out of the cache; ``build()`` on a miss."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            run = build()
            return TakenRun(key, run, cached=False, _prepared=_PreparedState.of(run))
        taken = entry.taken
        taken._prepared.restore(taken.run)
        return TakenRun(key, taken.run, cached=True, _prepared=taken._prepared)

    def keep(self, taken: TakenRun) -> None:
        """Keep ``taken`` for the job's next stage on this process, evicting the least recently
        kept entries while the cache holds more than ``max_bytes``."""
        nbytes = run_nbytes(taken.run)
        if nbytes > self.max_bytes:
            return
        # Gradients left by the stage (fine-tuning's last step) would only take memory here.
        for parameter in taken.run.model.parameters():
            parameter.grad = None
        with self._lock:
            self._entries.pop(taken.key, None)
            self._entries[taken.key] = _Entry(taken, nbytes)
            while self.nbytes > self.max_bytes:
                evicted, _ = self._entries.popitem(last=False)
                logger.info("prepared-run cache: evicted job %s", evicted.job_id)

    def discard_job(self, job_id: str) -> None:
        """Drop every entry of the job (it ended elsewhere, or was deleted)."""
        with self._lock:
            for key in [key for key in self._entries if key.job_id == job_id]:
                del self._entries[key]

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept runs (see :func:`run_nbytes`)."""
        return sum(entry.nbytes for entry in self._entries.values())

    def job_ids(self) -> list[str]:
        """The jobs with a kept run, least recently kept first."""
        with self._lock:
            return [key.job_id for key in self._entries]

