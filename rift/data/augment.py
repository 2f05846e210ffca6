"""Training augmentation done on whole batches with tensor ops, on the batch's device.

Random crop with reflect padding, then (for ``crop_flip``) a random horizontal flip: the standard
CIFAR recipe of the reference RiFT protocol (docs/algorithm.md, step 2). One gather per axis replaces
the
per-image Python loop of torchvision transforms, so augmentation costs a few kernel launches per
batch (as in airbench).
"""

from __future__ import annotations

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


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Crop each (N, C, H, W) image at a random offset from its reflect-padded copy.

    Output pixel (y, x) of image n is padded[n, :, y + dy[n], x + dx[n]] with dy, dx uniform
    in [0, 2 * padding]; the result has the input's shape.
    """
    n, c, h, w = images.shape
    padding = min(padding, h - 1, w - 1)  # reflect padding must be smaller than the image
    if padding <= 0 or n == 0:
        return images
    span = 2 * padding + 1
    dy, dx = torch.randint(0, span, (2, n), generator=generator,
                           device=_draw_device(generator, images.device)).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (N, W)
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return picked_rows.gather(3, cols[:, None, None, :].expand(n, c, h, w))


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
    if kind not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}",
                          field="augment")
    if kind == "none":
        return images
    if padding is None:
        padding = crop_padding(min(images.shape[2], images.shape[3]))
    images = random_crop(images, padding, generator)
    if kind == "crop_flip":
        images = random_flip(images, generator)
    return images
