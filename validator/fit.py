"""Whether a checkpoint fits a job's architecture: the job's model is built on PyTorch's ``meta``
device (shapes only, no memory, no weights) and compared with the checkpoint's keys and shapes;
the module names the spec selects must exist in it; and, when the dataset's geometry is known, one
meta input of that shape goes through the model (a network that cannot take the data, such as an
AlexNet for 32×32 images, is refused at job creation instead of failing when the job starts),
its forward FLOPs counted on the way (the unit of the job's compute estimate,
``persistence.cost``). Imports torch; runs in the validator process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rift.config import RiftConfig
from rift.errors import CheckpointMismatchError, ConfigError, RiftError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The image size assumed when the dataset's cannot be known before the job runs.
DEFAULT_IMAGE_SIZE = 32
#: The channel counts tried, in this order, when the dataset's cannot be known before the job
#: runs (an ImageFolder tree is read with 3, or 1 when all grey): a checkpoint fitting either
#: passes, and the worker, which reads the whole tree, decides.
UNKNOWN_CHANNELS = (3, 1)


@dataclass(frozen=True)
class FitAnswer:
    """What a fit check found: ``unknown_values``, the keys whose value digests the answer
    needs (empty: it holds); ``example_flops``, the model's forward FLOPs on one input of the
    dataset's geometry as ``torch.utils.flop_counter`` counts them (as
    ``rift.sequential_attack.example_flops`` does), None when the geometry is unknown, the
    probe did not run (digests still wanted, an op with no meta kernel) or counted nothing."""

    unknown_values: list[str] = field(default_factory=list)
    example_flops: float | None = None


def check_checkpoint_fits(
    config: RiftConfig,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    dtypes: Mapping[str, str] | None = None,
    normalizers: Mapping[str, Sequence[float]] | None = None,
    digests: Mapping[str, str] | None = None,
    final: bool = False,
    in_channels: int | None,
    image_size: int | None,
    num_features: int | None = None,
    image_width: int | None = None,
) -> FitAnswer:
    """Build ``config.architecture`` on the meta device for the dataset's geometry (images of
    ``in_channels`` × ``image_size``², or feature vectors of ``num_features`` values, which the
    library reads as ``num_features``-channel 1×1 images; ``image_width`` None: square) and
    require the checkpoint's keys and shapes to match it and the spec's module names to exist.
    With ``in_channels`` None (not known) the checkpoint may fit a model for any of
    :data:`UNKNOWN_CHANNELS`. With the geometry known, the model must map one such input to
    (1, ``architecture.num_classes``) logits (on the meta device: shapes only). ``dtypes`` (key
    → torch dtype name, where known) must be of the model's kind (``check_dtypes``): integer or
    complex weights for a float model would otherwise be accepted here and fail the job.
    ``normalizers`` (key → values, for the tensors that may be an input normaliser's) are
    compared with the normalisation the model applies when the checkpoint's layout holds a
    normaliser (``rift.checkpoint_layouts``), as the job compares them.
    ``digests`` (key → ``rift.tensor_digest`` digest of its stored values, where known) tell
    whether a network under one key prefix is a copy of the one under another, as the job
    tells from the values (``rift.checkpoint_layouts``): a training wrapper's two different
    networks (a model and its EMA) are refused, its equal copies left out.

    Returns:
        ``unknown_values``: the keys whose values the answer took as equal without their
        digests (meta tensors carry none), before any other check: the caller gives their
        digests and asks again. Empty: the answer holds; with ``final`` (no more digests to be
        had) it always is, the values unknown taken as equal and the job's own load left to
        tell. ``example_flops``: the forward FLOPs of one input, counted during the probe.

    Raises:
        CheckpointMismatchError: with the missing, unexpected and mismatched keys, or the keys
            whose dtype cannot be cast to the model's.
        UnknownArchitectureError / ConfigError: the architecture cannot be built as specified,
            or a module name is unknown, or the model cannot take the dataset's inputs.
    """
    import torch

    from rift.checkpoint_layouts import check_normalizers, fit_layout
    from rift.checkpoints import check_compatible, check_dtypes
    from rift.finetune import trainable_module
    from rift.models.normalization_applied import refuse_unset_input_buffers
    from rift.models.parametrized import fold_parametrized_weights, holds_folded_weights
    from rift.models.registry import refuse_batch_statistics
    from rift.mrc import select_modules

    if num_features is not None:  # (N, F) arrays load as (N, F, 1, 1): see rift.data.npz
        options, size = [num_features], 1
    else:
        options = [in_channels] if in_channels else [*UNKNOWN_CHANNELS]
        size = image_size or DEFAULT_IMAGE_SIZE
    known = {key: dtype for key, name in (dtypes or {}).items()
             if (dtype := _torch_dtype(name)) is not None}
    meta_state = {key: torch.empty(shape, device="meta", dtype=known.get(key))
                  for key, shape in shapes.items()}
    # A normaliser's few values, so that its layout's check can compare them.
    for key, values in (normalizers or {}).items():
        if key in meta_state and meta_state[key].numel() == len(values):
            meta_state[key] = torch.tensor(values, dtype=torch.float64).reshape(
                meta_state[key].shape).to(meta_state[key].dtype)
    mismatch: CheckpointMismatchError | None = None
    unknown: set[str] = set()
    for channels in options:
        model = _meta_model(config, channels, size, num_features, shapes,
                            None if num_features is not None else image_width)
        # As the job does (rift.pipeline.prepare_run): parametrized weights become plain ones,
        # before the checks when the checkpoint holds them plain, else after them.
        folded_first = holds_folded_weights(model, shapes)
        if folded_first:
            fold_parametrized_weights(model)
        # A training wrapper's layout (rift.checkpoint_layouts), as the job reads it.
        try:
            layout = fit_layout(model.state_dict(), meta_state, channels=channels,
                                digests=digests, unknown=unknown)
            fitted = meta_state if layout is None else layout.state_dict
            check_compatible(model, fitted)
            break
        except CheckpointMismatchError as exc:
            mismatch = mismatch or exc  # the first option's keys are the ones reported
    else:
        assert mismatch is not None
        if unknown and not final:  # read with values taken as equal: it may be another refusal
            return FitAnswer(sorted(unknown))
        from rift.architecture_hint import feature_vectors_hint, with_architecture_hint

        hinted = with_architecture_hint(mismatch, config.architecture, shapes, options, size)
        hint = ("" if num_features is None else
                feature_vectors_hint(mismatch, num_features, "config.architecture.name"))
        if hint:
            raise CheckpointMismatchError(hinted.message + hint, hinted.missing,
                                          hinted.unexpected, hinted.mismatched)
        raise hinted
    if unknown and not final:
        # The layout was read with values taken as equal: nothing else is checked until it is
        # read from the digests, as the job would read it.
        return FitAnswer(sorted(unknown))
    if layout is not None:  # the layout of the channel count that fits
        mean, std = _applied_normalization(model, config, channels)
        check_normalizers(layout, mean, std, configured=config.architecture.mean is not None)
    # Kinds only: meta tensors have no values, so a float64 beyond float32's range is left to
    # the job's own check when it loads the weights.
    prefix = "" if layout is None else layout.prefix
    check_dtypes(model, {key: value for key, value in fitted.items() if prefix + key in known})
    if not folded_first:
        fold_parametrized_weights(model)
    refuse_batch_statistics(model, config.architecture)  # needs no geometry: checked always
    refuse_unset_input_buffers(model, config.architecture)  # mean/std given, not applied
    select_modules(model, config.mrc)
    if config.finetune.module is not None:
        trainable_module(model, config.finetune.module)
    if num_features is not None:
        return FitAnswer(example_flops=_probe(model, config, (num_features, 1, 1)))
    if in_channels is not None and image_size is not None:
        return FitAnswer(example_flops=_probe(
            model, config, (in_channels, image_size, image_width or image_size)))
    return FitAnswer()


def _applied_normalization(model: nn.Module, config: RiftConfig, channels: int
                           ) -> tuple[list[float] | None, list[float] | None]:
    """The mean and std the job's model will apply to its input, as
    ``rift.models.normalization.applied_normalization`` reads them from the real model: the
    meta model's buffers have no values, but they hold ``architecture.mean/std`` when set, and
    a torchvision model's default (ImageNet's) when not."""
    from rift.models.normalization import MEAN_BUFFER, STD_BUFFER
    from rift.models.torchvision_models import PREFIX, default_statistics

    spec = config.architecture
    buffers = model._buffers
    if MEAN_BUFFER not in buffers or STD_BUFFER not in buffers:
        return spec.mean, spec.std  # an installed builder: taken to apply the settings
    if buffers[MEAN_BUFFER] is None:
        return None, None
    if spec.mean is not None and spec.std is not None:
        return list(spec.mean), list(spec.std)
    if spec.name.startswith(PREFIX):
        mean, std = default_statistics(channels)
        return list(mean), list(std)
    return spec.mean, spec.std


def _torch_dtype(name: str) -> torch.dtype | None:
    """``torch.<name>`` when it is a dtype, else None (unknown: that key's kind is not checked)."""
    import torch

    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


def _meta_model(config: RiftConfig, channels: int, size: int, num_features: int | None,
                checkpoint_keys: Iterable[str], image_width: int | None = None) -> nn.Module:
    import torch

    from rift.models import build_model

    try:
        with torch.device("meta"):
            return build_model(config.architecture, in_channels=channels, image_size=size,
                               checkpoint_keys=checkpoint_keys, image_width=image_width)
    except RiftError:
        raise
    except Exception as exc:  # e.g. a torchvision model that cannot take these options
        shape = (f"{num_features} features" if num_features is not None
                 else f"{channels}-channel {size}×{size} images")
        raise ConfigError(
            f"cannot build architecture {config.architecture.name!r} for {shape}: "
            f"{type(exc).__name__}: {exc}", field="architecture") from exc


def _probe(model: nn.Module, config: RiftConfig, image_shape: tuple[int, int, int]
           ) -> float | None:
    """One meta input of ``image_shape`` through ``model`` (see ``check_model_accepts``); its
    forward FLOPs (None: nothing counted, or an op with no meta kernel stopped the pass)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rift.models.registry import check_model_accepts

    try:
        # The probe's one forward pass is the count's: the counter reads shapes only, so meta
        # tensors give the count a real input of that shape would.
        with FlopCounterMode(display=False) as counter:
            check_model_accepts(model, config.architecture, image_shape,
                                device=torch.device("meta"))
    except ConfigError as exc:
        if _meta_limitation(exc.__cause__):
            return None  # an op with no meta kernel: the job's own check, on real tensors, decides
        raise
    flops = counter.get_total_flops()
    return float(flops) if flops > 0 else None


def _meta_limitation(cause: BaseException | None) -> bool:
    # Meta tensors carry shapes but no values: ops that read values (.item(), data-dependent
    # shapes) or have no meta kernel fail for that reason alone, not because of the data's shape.
    return isinstance(cause, NotImplementedError) or "meta" in str(cause).lower()
