"""Rules on what a data set's images hold, beyond their format: data sets that load without error
but would make every job's numbers meaningless are refused at upload, naming the split and an
example. Imports no torch (numpy and Pillow only): the sandboxed validator applies these rules, and
the library's ImageFolder reader decodes pixels with :func:`decode_8bit`.

The rules, on the images of one split (an npz key; the training or held-out folders of an
ImageFolder tree):

- more than :data:`CONSTANT_FRACTION_LIMIT` of the images constant (every pixel one value:
  all-black frames, blank exports);
- every image the same as the first (a broadcast or a copy loop gone wrong), from two images up;
- 8-bit pixels whose largest value is 1 (0/1 masks saved unscaled, read as near-black images; the
  rule :class:`rift.dataset_formats.ValueScan` applies to uint8 npz arrays);
- float pixels (npz) whose largest value is at most 1/255: 8-bit pixels divided by 255 twice;
- every training label the same class (the model learns one answer).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rift.dataset_formats import BINARY_UINT8_MAX, PALETTE_MODES, is_grey_image
from rift.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

#: A split is refused when more than this fraction of its images is constant. Real data sets
#: hold a few blank frames (a dark exposure, padding images), so a handful must pass; but when
#: most images carry no pixel variation the export or conversion failed (masks saved unscaled,
#: floats cast to 0, empty crops), and a job would fine-tune and attack images with nothing to
#: recognise. Half is far from both: a real set with half its images blank is broken either way,
#: and a sample of 64 images (ImageFolder) estimates a fraction to about ±6 % at one standard
#: deviation, so a set with, say, 20 % blank frames is not refused by chance.
CONSTANT_FRACTION_LIMIT = 0.5
#: The first example of an npz key is kept to compare the others with, up to this many bytes
#: (larger examples are not compared: the all-identical rule is then not applied).
MAX_KEPT_EXAMPLE_BYTES = 16 * 1024 * 1024


def decode_8bit(image: Image.Image, name: object) -> tuple[Image.Image, bool]:
    """``image`` as 8-bit grey ("L") or RGB, as the library reads it, and whether the file is
    greyscale (see ``is_grey_image``). ``convert`` clips wider pixel values to 255 instead of
    scaling them (a 16-bit PNG comes out nearly all white, a float TIFF in [0, 1] all black), so
    16-bit images are scaled to 8 bits here, and 32-bit integer or float images, whose range no
    file states, are refused (``name`` names the file in the message)."""
    palette = image.getpalette("RGB") if image.mode in PALETTE_MODES else None
    grey = is_grey_image(image.mode, palette)
    if image.mode.startswith("I;16"):
        from PIL import Image as PILImage

        wide = np.asarray(image).astype(np.uint32)
        return PILImage.fromarray(((wide + 128) // 257).astype(np.uint8), mode="L"), True
    problem = unranged_pixels_problem(image.mode, name)
    if problem is not None:
        raise DatasetError(problem)
    return image.convert("L" if grey else "RGB"), grey


#: Pillow modes of 32-bit integer and floating-point pixels, whose range no file states.
UNRANGED_MODES = {"I": "32-bit integer", "F": "floating-point"}


def unranged_pixels_problem(mode: str, name: object) -> str | None:
    """Why an image of Pillow mode ``mode`` (from its header) is refused, naming ``name``, or
    None. The library refuses such files when it decodes them (:func:`decode_8bit`), the upload
    as soon as it reads their header, decoded or not."""
    if mode not in UNRANGED_MODES:
        return None
    return (f"image {name} has {UNRANGED_MODES[mode]} pixels (mode {mode!r}) with no fixed "
            "range; save it with 8- or 16-bit pixels")


@dataclass(frozen=True)
class PixelSummary:
    """What the content rules need of one decoded image: its smallest and largest 8-bit pixel
    value and a digest of its pixels and shape (equal digests: identical images)."""

    name: str
    low: int
    high: int
    digest: bytes

    @property
    def constant(self) -> bool:
        return self.low == self.high


def summarize(pixels: np.ndarray, name: str) -> PixelSummary:
    """The :class:`PixelSummary` of one decoded image's uint8 ``pixels`` (any shape)."""
    # The array's own buffer when contiguous (a decoded image's is), not a copy of it.
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16,
                             person=str(pixels.shape).encode()[:16]).digest()
    return PixelSummary(name, int(pixels.min()), int(pixels.max()), digest)


