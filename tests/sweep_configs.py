"""Sweep configs on the digits checkpoint shared by the library's and the service's tests."""

from __future__ import annotations

from typing import Any


def alpha_zero_loser(config: dict[str, Any], lr_grid: list[float]) -> dict[str, Any]:
    """``config`` (the digits job as a dict, changed in place and returned) made a quick sweep of
    fc over ``lr_grid``, its choice by clean accuracy alone (any robust accuracy qualifies).
    Measured: rate 1e-6 leaves every α at θ_AT's clean accuracy, so its own curve keeps α = 0;
    rate 0.05 gains clean accuracy at some α > 0 (1.0 or 0.5: the cached test checkpoint's last
    bits depend on the CPU that trained it), which wins."""
    config["dataset"]["max_train_examples"] = 300
    config["attack"].update(steps=3, step_size=0.05)
    config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    config["finetune"].pop("lr", None)  # lr_grid sets the rates
    config["finetune"].update(module="fc", epochs=1, lr_milestones=[], lr_grid=lr_grid,
                              bn_stats="freeze")
    config["interpolation"].update(alpha_step=0.5, robust_tolerance=100.0)
    config["evaluation"]["max_examples"] = 120
    config["preflight"] = {"examples": 0}
    return config
