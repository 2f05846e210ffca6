"""An MRC stage taken over midway (its worker stopped or lost) takes the rows an earlier attempt
stored instead of scoring those modules again (``done`` of ``module_robust_criticality``), and
its table is the uninterrupted one exactly: each module is scored alone from the same inputs and
seed (its batch orders drawn from a generator seeded alike), every weight restored after it, so
a row does not depend on which modules ran before it in the process."""

from __future__ import annotations

import dataclasses

import torch

from rift.config import MRCSpec
from rift.mrc import (
    ModuleCriticality,
    module_robust_criticality,
    mrc_inputs_digest,
    row_from_dict,
)
from tests.rift.test_mrc_stacked import _conv_chain, _data


def _spec(**overrides: object) -> MRCSpec:
    values: dict[str, object] = {"steps": 3, "batch_size": 8, "num_examples": 24, "eps": 0.3,
                                 "lr": 0.3, "reshuffle": True}
    values.update(overrides)
    return MRCSpec(**values)


def _timeless(rows: list[ModuleCriticality]) -> list[ModuleCriticality]:
    return [dataclasses.replace(row, seconds=0.0) for row in rows]


def test_rows_stored_by_an_earlier_attempt_are_taken_and_the_table_is_the_same() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec(), seed=7)
    assert len(whole.modules) == 5 and whole.reused == []
    # What a stopped attempt stored (through JSON, as events are), in another process state:
    # the resumed run starts with its second and fourth module done.
    stored = {row.name: row_from_dict(row.as_dict()) for row in whole.modules[1:4:2]}
    assert all(row is not None for row in stored.values())
    torch.manual_seed(12345)  # a global RNG moved elsewhere changes nothing
    scored: list[tuple[str, int]] = []
    resumed = module_robust_criticality(
        _conv_chain(), images, labels, _spec(), seed=7,
        done={name: row for name, row in stored.items() if row is not None},
        on_module=lambda row, index, total: scored.append((row.name, index)))
    names = [row.name for row in whole.modules]
    assert resumed.reused == [names[1], names[3]]
    assert scored == [(names[0], 2), (names[2], 3), (names[4], 4)]  # only the missing ones
    assert _timeless(resumed.modules) == _timeless(whole.modules)
    assert resumed.lowest().name == whole.lowest().name


def test_with_module_groups_only_whole_leading_groups_are_taken() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec(module_batch=2))
    names = [row.name for row in whole.modules]
    # Three leading rows stored: the third's group was not whole, so it is scored again.
    resumed = module_robust_criticality(
        _conv_chain(), images, labels, _spec(module_batch=2),
        done={row.name: row for row in whole.modules[:3]})
    assert resumed.reused == names[:2]
    assert _timeless(resumed.modules) == _timeless(whole.modules)


def test_selection_table_and_bounds_are_never_taken() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec())
    done = {row.name: row for row in whole.modules}
    selection = module_robust_criticality(_conv_chain(), images, labels,
                                          _spec(table="selection"), done=done)
    assert selection.reused == []
    bound = {name: dataclasses.replace(row, exact=False) for name, row in done.items()}
    assert module_robust_criticality(_conv_chain(), images, labels, _spec(),
                                     done=bound).reused == []


def test_the_inputs_digest_changes_with_what_a_row_is_computed_from() -> None:
    images, labels = _data()
    base = mrc_inputs_digest(images, labels, _spec(), seed=0, precision="fp32")
    assert base == mrc_inputs_digest(images.clone(), labels.clone(), _spec(), seed=0,
                                     precision="fp32")
    # Which modules a shard or a filter picks does not change a row.
    assert base == mrc_inputs_digest(images, labels, _spec(modules=["convs.0"], shards=2),
                                     seed=0, precision="fp32")
    nudged = images.clone()
    nudged[3, 1, 2, 2] = torch.nextafter(nudged[3, 1, 2, 2], torch.tensor(2.0))
    others = {
        mrc_inputs_digest(nudged, labels, _spec(), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels.flip(0), _spec(), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(steps=4), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(), seed=1, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(), seed=0, precision="bf16"),
    }
    assert len(others) == 5 and base not in others


def test_a_stored_row_missing_a_field_is_not_taken() -> None:
    row = ModuleCriticality("conv", 10, 0.5, 2.0, 50.0, 10.0, 1.0, 2.1, 3, True).as_dict()
    assert row_from_dict(row) == ModuleCriticality(**row)  # type: ignore[arg-type]
    assert row_from_dict({**row, "mrc": 1}) is not None  # a whole number read back as an int
    for broken in ({k: v for k, v in row.items() if k != "passes"}, {**row, "mrc": "0.5"},
                   {**row, "exact": 1}, {**row, "parameters": True}):
        assert row_from_dict(broken) is None
