"""Split the MRC stage into shards of modules that several workers can score at once.

Scoring a module costs about ``2·steps`` passes over the part of the network after it (see
``rift.segments``), so a module early in the network costs more than one near the output. The
estimate here is the multiply-accumulates of every scored module run at or after the module
(measured once with forward hooks on one example), and :func:`partition_modules` balances the
shards by it. MRC values do not depend on which shard scores a module: every module is scored on
the same stored adversarial set with all other weights at θ_AT (``rift.pipeline.MRCStageResult.merge``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rift.config import MRCSpec
from rift.errors import ConfigError
from rift.model_state import eval_mode, frozen_except
from rift.mrc import reachable_modules, select_modules
from rift.scored_weights import scored_parameters


@dataclass(frozen=True)
class ShardPlan:
    """The modules of each shard, and the selected modules no shard scores because the model's
    eval-mode output does not depend on them (``rift.mrc.unreachable_modules``)."""

    groups: list[list[str]]
    unreachable: list[str]


def plan_shards(model: nn.Module, spec: MRCSpec, example: torch.Tensor) -> ShardPlan:
    """Split the modules ``spec`` selects into at most ``spec.shards`` groups balanced by
    estimated cost (:func:`partition_modules`), on ``example`` (e.g. the adversarial set; its
    first item is used). Modules the output does not depend on are left out here, as the
    one-task table leaves them out: handed to a shard alone (more shards than scored modules, or
    several such modules of cost 1 balanced onto one shard), they failed that shard, and with it
    the job, with "no selected module affects the model's output".

    Raises:
        ConfigError: no selected module, or none affects the output.
    """
    with frozen_except(model):
        names, unreachable = reachable_modules(model, select_modules(model, spec), example[:1])
    costs = estimate_module_costs(model, example[:1], names)
    return ShardPlan(partition_modules(costs, spec.shards), unreachable)


@torch.no_grad()
def estimate_module_costs(model: nn.Module, example: torch.Tensor, names: list[str]
                          ) -> dict[str, float]:
    """Estimated cost of scoring each module of ``names``: the multiply-accumulates, per example,
    of the scored modules (``rift.scored_weights``) that run at or after it in one forward pass
    of ``example`` (a batch of one, on the model's device). Modules the pass never reaches cost
    1."""
    order: list[tuple[str, float]] = []
    handles = []
    for name, module in model.named_modules():
        weights = scored_parameters(module)
        if weights:
            handles.append(module.register_forward_hook(_recorder(name, weights, order)))
    try:
        with eval_mode(model):
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    costs: dict[str, float] = {}
    remaining = sum(macs for _, macs in order)
    for name, macs in order:
        costs.setdefault(name, remaining)  # first call: everything from here on is recomputed
        remaining -= macs
    return {name: max(costs.get(name, 1.0), 1.0) for name in names}


def _recorder(name: str, weights: tuple[torch.Tensor, ...], order: list[tuple[str, float]]
              ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], object], None]:
    # Each output element is about a dot product over one filter: weight.numel() / out_channels
    # (an estimate for transposed convolutions and attention, enough to balance shards).
    per_output = sum(w.numel() for w in weights) / max(int(weights[0].shape[0]), 1)

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        # nn.MultiheadAttention returns (output, attention weights or None).
        first = output[0] if isinstance(output, tuple) else output
        if isinstance(first, torch.Tensor):
            order.append((name, float(first.numel()) * per_output))
    return hook


def partition_modules(costs: dict[str, float], shards: int) -> list[list[str]]:
    """Split the modules into at most ``shards`` non-empty groups of nearly equal total cost
    (longest-processing-time-first: the costliest module goes to the least loaded shard). Each
    group keeps the modules in the order of ``costs``; groups are ordered by their first module.

    Raises:
        ConfigError: ``shards`` < 1 or no modules.
    """
    if shards < 1:
        raise ConfigError(f"mrc.shards must be ≥ 1, got {shards}", field="mrc.shards")
    if not costs:
        raise ConfigError("no module to score", field="mrc.modules")
    count = min(shards, len(costs))
    loads = [0.0] * count
    members: list[list[str]] = [[] for _ in range(count)]
    for name in sorted(costs, key=lambda n: -costs[n]):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += costs[name]
        members[target].append(name)
    position = {name: i for i, name in enumerate(costs)}
    groups = [sorted(group, key=position.__getitem__) for group in members]
    return sorted(groups, key=lambda group: position[group[0]])
