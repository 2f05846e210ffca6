"""Several modules' ascent at once (``mrc.module_batch``, ``rift.mrc_stacked``): the same table as
scoring one module at a time, in groups that shrink on out-of-memory.

Tolerance: a module scored in a group recomputes the layers between the group's first module and
its own (the one-module engine reads them from its cache), and a convolution with stacked weights
may run another kernel, so values agree up to fp32 rounding (~1e-7 relative per operation). MRC is
a difference of two losses of about 1.6 nats, each a sum of fp32 batch losses: a few ulps of it
(2e-7 each) are 1e-6 in absolute terms (ResNet-18 measured 2.4e-7, ``bench/mrc.py
--module-batch``), and relative 1e-5 for the larger values; a real error (a wrong weight in a
copy, copies leaking into each other, another batch order) moves them by 1e-3 or more on these
models. Accuracies are counts of argmax hits and must match exactly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rift.mrc_stacked as stacked
from rift.config import MRCSpec
from rift.errors import JobCancelled
from rift.mrc import MRCReport, module_robust_criticality
from rift.mrc_stacked import modules_per_group
from tests.module_factories import AttentionNet, TiedWeights, with_running_statistics


class ConvChain(nn.Module):
    """Four convolutions and a linear head in a plain chain: five modules."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1)
                                   for i in range(4))
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.mean((2, 3)))


