"""Tests of rift/interpolation.py: exact end points, the α grid and the choice of α."""

from __future__ import annotations

import pytest
import torch

from rift.errors import ConfigError
from rift.interpolation import (
    InterpolationPoint,
    alpha_grid,
    interpolate_weights,
    select_alpha,
)


def _state_pair(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    # Values of very different magnitudes: a + (b − a) is not b for many such pairs in fp32.
    at = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen) * 1e-3,
        "bn.running_mean": torch.randn(4, generator=gen) * 1e4,
        "bn.running_var": torch.rand(4, generator=gen) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
        "half.weight": torch.randn(5, generator=gen).half(),
    }
    ft = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen) * 1e3,
        "bn.running_mean": torch.randn(4, generator=gen) * 1e-4,
        "bn.running_var": torch.rand(4, generator=gen) + 0.5,
        "bn.num_batches_tracked": torch.tensor(19),
        "half.weight": torch.randn(5, generator=gen).half(),
    }
    return at, ft


def test_end_points_are_exact() -> None:
    at, ft = _state_pair()
    naive_misses = any(
        not torch.equal(at[k] + 1.0 * (ft[k] - at[k]), ft[k])
        for k in at
        if at[k].is_floating_point()
    )
    assert naive_misses, "fixture should make the naive formula inexact at α = 1"
    zero = interpolate_weights(at, ft, 0.0)
    one = interpolate_weights(at, ft, 1.0)
    for key in at:
        assert torch.equal(zero[key], at[key]), key
        assert torch.equal(one[key], ft[key]), key
        assert zero[key].dtype == at[key].dtype
    # Fresh tensors: editing the result must not edit the inputs.
    zero["conv.weight"].add_(1.0)
    assert not torch.equal(zero["conv.weight"], at["conv.weight"])


def test_midpoint_and_integer_rule() -> None:
    at, ft = _state_pair(1)
    mid = interpolate_weights(at, ft, 0.5)
    for key in ("conv.weight", "bn.running_mean", "bn.running_var"):
        torch.testing.assert_close(mid[key], (at[key] + ft[key]) / 2, rtol=1e-6, atol=1e-6)
    expected_half = ((at["half.weight"].float() + ft["half.weight"].float()) / 2).half()
    assert mid["half.weight"].dtype == torch.float16
    torch.testing.assert_close(mid["half.weight"], expected_half)
    # Counters keep θ_AT's value strictly inside (0, 1).
    assert mid["bn.num_batches_tracked"].item() == 7
    assert interpolate_weights(at, ft, 0.999)["bn.num_batches_tracked"].item() == 7
    quarter = interpolate_weights(at, ft, 0.25)
    expected = 0.75 * at["conv.weight"] + 0.25 * ft["conv.weight"]
    torch.testing.assert_close(quarter["conv.weight"], expected)
    assert list(mid) == list(at)


def test_layout_mismatch_is_a_config_error() -> None:
    at, ft = _state_pair()
    del ft["bn.running_var"]
    with pytest.raises(ConfigError, match="running_var"):
        interpolate_weights(at, ft, 0.5)
    at, ft = _state_pair()
    ft["conv.weight"] = ft["conv.weight"][:2]
    with pytest.raises(ConfigError, match=r"conv\.weight"):
        interpolate_weights(at, ft, 0.5)
    at, ft = _state_pair()
    with pytest.raises(ConfigError) as info:
        interpolate_weights(at, ft, 1.5)
    assert info.value.field == "interpolation.alpha"


def test_alpha_grid() -> None:
    assert alpha_grid(0.1) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    grid = alpha_grid(0.05)
    assert len(grid) == 21 and grid[0] == 0.0 and grid[-1] == 1.0
    assert grid[6] == 0.3 and grid[14] == 0.7
    assert alpha_grid(0.3) == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert alpha_grid(1.0) == [0.0, 1.0]
    assert alpha_grid(0.7) == [0.0, 0.7, 1.0]
    for bad in (0.0, -0.1, 1.5, 1e-9):
        with pytest.raises(ConfigError):
            alpha_grid(bad)


def _points(rows: list[tuple[float, float, float]]) -> list[InterpolationPoint]:
    return [InterpolationPoint(alpha=a, clean_accuracy=c, robust_accuracy=r) for a, c, r in rows]


def test_select_alpha_keeps_robustness() -> None:
    points = _points([(0.0, 80.0, 50.0), (0.5, 82.0, 50.2), (0.8, 83.0, 49.95), (1.0, 85.0, 45.0)])
    assert select_alpha(points, baseline_robust_accuracy=50.0).alpha == 0.5
    # The reference code's 0.1-point tolerance admits α = 0.8 but still not α = 1.
    assert select_alpha(points, baseline_robust_accuracy=50.0, tolerance=0.1).alpha == 0.8
    assert select_alpha(points, baseline_robust_accuracy=50.0, tolerance=10.0).alpha == 1.0
    assert points[1].as_dict() == {"alpha": 0.5, "clean_accuracy": 82.0, "robust_accuracy": 50.2}


def test_select_alpha_ties_and_fallback() -> None:
    tie_clean = _points(
        [(0.0, 80.0, 50.0), (0.4, 82.0, 50.0), (0.6, 82.0, 51.0), (0.7, 82.0, 51.0)]
    )
    assert select_alpha(tie_clean, baseline_robust_accuracy=50.0).alpha == 0.6
    # Nothing qualifies (noisy baseline): keep the original weights, α = 0.
    none = _points([(0.5, 90.0, 10.0), (0.0, 80.0, 49.0), (1.0, 95.0, 5.0)])
    assert select_alpha(none, baseline_robust_accuracy=50.0).alpha == 0.0
    with pytest.raises(ConfigError):
        select_alpha([], baseline_robust_accuracy=50.0)


def test_equal_infinite_entries_stay_as_they_are() -> None:
    # A mask buffer holding -inf in both state dicts: torch.lerp(-inf, -inf, α) is NaN.
    mask = torch.tensor([0.0, float("-inf"), float("inf")])
    theta_at = {"mask": mask, "w": torch.tensor([1.0, 2.0, float("nan")])}
    theta_ft = {"mask": mask.clone(), "w": torch.tensor([3.0, 2.0, 1.0])}
    mixed = interpolate_weights(theta_at, theta_ft, 0.25)
    assert torch.equal(mixed["mask"], mask)
    assert mixed["w"][:2].tolist() == [1.5, 2.0] and mixed["w"][2].isnan()
