"""Mini-batches from in-memory tensors, without DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from rift.data.augment import AUGMENTATIONS, AugmentDraws, apply_augmentation, draw_augmentation
from rift.data.tensors import ImageTensors
from rift.errors import ConfigError


def to_float_images(images: Tensor) -> Tensor:
    """uint8 [0, 255] → float32 [0, 1]; float images become float32 unchanged in value."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def iterate_batches(data: ImageTensors, batch_size: int, *, device: torch.device,
                    shuffle: bool = False, generator: torch.Generator | None = None,
                    augment: str = "none", drop_last: bool = False,
                    ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)``: float32 (B, C, H, W) in [0, 1] and int64 (B,), on ``device``.

    Each batch is indexed where ``data`` lives and then moved, so data kept on the CPU costs one
    transfer per batch, and data already on ``device`` none. uint8 → float happens on ``device``.
    ``shuffle`` draws one ``torch.randperm`` from ``generator`` per call, then ``augment`` draws
    from the same generator batch by batch: a generator seeded the same way gives the same batches.
    ``drop_last`` skips a final batch smaller than ``batch_size``.
    Raises ConfigError for a non-positive ``batch_size`` or an unknown ``augment``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}", field="batch_size")
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {augment!r}; expected one of {AUGMENTATIONS}",
                          field="augment")
    return _batches(data, batch_size, device, shuffle, generator, augment, drop_last)


def _batches(data: ImageTensors, batch_size: int, device: torch.device, shuffle: bool,
             generator: torch.Generator | None, augment: str,
             drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(data)
    home = data.images.device
    order: Tensor | None = None
    if shuffle:
        draw_on = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=draw_on).to(home)
    stop = n - n % batch_size if drop_last else n
    starts = range(0, stop, batch_size)
    draws = _epoch_draws(data, [min(batch_size, stop - start) for start in starts], device,
                         generator, augment)
    for start, batch_draws in zip(starts, draws, strict=True):
        if order is None:
            images = data.images[start:start + batch_size]
            labels = data.labels[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            images, labels = data.images[index], data.labels[index]
        images = to_float_images(images.to(device, non_blocking=True))
        if batch_draws is not None:
            images = apply_augmentation(images, batch_draws)
        yield images, labels.to(device, non_blocking=True)


def _epoch_draws(data: ImageTensors, sizes: list[int], device: torch.device,
                 generator: torch.Generator | None, augment: str) -> list[AugmentDraws | None]:
    """Every batch's augmentation numbers, drawn up front in the order batch-by-batch drawing
    would use (so the batches are the same), then moved to ``device`` in one copy: a small copy
    per batch from pageable CPU memory would stall the host until the GPU caught up, twice per
    batch, and leave the GPU idle while Python queues the next step."""
    if augment == "none":
        return [None] * len(sizes)
    _, height, width = data.images.shape[1:]
    draws = [draw_augmentation(augment, size, height, width, generator, device)
             for size in sizes]
    if not draws or device.type == "cpu":
        return list(draws)
    offsets = [d.offsets for d in draws if d.offsets is not None]
    flips = [d.flips for d in draws if d.flips is not None]
    moved_offsets = iter(_to_device(torch.cat(offsets, 1), device).split(
        [t.shape[1] for t in offsets], 1) if offsets else [])
    moved_flips = iter(_to_device(torch.cat(flips), device).split(
        [t.shape[0] for t in flips]) if flips else [])
    return [AugmentDraws(d.padding,
                         next(moved_offsets) if d.offsets is not None else None,
                         next(moved_flips) if d.flips is not None else None) for d in draws]


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()  # pinned: the copy is queued, not waited for
    return tensor.to(device, non_blocking=True)
