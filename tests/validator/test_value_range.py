"""The per-channel value ranges an upload records (``validator/value_range.py``): exact over any
memory order, channel axis and chunking, kept up to a bound of channels."""

from __future__ import annotations

import numpy as np
import pytest

from validator.value_range import RANGED_CHANNELS_MAX, ChannelRanges


def _fed(arrays: list[np.ndarray], axis: int, fortran: bool, rng: np.random.Generator,
         scale: float = 1.0) -> ChannelRanges:
    ranges = ChannelRanges(arrays[0].shape[axis] if axis else 1, scale=scale)
    for array in arrays:
        ranges.start(array.shape, axis, fortran_order=fortran)
        flat = array.reshape(-1, order="F" if fortran else "C")
        at = 0
        while at < flat.size:  # chunks of 1 to 40 values, cutting runs of a channel anywhere
            step = int(rng.integers(1, 41))
            ranges.update(flat[at:at + step])
            at += step
    return ranges


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_each_channels_range_is_exact_over_any_layout_and_chunking(fortran: bool,
                                                                   dtype: type) -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        dims = int(rng.integers(2, 5))
        shape = tuple(int(side) for side in rng.integers(1, 7, dims))
        axis = int(rng.integers(1, dims))  # features (N, F): 1; images: 1 or 3 (channels last)
        # x and a smaller x_test, with values of their own
        arrays = [(rng.normal(size=(int(rng.integers(1, 5)), *shape[1:])) * 50).astype(dtype)
                  for _ in range(2)]
        both = np.concatenate(arrays)
        others = tuple(a for a in range(both.ndim) if a != axis)
        ranges = _fed(arrays, axis, fortran, rng)
        assert ranges.minima == tuple(float(v) for v in both.min(axis=others)), (shape, axis)
        assert ranges.maxima == tuple(float(v) for v in both.max(axis=others)), (shape, axis)


def test_uint8_pixels_are_kept_as_the_library_reads_them() -> None:
    pixels = np.array([[[[0, 255], [17, 3]]], [[[51, 9], [1, 2]]]], dtype=np.uint8)  # N×1×2×2
    ranges = _fed([pixels], 1, False, np.random.default_rng(0), scale=255.0)
    assert (ranges.minima, ranges.maxima) == ((0.0,), (1.0,))
    ranges = _fed([pixels[:, :, 1:]], 1, False, np.random.default_rng(0), scale=255.0)
    assert (ranges.minima, ranges.maxima) == ((1 / 255,), (17 / 255,))


def test_past_the_bound_no_channel_is_kept() -> None:
    ranges = ChannelRanges(RANGED_CHANNELS_MAX + 1)
    ranges.start((2, RANGED_CHANNELS_MAX + 1), 1, fortran_order=False)
    ranges.update(np.arange(2 * (RANGED_CHANNELS_MAX + 1), dtype=np.float32))
    assert (ranges.minima, ranges.maxima) == (None, None)
    assert ChannelRanges(3).minima is None  # nothing fed
