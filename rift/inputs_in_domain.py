"""Whether clean inputs lie inside an attack's domain, judged from each channel's (feature's)
smallest and largest value.

Every attack step clamps x + δ into ``attack.domain``, so a clean input outside it would be moved
there by more than ``eps`` and the "adversarial" example would not be near it: such a job is
refused. One rule and one wording for both places that judge it: the library on the loaded
tensors (``rift.attacks.PGD.check_inputs``, when a run is prepared) and job creation on the range
an upload's validation recorded (``api.job_requests``). Values and bounds are compared in float32,
as the attack clamps (a float32 0.1 fits an upper bound written as 0.1); uint8 pixels are given
as value / 255. One bound applies to every channel, else bound ``c`` to channel ``c``.

:func:`image_domain_problem` names the other side for images, which are always read in
[0, 1]: a domain reaching past 0 or 1 (bounds written in the normalised units the model sees
after its own ``(x - mean) / std``, or ``"none"``) lets the attack make inputs no image holds.

Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rift.attack_radius import Bounds, resolve_domain
from rift.config import AttackSpec
from rift.errors import ConfigError

#: Channels/features a message names before "…".
SHOWN_CHANNELS = 4


@dataclass(frozen=True)
class OutsideDomain:
    """A channel (feature) whose values ``low``..``high`` leave its bounds ``lower``..``upper``
    (float32 values). ``channel`` None: the range is of every channel together (only that is
    known), and the bounds are the loosest of all channels', so some channel is surely outside."""

    channel: int | None
    low: float
    high: float
    lower: float
    upper: float

    def to_json(self) -> dict[str, float | int | None]:
        return {"channel": self.channel, "min": self.low, "max": self.high,
                "lower": self.lower, "upper": self.upper}


def channels_outside_domain(bounds: Bounds, low: Sequence[float], high: Sequence[float], *,
                            together: bool = False) -> list[OutsideDomain]:
    """The channels whose range ``low[c]``..``high[c]`` leaves ``bounds`` (1 bound or one per
    channel; another count is the caller's to refuse: nothing is returned).

    ``together``: ``low`` and ``high`` hold one range, of every channel at once (a dataset whose
    per-feature ranges were not recorded). With one bound this is exact; with one per channel, a
    value below every lower bound (above every upper bound) is outside whichever channel holds
    it, and anything else cannot be told apart from data inside its bounds (none returned).
    """
    lower = np.asarray(bounds[0], dtype=np.float32)
    upper = np.asarray(bounds[1], dtype=np.float32)
    low32 = np.asarray(low, dtype=np.float32)
    high32 = np.asarray(high, dtype=np.float32)
    if together:
        lower, upper = lower.min(keepdims=True), upper.max(keepdims=True)
    elif lower.size not in (1, low32.size):
        return []
    lower, upper = (np.broadcast_to(side, low32.shape) for side in (lower, upper))
    outside = np.flatnonzero((low32 < lower) | (high32 > upper))
    return [OutsideDomain(None if together else int(c), float(low32[c]), float(high32[c]),
                          float(lower[c]), float(upper[c])) for c in outside]


def outside_domain_message(what: str, outside: Sequence[OutsideDomain]) -> str:
    """The refusal of inputs (``what``: "train inputs", "inputs of dataset d1") ``outside`` the
    domain: which channels, their range against their bounds, and the fix."""
    shown = ", ".join(
        f"{_channel_name(part.channel)}: [{part.low:.4g}, {part.high:.4g}] vs "
        f"[{part.lower:.4g}, {part.upper:.4g}]" for part in outside[:SHOWN_CHANNELS])
    more = ", …" if len(outside) > SHOWN_CHANNELS else ""
    return (f"the {what} lie outside attack.domain ({shown}{more}); every attack step clamps "
            "into the domain, which would move clean inputs by more than eps. Widen the bounds "
            "or use 'none'")


def _channel_name(channel: int | None) -> str:
    return "every channel/feature together" if channel is None else f"channel/feature {channel}"


def check_inputs_in_domain(bounds: Bounds, low: Sequence[float], high: Sequence[float],
                           what: str) -> None:
    """Refuse inputs whose channels' ranges (``low``/``high``, one per channel) leave ``bounds``.

    Raises:
        ConfigError: (field ``attack.domain``) :func:`outside_domain_message`.
    """
    outside = channels_outside_domain(bounds, low, high)
    if outside:
        raise ConfigError(outside_domain_message(what, outside), field="attack.domain")


def image_domain_problem(spec: AttackSpec) -> str | None:
    """The warning text when ``spec.domain`` lets PGD move image values outside [0, 1] (a bound
    below 0 or above 1, or ``"none"``), else None. Images are read in [0, 1] (8-bit pixels
    / 255) before the model normalises them, so such points are no image: measured on the
    digits θ_AT, PGD-10 robust 59.0 % with MNIST's normalised range [-0.4242, 2.8215] as the
    bounds, as with none, against 65.9 % in [0, 1], with no word. A warning: the bounds are the
    user's explicit choice."""
    bounds = resolve_domain(spec.domain, feature_vectors=False)
    if bounds is None:
        allowed = "attack.domain 'none' lets PGD move image values anywhere"
    else:
        lower, upper = min(bounds[0]), max(bounds[1])
        if lower >= 0 and upper <= 1:
            return None
        allowed = (f"attack.domain's bounds (from {lower:.4g} to {upper:.4g}) let PGD move "
                   "image values outside [0, 1]")
    return (
        f"{allowed}, but images are read in [0, 1] (8-bit pixels divided by 255) and normalised "
        "by the model afterwards, so the attack makes inputs no image holds and the robust "
        "accuracies are not those of images (the digits θ_AT: PGD-10 robust 59.0 % with "
        "MNIST's normalised range as the bounds, 65.9 % in [0, 1]); give the bounds in [0, 1] "
        "units (attack.domain 'unit', the default for images), not in normalised units")
