"""An attack radius as wide as the inputs' domain is refused, by the rule of rift.attack_radius,
both on its own and when a run is prepared."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift.attack_radius import check_attack_radius, domain_diameter
from rift.config import AttackSpec, RiftConfig
from rift.errors import ConfigError
from rift.pipeline import prepare_run


@pytest.mark.parametrize(("bounds", "norm", "shape", "diameter"), [
    (((0.0,), (1.0,)), "linf", None, 1.0),
    (((0.0, -2.0), (1.0, 2.0)), "linf", None, 4.0),  # the widest bound
    (((0.0,), (1.0,)), "l2", (3, 4, 4), 48 ** 0.5),  # one bound for all 48 values
    (((0.0, 0.0), (1.0, 3.0)), "l2", (2, 1, 1), 10 ** 0.5),
    (((0.0,), (1.0,)), "l2", None, None),  # L2 needs the shape
])
def test_the_diameter_is_the_largest_distance_in_the_domain(
        bounds: tuple, norm: str, shape: tuple[int, ...] | None, diameter: float | None) -> None:
    assert domain_diameter(bounds, norm, shape) == pytest.approx(diameter)


@pytest.mark.parametrize(("attack", "features", "shape", "refused"), [
    ({"eps": 8, "step_size": 2}, False, None, True),
    ({"eps": 1.0}, False, (1, 8, 8), True),
    ({"eps": 0.999}, False, (1, 8, 8), False),
    ({"norm": "l2", "eps": 8}, False, (1, 8, 8), True),
    ({"norm": "l2", "eps": 7.99}, False, (1, 8, 8), False),
    ({"norm": "l2", "eps": 64}, False, None, False),  # shape unknown: decided when the job runs
    ({"eps": 8}, True, (4, 1, 1), False),  # feature vectors: no bounds by default
    ({"eps": 8, "domain": {"lower": [0], "upper": [10]}}, True, (4, 1, 1), False),
    ({"eps": 10, "domain": {"lower": [0], "upper": [10]}}, True, (4, 1, 1), True),
])
def test_a_radius_covering_the_domain_is_refused(attack: dict, features: bool,
                                                  shape: tuple[int, ...] | None,
                                                  refused: bool) -> None:
    spec = AttackSpec.model_validate(attack)
    if not refused:
        check_attack_radius(spec, feature_vectors=features, input_shape=shape)
        return
    with pytest.raises(ConfigError, match="could move any input to any other") as error:
        check_attack_radius(spec, feature_vectors=features, input_shape=shape)
    assert error.value.field == "attack.eps"


def test_a_run_with_eps_in_grey_levels_is_refused_before_any_stage(
        digits_checkpoint_path: Path, digits_job_config: dict) -> None:
    # Before: eps 8 (meant as 8/255) ran to the end; every robust accuracy was about 0.
    digits_job_config["attack"] = {"eps": 8, "step_size": 2, "steps": 2}
    with pytest.raises(ConfigError, match=r"8 grey levels is eps = 8/255 = 0\.03137") as error:
        prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    assert error.value.field == "attack.eps"
