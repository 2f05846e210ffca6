"""The worker's cache of prepared runs (worker/prepared_runs.py), on real digits runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from rift.config import RiftConfig
from rift.pipeline import PreparedRun, prepare_run, run_finetune_stage
from worker.prepared_runs import PreparedRunCache, RunKey, run_nbytes


@pytest.fixture
def build(digits_checkpoint_path: Path, digits_job_config: dict[str, Any]
          ) -> Callable[[], PreparedRun]:
    config = RiftConfig.model_validate(digits_job_config)
    return lambda: prepare_run(config, digits_checkpoint_path)


def key(job_id: str, config: str = "c") -> RunKey:
    return RunKey(job_id, "checkpoint-sha", None, config)


def never() -> PreparedRun:
    raise AssertionError("a cached run was expected; the cache built one")


def test_a_kept_run_is_taken_back_in_its_prepared_state(build: Callable[[], PreparedRun]) -> None:
    cache = PreparedRunCache(max_bytes=2**30)
    taken = cache.take(key("a"), build)
    assert not taken.cached
    run = taken.run
    prepared = {name: value.clone() for name, value in run.model.state_dict().items()}
    # What a stage may leave behind: trained weights and BatchNorm statistics, gradients, train
    # mode, flags, another config (a sweep candidate's learning rate).
    run_finetune_stage(run, "fc")  # resets to θ_AT at its end: disturb the model by hand too
    with torch.no_grad():
        for parameter in run.model.parameters():
            parameter.add_(1.0)
            parameter.grad = torch.ones_like(parameter)
    for buffer in run.model.buffers():
        buffer.add_(1)
    run.model.train()
    next(run.model.parameters()).requires_grad_(False)
    config = run.config
    run.config = config.model_copy(update={"seed": 7})
    cache.keep(taken)

    again = cache.take(key("a"), never)
    assert again.cached and again.run is run
    state = run.model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in prepared.items())
    assert not run.model.training
    assert all(p.requires_grad and p.grad is None for p in run.model.parameters())
    assert run.config is config
    # Taken means held: the cache has no entry until the run is kept again.
    assert cache.job_ids() == [] and cache.nbytes == 0
    assert not cache.take(key("a"), build).cached


def test_a_run_serves_only_its_own_key(build: Callable[[], PreparedRun]) -> None:
    cache = PreparedRunCache(max_bytes=2**30)
    cache.keep(cache.take(key("a"), build))
    assert not cache.take(key("b"), build).cached  # another job
    assert not cache.take(key("a", config="other"), build).cached  # another config
    assert cache.take(key("a"), never).cached


def test_least_recently_kept_runs_are_evicted_beyond_the_byte_bound(
        build: Callable[[], PreparedRun]) -> None:
    runs = {job: PreparedRunCache(max_bytes=0).take(key(job), build) for job in "abc"}
    size = run_nbytes(runs["a"].run)
    assert size > 0 and all(run_nbytes(taken.run) == size for taken in runs.values())
    cache = PreparedRunCache(max_bytes=2 * size)  # room for two
    cache.keep(runs["a"])
    cache.keep(runs["b"])
    assert cache.take(key("a"), never).cached  # a is now the most recently kept
    cache.keep(runs["a"])
    cache.keep(runs["c"])
    assert cache.job_ids() == ["a", "c"] and cache.nbytes == 2 * size
    assert not cache.take(key("b"), build).cached

    small = PreparedRunCache(max_bytes=size - 1)  # a run larger than the bound is not kept
    small.keep(runs["a"])
    assert small.job_ids() == [] and small.nbytes == 0
    disabled = PreparedRunCache(max_bytes=0)
    disabled.keep(runs["b"])
    assert disabled.job_ids() == []


def test_discarding_a_job_drops_its_runs(build: Callable[[], PreparedRun]) -> None:
    cache = PreparedRunCache(max_bytes=2**30)
    cache.keep(cache.take(key("a"), build))
    cache.keep(cache.take(key("b"), build))
    cache.discard_job("a")
    assert cache.job_ids() == ["b"]
    assert not cache.take(key("a"), build).cached