class ResidualBN(nn.Module):
    """BatchNorm after every convolution, two residual blocks (the second with a 1×1 projection
    shortcut on a parallel branch) and a linear head: six modules."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.a1, self.abn1 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.a2, self.abn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b1, self.bbn1 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.shortcut, self.sbn = nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.abn2(self.a2(F.relu(self.abn1(self.a1(x))))))
        x = F.relu(self.bbn1(self.b1(x)) + self.sbn(self.shortcut(x)))
        return self.head(x.mean((2, 3)))


def _data(count: int = 24, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(count, 3, 8, 8, generator=generator),
            torch.randint(0, classes, (count,), generator=generator))


def _spec(**overrides: object) -> MRCSpec:
    values: dict[str, object] = {"steps": 2, "batch_size": 12, "num_examples": 24, "eps": 0.3,
                                 "lr": 0.3}
    values.update(overrides)
    return MRCSpec(**values)


def _residual_bn() -> nn.Module:
    torch.manual_seed(0)
    return with_running_statistics(ResidualBN(), 2)


def _conv_chain() -> nn.Module:
    torch.manual_seed(0)
    return ConvChain().eval()


@functools.cache
def _alone(build: Callable[[], nn.Module]) -> MRCReport:
    """The one-module-at-a-time table of a freshly built model with the default ``_spec()``,
    computed once for the tests that compare against it (the models are seeded)."""
    images, labels = _data()
    return module_robust_criticality(build(), images, labels, _spec())


def _assert_same_table(grouped: MRCReport, alone: MRCReport) -> None:
    assert [row.name for row in grouped.modules] == [row.name for row in alone.modules]
    assert grouped.baseline_robust_loss == alone.baseline_robust_loss
    for a, b in zip(grouped.modules, alone.modules, strict=True):
        assert a.mrc == pytest.approx(b.mrc, rel=1e-5, abs=1e-6), a.name
        assert a.max_ascent_loss == pytest.approx(b.max_ascent_loss, rel=1e-5), a.name
        assert a.robust_accuracy_at_worst == b.robust_accuracy_at_worst, a.name
        assert a.parameters == b.parameters
    assert grouped.lowest().name == alone.lowest().name


@pytest.fixture
def group_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many modules each stacked batch ran for (proves the grouped path ran)."""
    sizes: list[int] = []
    original = stacked.StackedProbe._logits

    def counting(self: stacked.StackedProbe, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        sizes.append(len(self.copies))
        return original(self, inputs)

    monkeypatch.setattr(stacked.StackedProbe, "_logits", counting)
    return sizes


@pytest.mark.parametrize("module_batch", [2, 5])
def test_a_conv_chain_scored_in_groups_gives_the_one_at_a_time_table(
        group_sizes: list[int], module_batch: int) -> None:
    """5 modules: groups of 2 (2 + 2 + 1, K not dividing the count) and one group of all 5."""
    model = _conv_chain()
    images, labels = _data()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.convs[1].requires_grad_(False)
    flags = [parameter.requires_grad for parameter in model.parameters()]
    alone = _alone(_conv_chain)
    grouped = module_robust_criticality(model, images, labels, _spec(module_batch=module_batch))
    _assert_same_table(grouped, alone)
    assert all(row.mrc > 0 for row in alone.modules)
    assert set(group_sizes) == {module_batch}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [parameter.requires_grad for parameter in model.parameters()] == flags


@pytest.mark.parametrize("overrides", [
    {}, {"reshuffle": True, "p": "inf", "ascent": "sgd", "allow_negative": True},
    {"engine": "full"}])
def test_batchnorm_and_residual_blocks_scored_in_groups_give_the_same_table(
        group_sizes: list[int], overrides: dict[str, object]) -> None:
    """Groups of 4 over 6 modules, one spanning a block's parallel branches (``b1`` and
    ``shortcut``); with reshuffled batches every module still gets its own batch orders."""
    model, (images, labels) = _residual_bn(), _data()
    alone = (_alone(_residual_bn) if not overrides
             else module_robust_criticality(model, images, labels, _spec(**overrides)))
    grouped = module_robust_criticality(model, images, labels,
                                        _spec(module_batch=4, **overrides))
    _assert_same_table(grouped, alone)
    assert set(group_sizes) == {4, 2}


def test_tied_and_functionally_read_weights_are_stacked_at_every_read(
        group_sizes: list[int]) -> None:
    torch.manual_seed(0)
    model = TiedWeights().eval()
    images, labels = torch.rand(12, 3, 8, 8), torch.randint(0, 4, (12,))
    spec = MRCSpec(steps=3, batch_size=6, num_examples=12, eps=0.5)
    alone = module_robust_criticality(model, images, labels, spec)
    grouped = module_robust_criticality(model, images, labels,
                                        spec.model_copy(update={"module_batch": 3}))
    _assert_same_table(grouped, alone)
    assert group_sizes


def _out_of_memory_above(copies: int) -> Callable[..., torch.Tensor]:
    """A stacked forward that fails as a device out of memory would with more than ``copies``
    modules at once (a forward hook cannot: inside vmap it sees one copy's shapes)."""
    original = stacked.StackedProbe._logits

    def logits(self: stacked.StackedProbe, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(self.copies) > copies:
            raise torch.OutOfMemoryError(f"simulated: {len(self.copies)} > {copies}")
        return original(self, inputs)
    return logits


@pytest.mark.parametrize(("fits", "sizes"), [(2, {2}), (1, set())])
def test_out_of_memory_scores_the_group_again_in_smaller_groups(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fits: int,
        sizes: set[int]) -> None:
    """Groups of 5 that do not fit: 5 → 2 (later groups keep 2), or down to one module at a time
    (the one-module engine, which has its own back-off)."""
    model, (images, labels) = _residual_bn(), _data()
    alone = _alone(_residual_bn)
    ran: list[int] = []
    failing = _out_of_memory_above(fits)

    def logits(self: stacked.StackedProbe, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        value = failing(self, inputs)
        ran.append(len(self.copies))
        return value

    monkeypatch.setattr(stacked.StackedProbe, "_logits", logits)
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="rift.mrc"):
        grouped = module_robust_criticality(model, images, labels, _spec(module_batch=5),
                                            on_warning=warnings.append)
    _assert_same_table(grouped, alone)
    assert set(ran) == sizes
    # 5 → 2, or 5 → 2 → 1, said once per halving (a pipeline turns them into warning events).
    expected = ["out of memory scoring 5 modules at once in the MRC ascent; continuing with 2"]
    if fits == 1:
        expected.append("out of memory scoring 2 modules at once in the MRC ascent; "
                        "continuing with 1")
    assert [message.split(" (")[0] for message in warnings] == expected
    assert [r.getMessage() for r in caplog.records if "modules at once" in r.getMessage()] \
        == warnings


def test_a_model_the_stacked_forward_cannot_run_is_scored_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation vmap refuses (e.g. a fused kernel without a batching or derivative rule):
    the table is still computed, one module at a time, with a warning."""
    model, (images, labels) = _conv_chain(), _data()
    alone = _alone(_conv_chain)

    def refused(self: stacked.StackedProbe, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise RuntimeError("simulated: no batching rule")

    monkeypatch.setattr(stacked.StackedProbe, "_logits", refused)
    warnings: list[str] = []
    grouped = module_robust_criticality(model, images, labels, _spec(module_batch=3),
                                        on_warning=warnings.append)
    _assert_same_table(grouped, alone)
    assert len(warnings) == 1 and "no batching rule" in warnings[0]
    assert "one module at a time" in warnings[0]


def test_attention_gives_the_same_table_whichever_path_it_takes() -> None:
    """``nn.MultiheadAttention`` may take a fused kernel vmap cannot differentiate (then the
    fallback above); either way the table is the one-at-a-time table."""
    torch.manual_seed(0)
    model = AttentionNet().eval()
    images, labels = torch.rand(12, 3, 8, 8), torch.randint(0, 4, (12,))
    spec = MRCSpec(steps=2, batch_size=6, num_examples=12, eps=0.5)
    alone = module_robust_criticality(model, images, labels, spec)
    grouped = module_robust_criticality(model, images, labels,
                                        spec.model_copy(update={"module_batch": 4}))
    _assert_same_table(grouped, alone)


def test_a_cancel_during_a_group_stops_it_with_the_weights_untouched() -> None:
    model, (images, labels) = _conv_chain(), _data()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    polls = iter(range(1000))
    with pytest.raises(JobCancelled):
        module_robust_criticality(model, images, labels, _spec(module_batch=3),
                                  should_cancel=lambda: next(polls) >= 6)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bf16_scores_one_module_at_a_time_with_a_warning(group_sizes: list[int]) -> None:
    """Under vmap, bf16 autocast skips convolutions with stacked weights, so a group would not
    compute what the one-module engine computes: bf16 runs are never grouped."""
    images, labels = _data()
    alone = module_robust_criticality(_residual_bn(), images, labels, _spec(), precision="bf16")
    warnings: list[str] = []
    grouped = module_robust_criticality(_residual_bn(), images, labels, _spec(module_batch=3),
                                        precision="bf16", on_warning=warnings.append)
    assert [row.mrc for row in grouped.modules] == [row.mrc for row in alone.modules]
    assert warnings == [stacked.FP32_ONLY] and group_sizes == []


def test_auto_is_one_module_at_a_time_on_a_cpu_or_in_bf16() -> None:
    assert modules_per_group("auto", torch.device("cpu")) == 1
    assert modules_per_group("auto", torch.device("cuda")) == stacked.AUTO_ACCELERATOR_GROUP > 1
    assert modules_per_group("auto", torch.device("cuda"), "bf16") == 1
    assert modules_per_group(3, torch.device("cpu")) == 3
    assert MRCSpec().module_batch == 1  # today's behaviour unless asked for


def test_a_job_with_module_batch_gets_the_same_mrc_stage_and_hears_of_a_fallback(
        digits_checkpoint_path, digits_job_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the pipeline: the config field reaches the engine, the stage's table is the
    one-at-a-time table, and a fallback is a ``warning`` event of the MRC stage."""
    from rift.config import RiftConfig
    from rift.pipeline import PipelineCallbacks, make_mrc_inputs, prepare_run, score_modules

    digits_job_config["mrc"].update(num_examples=32, batch_size=16, steps=2)
    run = prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    inputs = make_mrc_inputs(run)  # the same set for every run below (same config but the field)
    alone = score_modules(run, inputs)
    digits_job_config["mrc"]["module_batch"] = 2
    grouped_run = prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    grouped = score_modules(grouped_run, inputs)
    assert [row["name"] for row in grouped.rows] == [row["name"] for row in alone.rows]
    for a, b in zip(grouped.rows, alone.rows, strict=True):
        assert a["mrc"] == pytest.approx(b["mrc"], rel=1e-5, abs=1e-6), a["name"]
    assert grouped.selected_module == alone.selected_module

    def refused(self: stacked.StackedProbe, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError("simulated: no batching rule")

    monkeypatch.setattr(stacked.StackedProbe, "_logits", refused)
    events: list[tuple[str, dict]] = []
    score_modules(grouped_run, inputs, callbacks=PipelineCallbacks(
        on_event=lambda kind, data: events.append((kind, data))))
    warnings = [data for kind, data in events if kind == "warning"]
    assert [data["stage"] for data in warnings] == ["mrc"]
    assert "scoring one module at a time" in warnings[0]["message"]


class AliasedBlock(nn.Module):
    """One convolution registered under three names (``block``, ``blocks.0``, ``blocks.1``)
    and applied twice, as a weight-shared recurrent block is often written."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.blocks = nn.ModuleList([self.block, self.block])
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(block(x)) + x
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("engine", ["full", "cached"])
def test_a_module_registered_under_two_names_keeps_its_parameters_in_groups(
        group_sizes: list[int], engine: str) -> None:
    """torch's functional_call left such a model holding the stacked weight it was given, not
    its Parameter: the full engine's stage then failed with "your tensor may have escaped from
    inside a function being vmapped" (a traceback) at the next state_dict()."""
    torch.manual_seed(1)
    model = AliasedBlock().eval()
    held = {name: parameter for name, parameter in model.named_parameters()}
    images, labels = torch.rand(12, 3, 8, 8), torch.randint(0, 4, (12,))
    spec = MRCSpec(steps=2, batch_size=6, num_examples=12, eps=0.5, engine=engine)
    alone = module_robust_criticality(model, images, labels, spec)
    grouped = module_robust_criticality(model, images, labels,
                                        spec.model_copy(update={"module_batch": 3}))
    _assert_same_table(grouped, alone)
    assert group_sizes
    assert {name: parameter for name, parameter in model.named_parameters()} == held
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    model.state_dict()
