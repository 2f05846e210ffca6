"""Training augmentation done on whole batches with tensor ops, on the batch's device.

Random crop with reflect padding, then (for ``crop_flip``) a random horizontal flip: the standard
CIFAR recipe of the reference RiFT protocol (docs/algorithm.md, step 2). One gather per axis replaces the
per-image Python loop of torchvision transforms, so augmentation costs a few kernel launches per
batch (as in airbench).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rift.errors import ConfigError

AUGMENTATIONS = ("none", "crop", "crop_flip")


def crop_padding(image_size: int) -> int:
    """Reflect padding of the random crop: 4 px for images of 32 px and more (the CIFAR recipe),
    else ``max(1, size // 8)``: the same 1/8 of the image, since 4 px would shift an 8×8 digit by
    half its width and cut the digit off."""
    return 4 if image_size >= 32 else max(1, image_size // 8)


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    # Draw where the generator lives (a CPU generator keeps runs reproducible across devices);
    # the few numbers drawn are then moved to the images' device.
    return generator.device if generator is not None else device


@dataclass(frozen=True)
class AugmentDraws:
    """The random numbers of one batch's augmentation, drawn apart from the images so that a
    whole epoch's worth can be drawn at once and moved to the GPU in one copy (each small copy
    from pageable CPU memory would make the host wait for the GPU, once per batch).

    ``offsets`` are the crop offsets (2, N) — rows dy, then dx — or None when nothing is cropped;
    ``flips`` (N,) bool, or None when nothing is flipped; ``padding`` is the crop's padding."""

    padding: int
    offsets: Tensor | None
    flips: Tensor | None

    def to(self, device: torch.device, *, non_blocking: bool = False) -> AugmentDraws:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        return AugmentDraws(self.padding, move(self.offsets), move(self.flips))


def draw_augmentation(kind: str, n: int, height: int, width: int,
                      generator: torch.Generator | None, device: torch.device,
                      *, padding: int | None = None) -> AugmentDraws:
    """Draw one batch's augmentation numbers for ``n`` images of ``height`` × ``width``: crop
    offsets first, then flips, from ``generator`` (on its device, else on ``device``). The
    same generator state gives the same numbers whether the batch is augmented at once or later.
    ``padding`` defaults to ``crop_padding(min(height, width))``."""
    if kind not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}",
                          field="augment")
    if kind == "none":
        return AugmentDraws(0, None, None)
    if padding is None:
        padding = crop_padding(min(height, width))
    padding = min(padding, height - 1, width - 1)  # reflect padding must be smaller than the image
    draw_on = _draw_device(generator, device)
    offsets = None
    if padding > 0 and n > 0:
        offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=draw_on)
    flips = None
    if kind == "crop_flip":
        flips = torch.rand(n, generator=generator, device=draw_on) < 0.5
    return AugmentDraws(padding, offsets, flips)


def apply_augmentation(images: Tensor, draws: AugmentDraws) -> Tensor:
    """Crop then flip a float (N, C, H, W) batch as ``draws`` (from :func:`draw_augmentation`
    for this batch's size and shape) say."""
    draws = draws.to(images.device)
    if draws.offsets is not None:
        images = _crop_at(images, draws.padding, draws.offsets)
    if draws.flips is not None:
        images = torch.where(draws.flips[:, None, None, None], images.flip(3), images)
    return images


def _crop_at(images: Tensor, padding: int, offsets: Tensor) -> Tensor:
    # Output pixel (y, x) of image n is padded[n, :, y + dy[n], x + dx[n]]: one gather per axis.
    n, c, h, w = images.shape
    dy, dx = offsets
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (N, W)
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return picked_rows.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Crop each (N, C, H, W) image at a random offset from its reflect-padded copy.

    Output pixel (y, x) of image n is padded[n, :, y + dy[n], x + dx[n]] with dy, dx uniform
    in [0, 2 * padding]; the result has the input's shape.
    """
    n, _, h, w = images.shape
    draws = draw_augmentation("crop", n, h, w, generator, images.device, padding=padding)
    return apply_augmentation(images, draws)


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each (N, C, H, W) image left-right with probability 1/2."""
    draw_on = _draw_device(generator, images.device)
    flip = torch.rand(images.shape[0], generator=generator, device=draw_on).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment_batch(images: Tensor, kind: str, generator: torch.Generator | None = None,
                  *, padding: int | None = None) -> Tensor:
    """Augment a float (N, C, H, W) batch: ``"none"``, ``"crop"`` or ``"crop_flip"``.

    ``padding`` defaults to ``crop_padding(min(H, W))``. Labels are unaffected by these
    transforms. Draws crop offsets first, then flips, from ``generator``.
    """
    if kind == "none":
        return images
    n, _, h, w = images.shape
    draws = draw_augmentation(kind, n, h, w, generator, images.device, padding=padding)
    return apply_augmentation(images, draws)
