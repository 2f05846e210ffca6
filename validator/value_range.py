"""The smallest and largest value of each channel (images) or feature (feature vectors) of an
npz's input arrays, read chunk by chunk in bounded memory: the service records them at upload so
that job creation can refuse an ``attack.domain`` the data lie outside, as the library would when
the job runs (``rift.inputs_in_domain``). Imports no torch."""

from __future__ import annotations

import math

import numpy as np

#: The most channels/features whose own ranges a dataset's record keeps
#: (``datasets.channel_value_min``/``channel_value_max``); past it only the overall range is.
RANGED_CHANNELS_MAX = 1_000


class ChannelRanges:
    """Per-channel minima and maxima of input arrays of ``channels`` channels (feature
    vectors: features), fed with :meth:`start` for each array and then :meth:`update` with its
    values in the order they are stored (flat chunks of any size, as ``validator.dataset`` reads
    them; values that ``rift.dataset_formats.ValueScan`` already checked: finite).

    The values are kept in the inputs' units: uint8 pixels (``scale`` 255) are read as
    value / 255, as the library reads them. Past :data:`RANGED_CHANNELS_MAX` channels nothing is
    kept (:attr:`minima` is None); the overall range is then the caller's (``ValueScan``).
    """

    def __init__(self, channels: int, *, scale: float = 1.0) -> None:
        self._channels = channels
        self._scale = scale
        self._kept = channels <= RANGED_CHANNELS_MAX
        self._low = np.full(channels if self._kept else 0, np.inf)
        self._high = np.full(channels if self._kept else 0, -np.inf)
        self._run = 1  # consecutive stored values of one channel
        self._offset = 0  # values of the current array fed so far
        self._fed = False

    def start(self, shape: tuple[int, ...], channel_axis: int, *, fortran_order: bool) -> None:
        """Begin an array of ``shape`` whose channels lie along ``channel_axis``, stored in C
        order (last index fastest) or Fortran order (first index fastest)."""
        faster = shape[:channel_axis] if fortran_order else shape[channel_axis + 1:]
        self._run = math.prod(faster)
        self._offset = 0

    def update(self, chunk: np.ndarray) -> None:
        """Add one flat chunk of the current array's values."""
        values = chunk.reshape(-1)
        offset, self._offset = self._offset, self._offset + values.size
        if not self._kept or values.size == 0:
            return
        self._fed = True
        run, channels = self._run, self._channels
        if run > 1:
            # One minimum and maximum per run of one channel's values (the first run may be
            # the end of one the previous chunk began); consecutive runs are consecutive channels.
            starts = np.arange((-offset) % run, values.size, run)
            if starts.size == 0 or starts[0] != 0:
                starts = np.concatenate(([0], starts))
            lows, highs = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
            first = (offset // run) % channels
        else:
            lows = highs = values
            first = offset % channels
        np.minimum(self._low, _per_channel(lows, first, channels, np.minimum), out=self._low)
        np.maximum(self._high, _per_channel(highs, first, channels, np.maximum), out=self._high)

    @property
    def minima(self) -> tuple[float, ...] | None:
        """Each channel's smallest value (in the inputs' units); None past the bound, or before
        any value was fed."""
        return self._in_units(self._low)

    @property
    def maxima(self) -> tuple[float, ...] | None:
        """Each channel's largest value, as :attr:`minima`."""
        return self._in_units(self._high)

    def _in_units(self, values: np.ndarray) -> tuple[float, ...] | None:
        if not self._kept or not self._fed:
            return None
        return tuple(float(value) / self._scale for value in values)


#: Values per row of the table a chunk is reduced in (a multiple of the channels): rows of
#: three values (RGB pixels stored channels-last) reduced down their columns took 1.4 s of CPU
#: for CIFAR-10's 150 MB of uint8 pixels, rows of a few thousand 0.1 s.
_ROW_VALUES = 4096


def _per_channel(values: np.ndarray, first: int, channels: int,
                 reduce: np.ufunc) -> np.ndarray:
    """``reduce`` (np.minimum or np.maximum) over ``values`` of consecutive channels (the first
    of channel ``first``, wrapping after ``channels``), one result per channel. A channel
    without values gets the dtype's extreme (inf, or an integer type's largest or smallest), which
    changes no channel's range once its values are fed; every example holds every channel."""
    width = channels * max(1, _ROW_VALUES // channels)
    padded = np.full(-(-(first + values.size) // width) * width,
                     _extreme(values.dtype, largest=reduce is np.minimum), dtype=values.dtype)
    padded[first:first + values.size] = values  # a copy in the values' dtype: bounded memory
    columns = reduce.reduce(padded.reshape(-1, width), axis=0)
    return np.asarray(reduce.reduce(columns.reshape(-1, channels), axis=0))


def _extreme(dtype: np.dtype, *, largest: bool) -> float | int:
    if np.issubdtype(dtype, np.floating):
        return np.inf if largest else -np.inf
    info = np.iinfo(dtype)
    return int(info.max if largest else info.min)
