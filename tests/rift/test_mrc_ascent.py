"""MRC ascent rules, tie-breaking and the reference options, each checked against the independent
oracle in ``rift.mrc_reference`` or against the paper's Theorem A.4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from torch import nn

from rift.config import MRCSpec
from rift.mrc import ModuleCriticality, MRCReport, module_robust_criticality
from rift.mrc_reference import plain_mrc_table
from rift.pipeline import MRCStageResult


def _breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x, torch.tensor(labels, dtype=torch.long)


def _three_layer_mlp(x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear, no biases (so Theorem A.4's rescaling is exact), trained
    briefly so that the loss surface is that of a fitted model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16, bias=False), nn.ReLU(),
                          nn.Linear(16, 16, bias=False), nn.ReLU(),
                          nn.Linear(16, 2, bias=False))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


def _rescaled(model: nn.Sequential, layer: int, beta: float) -> nn.Sequential:
    """Multiply layer ``layer``'s weight by β and the next linear layer's by 1/β."""
    scaled = nn.Sequential(*[type(m)(m.in_features, m.out_features, bias=False)
                             if isinstance(m, nn.Linear) else nn.ReLU() for m in model])
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled[layer].weight.mul_(beta)
        scaled[layer + 2].weight.div_(beta)
    return scaled.eval()


@pytest.fixture(scope="module")
def mlp_setup() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    x, y = _breast_cancer()
    return _three_layer_mlp(x, y), x, y


@pytest.mark.parametrize("beta", [0.01, 100.0])
@pytest.mark.parametrize("layer", [0, 2], ids=["first", "middle"])
def test_normalized_ascent_is_scale_invariant(mlp_setup, beta: float, layer: int) -> None:
    model, x, y = mlp_setup
    scaled = _rescaled(model, layer, beta)
    torch.testing.assert_close(scaled(x), model(x), rtol=1e-4, atol=1e-4)
    spec = MRCSpec(ascent="normalized", modules=[str(layer)], batch_size=128, steps=10)
    original = module_robust_criticality(model, x, y, spec).modules[0].mrc
    rescaled = module_robust_criticality(scaled, x, y, spec).modules[0].mrc
    assert original > 0.01
    assert abs(rescaled - original) / original < 1e-3


def test_sgd_ascent_is_not_scale_invariant(mlp_setup) -> None:
    """The flaw the normalized rule removes: with a fixed lr the step relative to the ball changes
    by β², so the same true maximum is approximated very differently."""
    model, x, y = mlp_setup
    spec = MRCSpec(ascent="sgd", modules=["0"], batch_size=128, steps=10)
    original = module_robust_criticality(model, x, y, spec).modules[0].mrc
    rescaled = module_robust_criticality(_rescaled(model, 0, 100.0), x, y, spec).modules[0].mrc
    assert rescaled < 0.5 * original


@pytest.mark.parametrize("ascent", ["sgd", "normalized"])
@pytest.mark.parametrize("p", [2, "inf"])
@pytest.mark.parametrize("reference_options", [False, True], ids=["default", "reference"])
def test_engine_agrees_with_independent_oracle(mlp_setup, ascent: str, p: object,
                                               reference_options: bool) -> None:
    model, x, y = mlp_setup
    spec = MRCSpec(ascent=ascent, p=p, steps=3, batch_size=100, lr=0.5, eps=0.2,
                   allow_negative=reference_options, reshuffle=reference_options)
    engine = module_robust_criticality(model, x, y, spec, seed=3)
    oracle = plain_mrc_table(model, x, y, spec, seed=3)
    assert [row.name for row in engine.modules] == list(oracle)
    for row in engine.modules:
        expected = oracle[row.name]
        assert row.mrc == pytest.approx(expected.mrc, rel=1e-4, abs=1e-6), row.name
        assert row.max_ascent_loss == pytest.approx(expected.max_ascent_loss, rel=1e-5)
        assert row.robust_accuracy_at_worst == pytest.approx(expected.robust_accuracy_at_worst)
        if not reference_options:
            assert row.mrc >= 0


def test_allow_negative_reports_the_ascent_maximum_itself() -> None:
    """Default MRC = max(0, reached − baseline); with allow_negative it is reached − baseline."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3, bias=False)).eval()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    spec = MRCSpec(ascent="sgd", lr=1.0, eps=0.1, steps=2, batch_size=64)
    default = module_robust_criticality(model, x, y, spec).modules[0]
    raw = module_robust_criticality(model, x, y, spec.model_copy(
        update={"allow_negative": True})).modules[0]
    assert default.mrc == pytest.approx(max(0.0, raw.mrc), abs=1e-7)
    assert raw.mrc == pytest.approx(raw.max_ascent_loss - (default.worst_robust_loss
                                                           - default.mrc), abs=1e-7)


def _row(name: str, mrc: float, reached: float) -> ModuleCriticality:
    return ModuleCriticality(name=name, parameters=1, mrc=mrc, worst_robust_loss=1.0 + mrc,
                             robust_accuracy_at_worst=50.0, robust_accuracy_drop=0.0, seconds=0.0,
                             max_ascent_loss=reached)


def test_modules_tying_on_mrc_are_ordered_by_the_ascent_maximum() -> None:
    rows = [_row("a", 0.0, 0.98), _row("b", 0.0, 0.91), _row("c", 0.3, 1.3), _row("d", 0.0, 0.95)]
    assert MRCReport(1.0, 50.0, rows).lowest().name == "b"
    # A lower MRC still wins over any tie-breaker; an older row without the value sorts last.
    assert MRCReport(1.0, 50.0, [*rows, _row("e", -0.01, 2.0)]).lowest().name == "e"
    old = [_row("x", 0.0, math.nan), _row("y", 0.0, 0.99)]
    assert MRCReport(1.0, 50.0, old).lowest().name == "y"
    # The stage result applies the same rule to its JSON rows.
    table = [row.as_dict() for row in rows]
    merged = MRCStageResult.merge([MRCStageResult(table, 1.0, 50.0, "a", "cached", 8, 0.0)],
                                  [row.name for row in rows])
    assert merged.selected_module == "b"


def test_normalized_ascent_reaches_the_surface_of_the_ball(mlp_setup) -> None:
    """The first normalized step has length lr · radius, so with lr 1 the iterates sit on the
    sphere; the loss there is higher than at Δ = 0 for a fitted model."""
    model, x, y = mlp_setup
    spec = MRCSpec(ascent="normalized", modules=["4"], steps=1, batch_size=len(y))
    row = module_robust_criticality(model, x, y, spec).modules[0]
    assert row.max_ascent_loss > row.worst_robust_loss - row.mrc
