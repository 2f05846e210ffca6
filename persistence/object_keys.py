"""Where things live in the object store: the key layout, written once for the writers (the API's
ingest, the workers' stages) and for the janitor that decides what is left over.

- ``checkpoints/<id>.<ext>`` and ``datasets/<id>.<ext>``: uploads, each pointed at by one row.
- ``jobs/<job id>/<stage>/attempt-<n>/<name>``: what attempt ``n`` of a job's stage wrote. Every
  attempt writes its own keys, so a worker that stalled past its lease can only write under its
  own attempt's keys, which are never recorded; later stages read the recorded attempt of an
  earlier stage, which is its last claim (``job_stages.attempts``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHECKPOINTS_PREFIX = "checkpoints/"
DATASETS_PREFIX = "datasets/"
JOBS_PREFIX = "jobs/"

_STAGE_KEY = re.compile(r"^jobs/(?P<job>[^/]+)/(?P<stage>[^/]+)/attempt-(?P<attempt>\d+)/[^/]+$")


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