def constant_problem(where: str, constant: int, total: int, example: str) -> str | None:
    """The message refusing a split of ``total`` images ``constant`` of which are constant
    (``example``: one of them, with its value), or None when within the limit."""
    if total == 0 or constant <= CONSTANT_FRACTION_LIMIT * total:
        return None
    share = ("every image is" if constant == total
             else f"{constant} of {total} images {'are' if constant > 1 else 'is'}")
    return (f"{where}: {share} constant (every pixel one value, e.g. {example}); a job would "
            "train and attack images with nothing to recognise. At most "
            f"{CONSTANT_FRACTION_LIMIT:.0%} may be constant: check the export (masks saved "
            "unscaled, floats cast to integers, empty crops)")


def identical_problem(where: str, total: int, first: str, noun: str = "images") -> str:
    """The message refusing a split whose ``total`` ``noun`` are all the same as ``first``."""
    return (f"{where}: all {total} {noun} are identical (the same values as {first}); a job "
            f"would learn nothing from them: check how the {noun} were written (a copy or "
            "broadcast of one)")


def binary_problem(where: str, example: str) -> str:
    """The message refusing 8-bit images whose largest pixel value is 1 (``example``: one
    holding a 1): the ImageFolder twin of ``ValueScan``'s uint8 rule."""
    return (f"{where}: images are read as 8-bit pixels (value / 255), and the largest value "
            f"here is {BINARY_UINT8_MAX} (e.g. {example}): these look like [0, 1] pixels (a "
            "binary mask) saved unscaled, which a job would read as near-black images; save "
            "them as 8-bit pixels (multiply by 255)")


def check_summaries(where: str, summaries: list[PixelSummary],
                    decoded: list[PixelSummary] | None = None) -> None:
    """Apply the rules to the images ``summaries`` of one split (a spread sample or all of
    them); ``decoded`` (a superset: every image decoded, sampled or not) also counts for the
    rules that any one image can clear (largest value, all identical).

    Raises:
        DatasetError: naming ``where`` and an example image.
    """
    seen = decoded if decoded is not None else summaries
    if not seen:
        return
    highest = max(seen, key=lambda s: s.high)
    if highest.high == BINARY_UINT8_MAX:
        raise DatasetError(binary_problem(where, highest.name))
    constant = [s for s in summaries if s.constant]
    if constant:
        message = constant_problem(where, len(constant), len(summaries),
                                   f"{constant[0].name}, all {constant[0].low}")
        if message is not None:
            raise DatasetError(message)
    if len(seen) > 1 and all(s.digest == seen[0].digest for s in seen):
        raise DatasetError(identical_problem(where, len(seen), seen[0].name))


def faint_problem(key: str, highest: float) -> str | None:
    """The message refusing float images (npz ``key``) whose largest value ``highest`` is above 0
    but at most 1/255: 8-bit pixels divided by 255 twice (every image reads as black, and an
    ``eps`` of 8/255 is wider than its whole contrast), or None."""
    if not 0 < highest <= 1 / 255 * (1 + 1e-6):  # float32 rounding of 255 / 255 / 255
        return None
    return (f"key '{key}': float images are read as pixels in [0, 1], and the largest value here "
            f"is {highest:.3g} (at most 1/255): these look like 8-bit pixels divided by 255 "
            f"twice; save {key} * 255, or the 8-bit pixels as uint8")


def one_class_problem(where: str, label: object) -> str:
    """The message refusing training labels that are all ``label``."""
    return (f"{where}: every training label is {label}: a classifier trained on one class "
            "learns one answer, and every accuracy of the job would be trivially 100 %; a data "
            "set needs at least two classes")


