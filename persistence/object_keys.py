"""Where things live in the object store: the key layout, written once for the writers (the API's
ingest, the workers' stages) and for the janitor that decides what is left over.

- ``checkpoints/<id>.<ext>`` and ``datasets/<id>.<ext>``: uploads, each pointed at by one row.
- ``jobs/<job id>/<stage>/attempt-<n>/<name>``: what attempt ``n`` of a job's stage wrote. Every
  attempt writes its own keys, so a worker that stalled past its lease can only write under its
  own attempt's keys, which are never recorded; later stages read the recorded attempt of an
  earlier stage, which is its last claim (``job_stages.attempts``).
- ``jobs/<job id>/finetune/attempt-<k>/candidate-<i>.attempt-<n>.<name>``: what attempt ``n`` of
  candidate ``i`` of a sweep wrote (``worker/candidates.py``), under the fine-tune stage's attempt
  that started the sweep. Once the stage is done only the winner's θ_FT (the stage's recorded
  ``finetuned.safetensors``) is read again; the others are deleted.
- ``jobs/<job id>/mrc/attempt-<k>/adversarial.safetensors``: the adversarial set the shards of a
  sharded MRC stage share (``worker/shards.py``); nothing reads it once the merge is recorded,
  so the merge deletes it (and the janitor what a crash or a failed delete left).
- ``jobs/<job id>/finetune/epoch-state/<name>``: the state a running fine-tune keeps at the end of
  each epoch (``rift.finetune_resume``), ``stage.safetensors`` for the stage and
  ``candidate-<i>.safetensors`` for sweep candidate ``i``. Outside the attempts: the next attempt
  (a hand-back keeps the attempt, a takeover counts a new one) continues from it. Deleted when
  the fine-tune (candidate) is recorded or the job is cancelled; the janitor removes any left
  once the stage is done or the job has ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHECKPOINTS_PREFIX = "checkpoints/"
DATASETS_PREFIX = "datasets/"
JOBS_PREFIX = "jobs/"

_STAGE_KEY = re.compile(r"^jobs/(?P<job>[^/]+)/(?P<stage>[^/]+)/attempt-(?P<attempt>\d+)/[^/]+$")
#: The stage a sweep's candidates belong to (persistence.models.StageName.FINETUNE).
CANDIDATES_STAGE = "finetune"
_CANDIDATE_NAME = "candidate-"
_CANDIDATE_KEY = re.compile(rf"^{JOBS_PREFIX}[^/]+/{CANDIDATES_STAGE}/attempt-\d+/"
                            rf"{_CANDIDATE_NAME}\d+\.attempt-\d+\.[^/]+$")


#: The stage whose shards share an adversarial set (persistence.models.StageName.MRC).
SHARDS_STAGE = "mrc"
#: The name of that set under the stage attempt that made it.
SHARD_INPUTS_NAME = "adversarial.safetensors"
_SHARD_INPUTS_KEY = re.compile(rf"^{JOBS_PREFIX}[^/]+/{SHARDS_STAGE}/attempt-\d+/"
                               rf"{re.escape(SHARD_INPUTS_NAME)}$")


_EPOCH_STATE_DIR = "epoch-state"
_EPOCH_STATE_KEY = re.compile(
    rf"^{JOBS_PREFIX}(?P<job>[^/]+)/{CANDIDATES_STAGE}/{_EPOCH_STATE_DIR}/[^/]+$")


@dataclass(frozen=True)
class StageObjectKey:
    """The parts of a ``jobs/...`` key."""

    job_id: str
    stage: str
    attempt: int


def stage_object_key(job_id: str, stage: str, attempt: int, name: str) -> str:
    """Where attempt ``attempt`` of ``stage`` of the job writes ``name``."""
    return f"{JOBS_PREFIX}{job_id}/{stage}/attempt-{attempt}/{name}"


def job_prefix(job_id: str) -> str:
    """The prefix of every object a job's stages wrote."""
    return f"{JOBS_PREFIX}{job_id}/"


def parse_stage_object_key(key: str) -> StageObjectKey | None:
    """The job, stage and attempt of a key made by :func:`stage_object_key`; None for others."""
    match = _STAGE_KEY.match(key)
    if match is None:
        return None
    return StageObjectKey(match["job"], match["stage"], int(match["attempt"]))


def candidate_object_key(job_id: str, stage_attempt: int, candidate: int, attempt: int,
                         name: str) -> str:
    """Where attempt ``attempt`` of sweep candidate ``candidate`` writes ``name``, under attempt
    ``stage_attempt`` of the fine-tune stage."""
    return stage_object_key(job_id, CANDIDATES_STAGE, stage_attempt,
                            f"{_CANDIDATE_NAME}{candidate}.attempt-{attempt}.{name}")


def candidate_objects_prefix(job_id: str, stage_attempt: int) -> str:
    """The prefix of every object the candidates of a sweep started by fine-tune stage attempt
    ``stage_attempt`` wrote, all candidates and attempts."""
    return stage_object_key(job_id, CANDIDATES_STAGE, stage_attempt, _CANDIDATE_NAME)


def is_candidate_object_key(key: str) -> bool:
    """A key made by :func:`candidate_object_key`."""
    return _CANDIDATE_KEY.match(key) is not None


def shard_inputs_key(job_id: str, stage_attempt: int) -> str:
    """Where attempt ``stage_attempt`` of the MRC stage stores the adversarial set its shards
    share."""
    return stage_object_key(job_id, SHARDS_STAGE, stage_attempt, SHARD_INPUTS_NAME)


def is_shard_inputs_key(key: str) -> bool:
    """A key made by :func:`shard_inputs_key`."""
    return _SHARD_INPUTS_KEY.match(key) is not None


def epoch_state_key(job_id: str, candidate: int | None = None) -> str:
    """Where the job's fine-tune stage (or sweep candidate ``candidate``) keeps its epoch state."""
    name = "stage" if candidate is None else f"{_CANDIDATE_NAME}{candidate}"
    return f"{JOBS_PREFIX}{job_id}/{CANDIDATES_STAGE}/{_EPOCH_STATE_DIR}/{name}.safetensors"


def epoch_states_prefix(job_id: str) -> str:
    """The prefix of every epoch state of the job (the stage's and its candidates')."""
    return f"{JOBS_PREFIX}{job_id}/{CANDIDATES_STAGE}/{_EPOCH_STATE_DIR}/"


def epoch_state_job(key: str) -> str | None:
    """The job id of a key made by :func:`epoch_state_key`; None for others."""
    match = _EPOCH_STATE_KEY.match(key)
    return match["job"] if match is not None else None
