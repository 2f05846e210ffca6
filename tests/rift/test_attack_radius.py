"""An attack radius of half the inputs' domain or more is refused, by the rule of rift.attack_radius,
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
    ({"eps": 0.5}, False, (1, 8, 8), True),  # every image can be moved to mid-grey
    ({"eps": 0.499}, False, (1, 8, 8), False),
    ({"norm": "l2", "eps": 8}, False, (1, 8, 8), True),
    ({"norm": "l2", "eps": 4}, False, (1, 8, 8), True),  # half the diagonal: the centre
    ({"norm": "l2", "eps": 3.99}, False, (1, 8, 8), False),
    ({"norm": "l2", "eps": 64}, False, None, False),  # shape unknown: decided when the job runs
    ({"eps": 8}, True, (4, 1, 1), False),  # feature vectors: no bounds by default
    ({"eps": 4.9, "domain": {"lower": [0], "upper": [10]}}, True, (4, 1, 1), False),
    ({"eps": 5, "domain": {"lower": [0], "upper": [10]}}, True, (4, 1, 1), True),
    ({"eps": 10, "domain": {"lower": [0], "upper": [10]}}, True, (4, 1, 1), True),
])
def test_a_radius_covering_the_domain_is_refused(attack: dict, features: bool,
                                                  shape: tuple[int, ...] | None,
                                                  refused: bool) -> None:
    spec = AttackSpec.model_validate(attack)
    if not refused:
        check_attack_radius(spec, feature_vectors=features, input_shape=shape)
        return
    with pytest.raises(ConfigError, match=r"could move (any input to any other|every input to "
                                          r"the same one)") as error:
        check_attack_radius(spec, feature_vectors=features, input_shape=shape)
    assert error.value.field == "attack.eps"


@pytest.mark.parametrize(("eps", "reach"), [
    (0.6, "every input to the same one, the domain's centre"),
    (1.0, "any input to any other"),
])
def test_the_refusal_says_what_the_radius_lets_the_attack_do(eps: float, reach: str) -> None:
    spec = AttackSpec.model_validate({"eps": eps})
    with pytest.raises(ConfigError) as error:
        check_attack_radius(spec, feature_vectors=False, input_shape=(1, 8, 8))
    assert f"could move {reach}" in str(error.value)
    assert "half the L∞ diameter of attack.domain (1, half 0.5)" in str(error.value)


def test_a_run_with_eps_in_grey_levels_is_refused_before_any_stage(
        digits_checkpoint_path: Path, digits_job_config: dict) -> None:
    # Before: eps 8 (meant as 8/255) ran to the end; every robust accuracy was about 0.
    digits_job_config["attack"] = {"eps": 8, "step_size": 2, "steps": 2}
    with pytest.raises(ConfigError, match=r"8 grey levels is eps = 8/255 = 0\.03137") as error:
        prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    assert error.value.field == "attack.eps"