class ExampleScan:
    """The content rules on an npz input array (``key``) fed as flat chunks of its values in
    order (any chunk sizes; examples of ``example_size`` values each may straddle chunks), in
    bounded memory: counts the constant examples and compares each with the first.

    ``images``: the constant-fraction rule applies (for feature vectors only the all-identical
    rule does: a constant feature vector is a valid input). Feed chunks with :meth:`update`, then
    call :meth:`finish`, which raises for a rule broken.
    """

    def __init__(self, key: str, example_size: int, *, images: bool, itemsize: int = 1) -> None:
        self.key = key
        self.images = images
        self.example_size = max(1, example_size)
        self.examples = 0
        self.constant = 0
        self.first_constant: tuple[int, float] | None = None  # (index, value)
        self._keep_first = self.example_size * itemsize <= MAX_KEPT_EXAMPLE_BYTES
        self._first: np.ndarray | None = None
        self._first_parts: list[np.ndarray] = []
        self._same = True
        self._position = 0  # values of the current example seen so far
        self._low: float | None = None
        self._high: float | None = None

    def update(self, chunk: np.ndarray) -> None:
        flat = chunk.reshape(-1)
        start, size = 0, flat.size
        while start < size:
            if self._position == 0 and size - start >= self.example_size:
                whole = (size - start) // self.example_size * self.example_size
                self._whole(flat[start:start + whole].reshape(-1, self.example_size))
                start += whole
                continue
            take = min(self.example_size - self._position, size - start)
            self._partial(flat[start:start + take])
            start += take

    def _whole(self, block: np.ndarray) -> None:
        if self.examples == 0 and self._keep_first:
            self._first = block[0].copy()
        lows, highs = block.min(axis=1), block.max(axis=1)
        flat_examples = lows == highs
        count = int(flat_examples.sum())
        if count and self.first_constant is None:
            index = int(np.argmax(flat_examples))
            self.first_constant = (self.examples + index, float(lows[index]))
        self.constant += count
        if self._same and self._first is not None:
            self._same = bool((block == self._first).all())
        self.examples += len(block)

    def _partial(self, part: np.ndarray) -> None:
        low, high = float(part.min()), float(part.max())
        self._low = low if self._low is None else min(self._low, low)
        self._high = high if self._high is None else max(self._high, high)
        if self.examples == 0:
            if self._keep_first:
                self._first_parts.append(part.copy())
        elif self._same and self._first is not None:
            end = self._position + part.size
            self._same = bool((part == self._first[self._position:end]).all())
        self._position += part.size
        if self._position < self.example_size:
            return
        if self.examples == 0 and self._keep_first:
            self._first = np.concatenate(self._first_parts)
            self._first_parts = []
        if self._low == self._high:
            self.constant += 1
            if self.first_constant is None:
                self.first_constant = (self.examples, self._low)
        self.examples += 1
        self._position, self._low, self._high = 0, None, None

    def finish(self) -> None:
        """Raises DatasetError naming the key and an example index when a rule is broken."""
        self._judge(all_same=self._same and self._first is not None)

    def _judge(self, *, all_same: bool) -> None:
        where = f"key '{self.key}'"
        if self.images and self.first_constant is not None:
            index, value = self.first_constant
            message = constant_problem(where, self.constant, self.examples,
                                       f"{self.key}[{index}], all {value:g}")
            if message is not None:
                raise DatasetError(message)
        if self.examples > 1 and all_same:
            raise DatasetError(identical_problem(
                where, self.examples, f"{self.key}[0]",
                "images" if self.images else "feature vectors"))


class ColumnMajorExampleScan(ExampleScan):
    """:class:`ExampleScan` for an array of ``count`` examples stored column-major (an npz
    member in Fortran order, as ``np.save`` writes an F-contiguous array, e.g. one from
    ``scipy.io.loadmat``): the example index varies fastest, so the flat values come as rows of
    one value per example. Read as if row-major, each "example" was a run of one pixel across
    examples, and a set of MNIST-like images (borders black in every image) was refused as
    mostly constant while the library, which reads the array by its indices, loaded it.

    Keeps the smallest and largest value of each example and whether it equals the first so far:
    memory grows with ``count`` (about 2 · itemsize + 1 bytes an example), not with the array.
    """

    def __init__(self, key: str, count: int, *, images: bool) -> None:
        super().__init__(key, 1, images=images)
        self.count = max(1, count)
        self._lows: np.ndarray | None = None
        self._highs: np.ndarray | None = None
        self._same_as_first = np.ones(self.count, np.bool_)
        self._carry: np.ndarray | None = None  # the start of a row a chunk ended in

    def update(self, chunk: np.ndarray) -> None:
        flat = chunk.reshape(-1)
        if self._carry is not None:
            flat = np.concatenate([self._carry, flat])
        whole = flat.size // self.count * self.count
        rows = flat[:whole].reshape(-1, self.count)
        self._carry = flat[whole:].copy() if whole < flat.size else None
        if not len(rows):
            return
        lows, highs = rows.min(axis=0), rows.max(axis=0)
        self._lows = lows if self._lows is None else np.minimum(self._lows, lows)
        self._highs = highs if self._highs is None else np.maximum(self._highs, highs)
        self._same_as_first &= (rows == rows[:, :1]).all(axis=0)

    def finish(self) -> None:
        if self._lows is None or self._highs is None:
            return
        constant = self._lows == self._highs
        self.examples = self.count
        self.constant = int(constant.sum())
        if self.constant:
            index = int(np.argmax(constant))
            self.first_constant = (index, float(self._lows[index]))
        self._judge(all_same=bool(self._same_as_first.all()))
