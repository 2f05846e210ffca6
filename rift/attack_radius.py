"""Whether an attack's radius means anything for the inputs it perturbs.

``attack.eps`` is in input units, and the attack keeps every example inside ``attack.domain``.
A radius of half the domain's diameter already lets the attack move every input to one and the
same point, the domain's centre (an L∞ ball of radius 0.5 around any [0, 1] image holds the
mid-grey image; a box's centre is half its diagonal from every corner, so the same holds in L2):
every "robust accuracy" is then at most the share of the one class the model gives that point,
MRC scores modules on it, and the α rule compares nothing, all without an error. A radius as wide
as the domain itself (``eps: 8`` meant as 8/255 on [0, 1] images) lets it move any input to any
other. Both are refused: the bound is half the domain's diameter in the attack's norm (until
2026-11-27 it was the whole diameter, and the digits θ_AT at eps 0.8 reported robust 10.9 %).

Imports no torch (the API refuses such a job at creation with the same rule the library applies
when a run is prepared).
"""

from __future__ import annotations

import math

from rift.config import AttackSpec, DomainBounds
from rift.errors import ConfigError

Bounds = tuple[tuple[float, ...], tuple[float, ...]]
#: Pixel values of 8-bit images: the scale an L∞ radius given in grey levels was meant in.
GREY_LEVELS = 255


def resolve_domain(domain: str | DomainBounds, *, feature_vectors: bool) -> Bounds | None:
    """``AttackSpec.domain`` as (lower, upper) bounds (one, or one per channel/feature), or None
    for no bounds. ``"auto"`` is [0, 1] for images and no bounds for ``feature_vectors``."""
    if isinstance(domain, DomainBounds):
        return tuple(domain.lower), tuple(domain.upper)
    if domain == "none" or (domain == "auto" and feature_vectors):
        return None
    return (0.0,), (1.0,)


def domain_diameter(bounds: Bounds, norm: str, input_shape: tuple[int, ...] | None) -> float | None:
    """The largest distance, in ``norm``, between two inputs of the domain ``bounds``.

    ``input_shape`` is one example's (C, H, W) (feature vectors: (F, 1, 1)); the bounds apply
    per channel (or one to all). L∞ needs no shape; L2 does, and is None without one.
    """
    widths = [upper - lower for lower, upper in zip(*bounds, strict=True)]
    if norm == "linf":
        return max(widths)
    if input_shape is None:
        return None
    channels, values_per_channel = input_shape[0], math.prod(input_shape[1:])
    if len(widths) == 1:
        widths = widths * channels
    return math.sqrt(sum(width * width for width in widths) * values_per_channel)


def check_attack_radius(spec: AttackSpec, *, feature_vectors: bool,
                        input_shape: tuple[int, ...] | None) -> None:
    """Refuse an ``attack.eps`` of at least half the domain's diameter (see the module
    docstring). ``input_shape`` as in :func:`domain_diameter` (None: unknown; only L∞ is then
    checked).

    Raises:
        ConfigError: (field ``attack.eps``) naming eps, the norm, the diameter and its half; for
            [0, 1] images under L∞, also eps / 255 (the radius meant in grey levels).
    """
    bounds = resolve_domain(spec.domain, feature_vectors=feature_vectors)
    if bounds is None:
        return
    diameter = domain_diameter(bounds, spec.norm, input_shape)
    if diameter is None or spec.eps < diameter / 2:
        return
    norm = "L∞" if spec.norm == "linf" else "L2"
    hint = ""
    if bounds == ((0.0,), (1.0,)) and spec.norm == "linf":
        hint = (f"; eps is in input units, and images are read in [0, 1]: {spec.eps:g} grey "
                f"levels is eps = {spec.eps:g}/{GREY_LEVELS} = {spec.eps / GREY_LEVELS:.4g}")
    reach = ("any input to any other" if spec.eps >= diameter else
             "every input to the same one, the domain's centre")
    raise ConfigError(
        f"attack.eps {spec.eps:g} is at least half the {norm} diameter of attack.domain "
        f"({diameter:.4g}, half {diameter / 2:.4g}): the attack could move {reach}, so robust "
        f"accuracy would measure nothing{hint}", field="attack.eps")
