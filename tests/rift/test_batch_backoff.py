"""Tests of rift/batch_backoff.py with the exception type CUDA raises, simulated on the CPU."""

from __future__ import annotations

import pytest
import torch

from rift.batch_backoff import with_batch_backoff


def _fits_up_to(limit: int, tried: list[int]):  # type: ignore[no-untyped-def]
    def run(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {batch_size}")
        return batch_size * 10
    return run


def test_halves_the_batch_until_it_fits_and_reports_each_back_off() -> None:
    tried: list[int] = []
    backoffs: list[tuple[int, int]] = []
    result = with_batch_backoff(_fits_up_to(100, tried), 512,
                                on_backoff=lambda old, new: backoffs.append((old, new)))
    assert result == 640 and tried == [512, 256, 128, 64]
    assert backoffs == [(512, 256), (256, 128), (128, 64)]


def test_re_raises_at_the_minimum_and_passes_other_errors_through() -> None:
    tried: list[int] = []
    with pytest.raises(torch.OutOfMemoryError):
        with_batch_backoff(_fits_up_to(0, tried), 8, min_batch_size=2)
    assert tried == [8, 4, 2]

    def broken(batch_size: int) -> int:
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        with_batch_backoff(broken, 8)
    with pytest.raises(ValueError):
        with_batch_backoff(broken, 0)
