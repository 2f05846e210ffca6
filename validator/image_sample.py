"""A bounded, deterministic sample of an ImageFolder tar's images, decoded while the tar streams
by, for the pixel rules of ``rift.image_content`` (constant, identical, 0/1 images).

Decoding every image of a large tar would cost far more than the header parsing the validator
does for each (``VALIDATION_CPU_SECONDS``), so each group of images (see :func:`group_of`: the
training folders and each held-out folder fall in different groups) is sampled by position, with
a stride that doubles as the group grows: the first ``2 · SAMPLE_SIZE`` images are all decoded,
then every 2nd up to ``4 · SAMPLE_SIZE``, every 4th up to ``8 · SAMPLE_SIZE``... The tar's length
is not known while it streams, so images on a finer stride than the group's final one are decoded
too (``SAMPLE_SIZE`` per doubling: about 470 decodes for 5,000 images, 1,100 for 5 million); the
final sample, on which fractions are judged, is every P-th image (P the last stride: between
``SAMPLE_SIZE`` and ``2 · SAMPLE_SIZE`` images spread evenly over the group, or all of a smaller
one), and every decoded image counts for the rules any single image can clear. The same archive
always gives the same sample. Imports no torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from rift.dataset_formats import HELD_OUT_FOLDERS, TRAIN_FOLDER
from rift.errors import DatasetError
from rift.image_content import PixelSummary, decode_8bit, summarize

#: Images per group on the final stride: the constant fraction is judged on 64 to 128 images,
#: about ±6 % at one standard deviation (see ``rift.image_content.CONSTANT_FRACTION_LIMIT``).
SAMPLE_SIZE = 64
#: Pixels decoded per archive at most: bounds the cost of an archive of large images, whose later
#: images are then left out of the sample. At the 1.8 ms measured per 224×224 JPEG (36 ns a
#: pixel, ``bench/imagefolder_validation.py``) this is about 10 s, 3 % of the default
#: ``VALIDATION_CPU_SECONDS``.
MAX_SAMPLE_PIXELS = 256 * 1024 * 1024
#: Images of more pixels are not decoded (not sampled): decoding one takes several bytes a pixel
#: at once (RGBA, its RGB conversion, the array), which must stay well inside the validator's
#: memory limit (``VALIDATION_MEMORY_BYTES``, of which torch takes about 0.8 GB): 16 M pixels
#: (4096 × 4096) need about 200 MB.
MAX_DECODE_PIXELS = 16 * 1024 * 1024
#: Groups sampled separately; an archive with more (many top folders each with a train/) samples
#: the rest as one group, so the decoding stays bounded.
MAX_GROUPS = 16
#: The names that start a group: the folders the library reads as splits.
SPLIT_FOLDERS = frozenset({TRAIN_FOLDER, *HELD_OUT_FOLDERS})


def group_of(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The sampling group of an image at path ``parts``: the path down to the first of its top two
    folders named ``train``, ``val`` or ``test`` (a split, possibly in a wrapper folder), else
    ``()`` (a tree of class folders without splits)."""
    for depth, name in enumerate(parts[:2]):
        if name in SPLIT_FOLDERS and depth < len(parts) - 1:
            return parts[: depth + 1]
    return ()


def stride(index: int, sample_size: int = SAMPLE_SIZE) -> int:
    """The sampling stride at position ``index`` of a group: 1 below ``2 · sample_size``, then
    doubling each time the position doubles (a power of two, so each stride divides the next)."""
    ratio = max(index, sample_size) // sample_size
    return 1 << (ratio.bit_length() - 1)


@dataclass(frozen=True)
class SampledImage:
    """A decoded image: its tar prefix (as ``TarScan.files`` keys it), its group and position,
    and either its pixel summary or why it could not be decoded (``problem``)."""

    prefix: tuple[str, ...]
    group: tuple[str, ...]
    index: int
    summary: PixelSummary | None
    problem: str | None = None


@dataclass
class PixelSampler:
    """Decides, image by image in tar order, which to decode (:meth:`offer`), and keeps them."""

    sample_size: int = SAMPLE_SIZE
    max_pixels: int = MAX_SAMPLE_PIXELS
    decoded: list[SampledImage] = field(default_factory=list)
    pixels: int = 0
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)

    def offer(self, parts: tuple[str, ...], prefix: tuple[str, ...], name: str, data: bytes,
              size: tuple[int, int], *, complete: bool = True) -> None:
        """Count the image at ``parts`` (``size``: its height and width from its header) in its
        group and decode ``data`` when its position is on the group's stride and the pixel budget
        allows; an image of more than :data:`MAX_DECODE_PIXELS`, or whose ``data`` is only its
        start (``complete`` false: a file larger than the bytes read), is counted, not decoded."""
        group = group_of(parts)
        if group not in self.counts and len(self.counts) >= MAX_GROUPS:
            group = ()
        index = self.counts.get(group, 0)
        self.counts[group] = index + 1
        pixels = size[0] * size[1]
        if index % stride(index, self.sample_size) or not complete \
                or pixels > MAX_DECODE_PIXELS or self.pixels + pixels > self.max_pixels:
            return
        self.pixels += pixels
        decoded = _decode(prefix, group, index, name, data)
        if decoded is not None:
            self.decoded.append(decoded)

    def final(self, image: SampledImage) -> bool:
        """Whether ``image`` is on its group's final stride (the evenly spread sample)."""
        last = self.counts.get(image.group, 1) - 1
        return image.index % stride(last, self.sample_size) == 0


def _decode(prefix: tuple[str, ...], group: tuple[str, ...], index: int, name: str,
            data: bytes) -> SampledImage | None:
    """The decoded image's summary, or why it cannot be decoded; None when this process ran out
    of memory decoding it (the validator's limit, not the file's fault: left out of the sample)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            decoded, _ = decode_8bit(image, repr(name))
            pixels = np.asarray(decoded)
    except MemoryError:
        return None
    except DatasetError as exc:  # 32-bit or float pixels: the library refuses the file
        return SampledImage(prefix, group, index, None, str(exc))
    except Exception as exc:  # truncated or damaged past its header: the library fails on it
        return SampledImage(prefix, group, index, None,
                            f"{name!r} cannot be decoded ({type(exc).__name__}: {exc})")
    return SampledImage(prefix, group, index, summarize(pixels, repr(name)))
