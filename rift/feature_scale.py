"""Whether ``attack.eps`` and ``attack.domain`` fit the scale of a feature-vector dataset.

Images are read in [0, 1] whatever their dtype (uint8 pixels are divided by 255), so an image
radius such as 8/255 always means 8 grey levels. Feature vectors, an npz ``x`` of shape (N, F),
are used in their own units: a user who saves flattened 8-bit images as features
(``fetch_openml("mnist_784")``'s 0–255 floats, ``load_digits().data``'s 0–16) and keeps the
image radius attacks inputs 255 (or 16) times wider than the radius assumes. PGD then moves no
feature visibly, every robust accuracy is about the clean one, and MRC and the α rule judge
almost no attack, without an error. :func:`feature_scale_problem` names that case: an ``eps``
below 1/255 of the features' typical range (the median range, over the training split, of the
features that vary; a constant feature says nothing of the scale). The same bound serves L2,
whose ball of that radius cannot move even one feature farther. Not applied to images, whose
scale is fixed.

A warning, not an error: values alone cannot tell a deliberately tiny radius from a scale
mix-up.

:func:`unbounded_unit_features` names the other side: ``attack.domain: "auto"`` keeps feature
vectors unbounded, so features that all lie in [0, 1] (flattened [0, 1] images, binary or
min-max scaled columns) are pushed past 0 and 1, where the same values stored as images are
kept in the box: the digits θ_AT fed its 8×8 test images as 64 features scored PGD-10 robust
59.0 % unbounded against 65.9 % in [0, 1], with no word.
"""

from __future__ import annotations

import torch

from rift.config import AttackSpec

#: The radius is flagged below this fraction of the features' typical range (one 8-bit level).
SCALE_LEVELS = 255


def feature_scale_problem(spec: AttackSpec, features: torch.Tensor) -> str | None:
    """The warning text when ``spec.eps`` is below 1/255 of the typical range of ``features``
    (N, F, 1, 1) (or (N, F)), else None (``eps`` 0 has its own warning)."""
    if spec.eps == 0 or features.shape[0] < 2:
        return None
    flat = features.reshape(features.shape[0], -1)
    ranges = (flat.amax(0).double() - flat.amin(0).double())
    varying = ranges[ranges > 0]
    if varying.numel() == 0:
        return None
    typical = float(varying.median())
    if spec.eps * SCALE_LEVELS >= typical:
        return None
    low, high = float(flat.min()), float(flat.max())
    message = (
        f"attack.eps {spec.eps:.4g} is less than 1/{SCALE_LEVELS} of the features' typical "
        f"range ({typical:.4g}, the median range of the {varying.numel()} features that vary in "
        f"the training split; values {low:.4g} to {high:.4g}): eps is in the features' own "
        "units, so the attack moves no feature by more than a rounding of its range, every "
        "robust accuracy is about the clean one, and MRC and the α rule judge almost no attack; ")
    whole = bool(torch.equal(flat, flat.round()))
    if whole and low >= 0 and high <= 255:
        return message + (
            "these look like 8-bit pixel values: save the images as a uint8 array of shape "
            "(N, H, W) or (N, H, W, C) (read in [0, 1], where eps 8/255 means 8 grey levels), "
            "or divide the features by their largest value, or give attack.eps in their units")
    return message + ("standardise the features (eps is then in standard deviations) or give "
                      "attack.eps in their units")


def unbounded_unit_features(spec: AttackSpec, features: torch.Tensor) -> str | None:
    """The warning text when ``spec.domain`` is ``"auto"`` (no bounds for feature vectors) while
    every value of ``features`` lies in [0, 1] and some lie within ``eps`` of 0 or 1, where
    keeping them in [0, 1] would change the attack; else None. An explicit ``"none"`` is the
    user's choice and stays quiet."""
    if spec.domain != "auto" or spec.eps == 0 or features.numel() == 0:
        return None
    low, high = float(features.min()), float(features.max())
    if low < 0 or high > 1 or (low > spec.eps and high < 1 - spec.eps):
        return None
    return (
        f"every feature value lies in [0, 1] (training split: {low:.4g} to {high:.4g}), but "
        "attack.domain 'auto' keeps feature vectors unbounded, so PGD moves them past 0 and "
        "1 (flattened [0, 1] images saved as features are attacked outside the image box: the "
        "digits θ_AT's test images as 64 features scored PGD-10 robust 59.0 % unbounded, "
        "65.9 % kept in [0, 1]); if the features are pixels or otherwise bounded, set "
        "attack.domain 'unit' (or per-feature bounds, {\"lower\": [...], \"upper\": [...]}); "
        "set attack.domain 'none' to attack them unbounded without this warning")
