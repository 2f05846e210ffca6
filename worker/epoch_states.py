"""A fine-tune's epoch state in the object store (``rift.finetune_resume``): one object per
running fine-tune stage or sweep candidate (:func:`persistence.object_keys.epoch_state_key`),
replaced at the end of every epoch, continued from by the next attempt when its inputs digest
matches, and deleted once the stage (candidate) is recorded or the job is cancelled.

Not counted against the project's stored bytes: it lives only while a fine-tune runs, one per
fine-tune (candidate), and holds the tuned module's weights three times (now, best, momentum)
and the model's buffers twice, far less than the checkpoint's size the job reserves.
"""

from __future__ import annotations

import logging

from persistence.object_keys import epoch_state_key, epoch_states_prefix
from persistence.storage import ObjectNotFound, ObjectStore

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"


class ObjectEpochStateStore:
    """The epoch state of the job's fine-tune stage (``candidate`` None) or of one candidate."""

    def __init__(self, store: ObjectStore, job_id: str, candidate: int | None = None) -> None:
        self.store = store
        self.key = epoch_state_key(job_id, candidate)

    # The state only saves work: a store that fails to give or take it costs the epochs since
    # the last state written, never the stage (which would be retried or failed for it).
    def load(self) -> bytes | None:
        try:
            return self.store.get_bytes(self.key)
        except ObjectNotFound:
            return None
        except Exception as exc:  # StoreError and transport errors: start from the beginning
            logger.warning("could not read the epoch state %s: %s", self.key, type(exc).__name__)
            return None

    def save(self, data: bytes) -> None:
        try:
            self.store.put_bytes(self.key, data, content_type=CONTENT_TYPE)
        except Exception as exc:  # StoreError and transport errors: the last state stays
            logger.warning("could not store the epoch state %s: %s", self.key,
                           type(exc).__name__)

    def discard(self) -> None:
        """Delete the state (best effort: the janitor removes one left behind)."""
        discard_keys(self.store, [self.key], self.key)


def discard_epoch_states(store: ObjectStore, job_id: str) -> None:
    """Delete every epoch state of the job (its stage's and its candidates'); best effort."""
    prefix = epoch_states_prefix(job_id)
    try:
        keys = [item.key for item in store.list_objects(prefix)]
    except Exception as exc:  # StoreError and transport errors: the janitor removes them
        logger.warning("could not list the epoch states %s: %s", prefix, type(exc).__name__)
        return
    discard_keys(store, keys, prefix)


def discard_keys(store: ObjectStore, keys: list[str], what: str) -> None:
    if not keys:
        return
    try:
        failed = store.delete_many(keys)
    except Exception as exc:  # StoreError and transport errors: the janitor removes them
        logger.warning("could not delete the epoch state %s: %s", what, type(exc).__name__)
        return
    for key, reason in failed.items():
        logger.warning("could not delete the epoch state %s: %s", key, reason)
