"""Which other built-in architecture a checkpoint fits, for the message of one that does not fit
the architecture its job names.

A first user with the digits demo checkpoint and a ``resnet18`` config was told of 97 missing
keys, 14 unexpected ones and 5 shape mismatches; the keys fit ``small_cnn`` exactly, and saying
so is the fix in one line. The search builds each built-in network on the meta device (shapes
only, no memory for weights) and stops at the first that fits; it runs only once a checkpoint has
already been refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rift.checkpoints import check_compatible
from rift.config import ArchitectureSpec
from rift.errors import CheckpointMismatchError
from rift.models.registry import build_model, builtin_architectures


def fitting_architecture(spec: ArchitectureSpec, shapes: Mapping[str, tuple[int, ...]],
                         channel_options: Sequence[int], image_size: int) -> str | None:
    """The first built-in architecture other than ``spec.name`` whose model, built with
    ``spec``'s other settings (``num_classes``, normalisation, ...) for images of one of
    ``channel_options`` channels and ``image_size`` pixels, has exactly the checkpoint's keys
    and shapes; None if none does."""
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    for name in builtin_architectures():
        if name == spec.name:
            continue
        other = spec.model_copy(update={"name": name})
        for channels in channel_options:
            try:
                with torch.device("meta"):
                    model = build_model(other, in_channels=channels, image_size=image_size,
                                        checkpoint_keys=state)
                check_compatible(model, state)
            except Exception:  # any refusal (keys, options it cannot take): not this one
                continue
            return name
    return None


def with_architecture_hint(error: CheckpointMismatchError, spec: ArchitectureSpec,
                           shapes: Mapping[str, tuple[int, ...]],
                           channel_options: Sequence[int],
                           image_size: int) -> CheckpointMismatchError:
    """``error``, or a copy whose message starts by naming the built-in architecture the
    checkpoint fits (first: the key lists after it run long), with the same missing,
    unexpected and mismatched lists."""
    name = fitting_architecture(spec, shapes, channel_options, image_size)
    if name is None:
        return error
    return CheckpointMismatchError(
        f"these weights fit the architecture {name!r}, not {spec.name!r}: set "
        f"architecture.name to {name!r}. {error.message}", error.missing, error.unexpected,
        error.mismatched)


def feature_vectors_hint(error: CheckpointMismatchError, num_features: int, field: str) -> str:
    """The end of a mismatch message for feature vectors (an npz ``x`` of shape (N, F)) given to
    a checkpoint of an image model (a convolution's 4-D weight mismatched): "" otherwise.
    ``field`` names the architecture's name where the caller's user sets it. Before, the library
    said the data's "images have 5 channel(s)" and to repeat an npz x along its channel axis,
    and the service named no cause."""
    if not any(len(saved) == 4 for _, saved, _ in error.mismatched):
        return ""
    return (f"; the dataset holds feature vectors of {num_features} values (an npz x of shape "
            f"(N, F)), which an image model takes as {num_features}-channel 1×1 images: use a "
            f"model for feature vectors ({field} 'mlp', or an installed one) and a checkpoint "
            "trained on such vectors")

