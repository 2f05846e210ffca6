"""Checking uploaded checkpoints, and whether a checkpoint fits a job's architecture.

The file checks are the library's (``rift.checkpoints``): safetensors header and tensor bounds, or
``torch.load(weights_only=True)`` for PyTorch files, so a pickle carrying code is refused without
running it. The fit check builds the job's model on PyTorch's ``meta`` device (shapes only, no
memory, no weights) and compares it with the checkpoint's keys and shapes.

torch is imported inside the functions: the API process starts without it and pays the import
once, on the first upload or job.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from persistence.storage import ObjectStore
from rift.config import RiftConfig
from rift.errors import CheckpointError, ConfigError, RiftError

if TYPE_CHECKING:
    from torch import nn

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class CheckpointInspection:
    """What a valid checkpoint holds. ``num_parameters`` counts elements over all tensors;
    ``shapes`` maps each normalised key (wrapper prefixes stripped) to its shape."""

    format: str  # "safetensors" | "torch"
    num_tensors: int
    num_parameters: int
    shapes: Shapes


def inspect_checkpoint_file(path: Path, display_name: str) -> CheckpointInspection:
    """Validate the checkpoint file at ``path`` completely and summarise it.

    Raises:
        CheckpointError: the file is empty, corrupt, truncated, neither format, holds code or
            non-tensor objects, or non-finite values; the message names ``display_name``.
    """
    from rift.checkpoints import detect_checkpoint_format, load_state_dict

    try:
        fmt = detect_checkpoint_format(path)
        state_dict = load_state_dict(path)
    except RiftError as exc:
        raise CheckpointError(_rename(exc.message, path, display_name)) from exc
    except Exception as exc:  # any reader failure on untrusted bytes is the file's fault
        raise CheckpointError(
            f"cannot read checkpoint {display_name}: {type(exc).__name__}: {exc}"
        ) from exc
    return CheckpointInspection(
        format=fmt,
        num_tensors=len(state_dict),
        num_parameters=sum(int(t.numel()) for t in state_dict.values()),
        shapes={key: tuple(int(d) for d in t.shape) for key, t in state_dict.items()},
    )


def _rename(message: str, path: Path, display_name: str) -> str:
    # The library names the scratch file; the user knows the file by the name they uploaded.
    return message.replace(path.name, display_name)


def stored_checkpoint_shapes(
    store: ObjectStore, storage_key: str, fmt: str, scratch_dir: Path
) -> Shapes:
    """Key → shape of a checkpoint already in the store (it was validated on upload).

    A safetensors file is read only as far as its header (two ranged reads); a PyTorch file has
    to be fetched and loaded, since its shapes live inside the pickle.
    """
    from rift.checkpoints import strip_wrapper_prefix

    if fmt == "safetensors":
        header_length = int.from_bytes(b"".join(store.iter_range(storage_key, 0, 8)), "little")
        raw = b"".join(store.iter_range(storage_key, 8, 8 + header_length))
        header = json.loads(raw.decode("utf-8"))
        header.pop("__metadata__", None)
        return {strip_wrapper_prefix(k): tuple(v["shape"]) for k, v in header.items()}
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="checkpoint-") as folder:
        local = store.download_to(storage_key, Path(folder) / "checkpoint.pt")
        return inspect_checkpoint_file(local, storage_key).shapes


def check_checkpoint_fits(
    config: RiftConfig, shapes: Mapping[str, tuple[int, ...]], in_channels: int, image_size: int
) -> nn.Module:
    """Build ``config.architecture`` on the meta device for images of ``in_channels`` ×
    ``image_size`` × ``image_size`` (the dataset's, unless the spec sets them) and require the
    checkpoint's keys and shapes to match it. Returns the meta model (for further checks).

    Raises:
        CheckpointMismatchError: with the missing, unexpected and mismatched keys.
        UnknownArchitectureError / ConfigError: the architecture cannot be built as specified.
    """
    import torch

    from rift.checkpoints import check_compatible
    from rift.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(config.architecture, in_channels=in_channels,
                                image_size=image_size)
    except RiftError:
        raise
    except Exception as exc:  # e.g. a torchvision model that cannot take these options
        raise ConfigError(
            f"cannot build architecture {config.architecture.name!r} for {in_channels}-channel "
            f"{image_size}×{image_size} images: {type(exc).__name__}: {exc}",
            field="architecture",
        ) from exc
    meta_state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    check_compatible(model, meta_state)
    return model
