"""Typed errors of the library. Each carries a stable ``code`` the service maps to HTTP statuses.

The messages are written for the user who supplied the input: they name the field, key or limit
at fault and what would fix it.
"""

from __future__ import annotations


class RiftError(Exception):
    """Base class of every error the library raises on purpose. ``field`` is the dotted config
    setting to change (``finetune.module``, ``mrc.batch_size``), where one is to blame, else
    None: every error carries it in one place, so the CLI prints it and the service's job and
    validation errors carry it whatever the error's class."""

    code: str = "rift_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(RiftError):
    """A setting is out of range or names something that does not exist (e.g. a module name)."""

    code = "invalid_config"


class ModuleWithoutEffect(ConfigError):
    """Fine-tuning refused a module whose weights got a gradient of exactly zero on its first
    step (field ``finetune.module``): the output does not depend on them. A sweep excludes such
    a candidate it chose itself, as it does one that diverged; a module ``finetune.module``
    names is refused."""


class UnknownArchitectureError(ConfigError):
    code = "unknown_architecture"


class CheckpointError(RiftError):
    """The checkpoint file is unreadable, unsafe, or holds non-finite weights."""

    code = "invalid_checkpoint"


class CheckpointEntryError(CheckpointError):
    """Which of a checkpoint's weights entries to use: none was named where several hold
    different weights (a model and its EMA), or the one named does not exist. ``entries`` lists
    the file's entries (key paths such as ``"ema"``)."""

    code = "checkpoint_entry"

    def __init__(self, message: str, entries: list[str] | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, field)
        self.entries = list(entries or [])


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not fit the architecture."""

    code = "checkpoint_mismatch"

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field)
        self.missing = missing or []
        self.unexpected = unexpected or []
        # (key, shape in checkpoint, shape the model expects)
        self.mismatched = mismatched or []


class StageOutputError(RiftError):
    """A saved stage output (``mrc.json``, ``finetuned.safetensors``, ...) that a resumed run
    would reuse cannot be read: damaged, edited, or written by another version."""

    code = "invalid_stage_output"


class DatasetError(RiftError):
    """The dataset cannot be found, read, or does not have the expected layout."""

    code = "invalid_dataset"


class NumericalError(RiftError):
    """A loss or metric came out NaN or infinite (e.g. extreme normalisation or learning rate).
    ``field`` names the setting to change, where one is to blame (``finetune.lr``)."""

    code = "non_finite_values"


class FinetuneDiverged(NumericalError):
    """Fine-tuning diverged in its first epoch: no finite epoch is left to keep as θ_FT (a later
    epoch's divergence only ends training, ``rift.finetune.Divergence``). A sweep excludes such a
    candidate and picks among the others."""


class DeviceMemoryError(RiftError):
    """The device ran out of memory where no smaller batch gives the same result (or even the
    smallest did not fit). Not worth retrying as is: ``field`` names the setting to lower."""

    code = "out_of_device_memory"


class JobCancelled(RiftError):
    """Raised at a batch boundary when the cancellation callback says so."""

    code = "cancelled"

    def __init__(self, message: str = "the job was cancelled") -> None:
        super().__init__(message)


class TimeLimitExceeded(RiftError):
    """The run went past its wall-clock limit; raised by a cancellation callback (the service's
    worker enforces ``JOB_TIME_LIMIT_SECONDS`` this way)."""

    code = "timeout"
