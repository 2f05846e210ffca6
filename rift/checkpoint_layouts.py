"""Checkpoints whose network sits inside a training wrapper: the wrapper's attribute prefix on
every key, an input normaliser's buffers beside the network, and a second reference to the same
network under another prefix.

Adversarial-training code bases save the module they trained, which is often not the bare
network: the Madry lab's ``robustness`` library saves an ``AttackerModel``
(``normalizer.new_mean``/``new_std``, ``model.*``, and the attacker's references
``attacker.normalize.*``/``attacker.model.*`` to the same tensors); PyTorch Lightning saves the
LightningModule (``model.*`` or whatever its attribute is); RobustBench-style models keep
``mu``/``sigma`` buffers, or are an ``nn.Sequential`` of a normaliser and the network (``0.mean``,
``0.std``, ``1.*``); PyTorch's own EMA and SWA wrapper (``torch.optim.swa_utils.AveragedModel``)
saves the network under ``module.`` beside its update counter ``n_averaged``. The built-in
architectures apply ``architecture.mean/std`` themselves from buffers outside their state dict
(``rift.models.normalization``), so none of these keys has a place in the model.

:func:`fit_layout` recognises such a file only when it is unambiguous: the keys under one prefix
are exactly the model's (names and shapes; a missing ``num_batches_tracked`` allowed), and every
other key is either a normaliser pair (see :data:`NORMALIZER_PAIRS`), an ``AveragedModel``'s
counter beside them (:data:`AVERAGING_COUNTER`) or an equal copy of those weights under another
prefix. A normaliser's values must then equal what the model applies
(:func:`check_normalizers`: ``architecture.mean/std``, or the builder's default when unset,
ImageNet's for torchvision models): the network was trained on inputs normalised by them, and
dropping them or applying them twice would tune a model fed inputs it never saw. Two different
networks under two prefixes are refused naming them. Anything else is left to the strict key
check (``rift.checkpoints.check_compatible``), whose error lists the keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rift.checkpoint_format import NORMALIZER_PAIRS
from rift.config import NAMED_NORMALIZATIONS
from rift.errors import CheckpointMismatchError

#: Normaliser values closer than this to the configured ones (relative above 1) count as equal:
#: float32 storage of the published constants, and the 4 digits they are usually written with.
TOLERANCE = 5e-4
_OPTIONAL_SUFFIX = "num_batches_tracked"
#: ``torch.optim.swa_utils.AveragedModel``'s count of averaged updates, a one-value buffer saved
#: beside the network it wraps (``module.*``; ``module.`` is stripped on reading): bookkeeping of
#: the averaging, no weight of the network. It was refused as "1 unexpected key(s): n_averaged"
#: with "check 'architecture.name'", PyTorch's own EMA of the right network included.
AVERAGING_COUNTER = "n_averaged"
_AVERAGED_MODULE = "module."


@dataclass(frozen=True)
class Normalizer:
    """An input normaliser found in a checkpoint: its two keys and values (per channel; None
    where the tensors carry no values, on the meta device)."""

    mean_key: str
    std_key: str
    mean: list[float] | None
    std: list[float] | None
    #: The stored float types of the two tensors: the values the model applies are rounded to
    #: them before they are compared (a bf16 normaliser holds 0.4914 as 0.4922).
    mean_dtype: torch.dtype = torch.float64
    std_dtype: torch.dtype = torch.float64


@dataclass(frozen=True)
class FittedLayout:
    """The model's weights taken out of a wrapper's layout, and what was left out."""

    state_dict: dict[str, Tensor]
    prefix: str
    copies: list[str] = field(default_factory=list)
    normalizers: list[Normalizer] = field(default_factory=list)
    #: ``AveragedModel`` counters left out (:data:`AVERAGING_COUNTER`).
    counters: list[str] = field(default_factory=list)

    def note(self) -> str:
        """One sentence saying which keys were used and which left out, for a run's events."""
        parts = [f"the network's weights were read under the prefix {self.prefix!r}"
                 if self.prefix else "the network's weights were read at the top level"]
        if self.copies:
            parts.append("equal copies under " + ", ".join(repr(c) for c in self.copies)
                         + " were left out")
        if self.normalizers:
            keys = ", ".join(f"{n.mean_key}/{n.std_key}" for n in self.normalizers)
            parts.append(f"the input normaliser ({keys}) equals the one the model applies "
                         "itself (architecture.mean/std), so it was left out")
        if self.counters:
            parts.append("the update counter of torch.optim.swa_utils.AveragedModel ("
                         + ", ".join(self.counters) + ") was left out")
        return "; ".join(parts)


def _model_fits(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> bool:
    return all((key in state and tuple(state[key].shape) == tuple(value.shape))
               or (key not in state and key.endswith(_OPTIONAL_SUFFIX))
               for key, value in expected.items())


def _under(state: Mapping[str, Tensor], prefix: str, expected: Mapping[str, Tensor]
           ) -> dict[str, Tensor]:
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and key[len(prefix):] in expected}


def _prefixes(state: Mapping[str, Tensor], anchor: str) -> list[str]:
    """Every prefix ``p`` (ending in a dot, or empty) under which ``state`` holds ``anchor``,
    shortest first."""
    found = [key[: len(key) - len(anchor)] for key in state
             if key == anchor or key.endswith("." + anchor)]
    return sorted(found, key=len)


def _values(tensor: Tensor) -> list[float] | None:
    if tensor.is_meta:
        return None
    return [float(v) for v in tensor.detach().double().flatten().tolist()]


def _normalizers(rest: Mapping[str, Tensor], channels: int | None) -> tuple[list[Normalizer],
                                                                           list[str]]:
    """The normaliser pairs among ``rest`` and the keys that are none."""
    found: list[Normalizer] = []
    used: set[str] = set()
    for key in rest:
        module, _, leaf = key.rpartition(".")
        for mean_name, std_name in NORMALIZER_PAIRS:
            if leaf != mean_name:
                continue
            std_key = f"{module}.{std_name}" if module else std_name
            std = rest.get(std_key)
            mean = rest[key]
            if (std is None or mean.numel() != std.numel() or mean.numel() == 0
                    or not mean.is_floating_point() or not std.is_floating_point()
                    or (channels is not None and mean.numel() not in (1, channels))
                    or mean.numel() > max(channels or 0, 4)):
                continue
            found.append(Normalizer(key, std_key, _values(mean), _values(std), mean.dtype,
                                    std.dtype))
            used.update((key, std_key))
    return found, [key for key in rest if key not in used]


def _averaging_counters(rest: Sequence[str], state: Mapping[str, Tensor], prefix: str
                        ) -> tuple[list[str], list[str]]:
    """The ``AveragedModel`` counters among ``rest`` and the keys that are none: a one-value
    ``n_averaged`` beside the network read under ``prefix``, i.e. at the level of the
    ``AveragedModel`` whose ``module.`` holds it (``module.`` itself is stripped on reading, so
    a top-level counter goes with an unprefixed network)."""
    parent = prefix.removesuffix(_AVERAGED_MODULE) if prefix.endswith(_AVERAGED_MODULE) else None
    owners = {prefix} if not prefix else set() if parent is None else {parent}
    counters = [key for key in rest if state[key].numel() == 1
                and any(key == owner + AVERAGING_COUNTER for owner in owners)]
    return counters, [key for key in rest if key not in counters]


@dataclass(frozen=True)
class _Values:
    """How two tensors of ``state`` are compared: by their values; where either has none (the
    meta device: job creation's fit check), by their digests (``rift.tensor_digest``) when both
    are known, else taken as equal (only their shapes are known), the keys then added to
    ``unknown``."""

    state: Mapping[str, Tensor]
    digests: Mapping[str, str]
    unknown: set[str] | None

    def equal(self, key_a: str, key_b: str) -> bool:
        a, b = self.state[key_a], self.state[key_b]
        if a.shape != b.shape:
            return False
        if not (a.is_meta or b.is_meta):
            return torch.equal(a, b)
        digest_a, digest_b = self.digests.get(key_a), self.digests.get(key_b)
        if digest_a is not None and digest_b is not None:
            return digest_a == digest_b
        if self.unknown is not None:
            self.unknown.update(key for key, digest in ((key_a, digest_a), (key_b, digest_b))
                                if digest is None)
        return True


def _equal(values: _Values, prefix_a: str, keys_a: Iterable[str], prefix_b: str,
           keys_b: Iterable[str]) -> bool:
    """Whether the keys under ``prefix_a`` and ``prefix_b`` (relative to them) are the same
    and hold equal tensors."""
    keys = set(keys_a)
    return keys == set(keys_b) and all(values.equal(prefix_a + key, prefix_b + key)
                                       for key in keys)


def _copies(values: _Values, rest: Mapping[str, Tensor], prefix: str,
            weights: Mapping[str, Tensor], anchor: str) -> tuple[list[str], list[str]]:
    """Prefixes under which ``rest`` holds the same keys as ``weights`` (read under ``prefix``)
    with equal values (the attacker's reference to the network), and the keys that are no such
    copy."""
    copies: list[str] = []
    left = dict(rest)
    for other in _prefixes(rest, anchor):
        copy = [key[len(other):] for key in rest if key.startswith(other)]
        if not _equal(values, other, copy, prefix, weights):
            continue
        copies.append(other)
        for key in copy:
            left.pop(other + key, None)
    return copies, list(left)


def fit_layout(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], *,
               channels: int | None = None, digests: Mapping[str, str] | None = None,
               unknown: set[str] | None = None) -> FittedLayout | None:
    """``state`` taken out of a training wrapper's layout for a model whose ``state_dict()``
    is ``expected`` (see the module docstring), or None when ``state`` needs no such reading
    (it fits as it is) or is no layout recognised here. ``channels``: the model's input
    channels, which a normaliser's buffers must have (or 1); None: any up to 4.

    Tensors without values (the meta device) are compared by ``digests`` (key of ``state`` →
    ``rift.tensor_digest`` digest) where both are given; otherwise they count as equal, and
    their keys are added to ``unknown``: an answer that read them so holds only if they are.

    Raises:
        CheckpointMismatchError: several prefixes each hold all of the model's keys, with
            different values, and nothing else tells which network to take; or one prefix
            (not the empty one) holds them beside other keys, which are named.
    """
    if _model_fits(state, expected) and all(key in expected for key in state):
        return None
    anchor = next((key for key in expected if not key.endswith(_OPTIONAL_SUFFIX)), None)
    if anchor is None:
        return None
    values = _Values(state, digests or {}, unknown)
    fitting: list[str] = []
    networks: list[tuple[str, dict[str, Tensor]]] = []  # different ones only
    for prefix in _prefixes(state, anchor):
        weights = _under(state, prefix, expected)
        if not _model_fits(weights, expected):
            continue
        fitting.append(prefix)
        if not any(_equal(values, prefix, weights, other_prefix, other)
                   for other_prefix, other in networks):
            networks.append((prefix, weights))
        rest = {key: value for key, value in state.items()
                if not (key.startswith(prefix) and key[len(prefix):] in expected)}
        copies, left = _copies(values, rest, prefix, weights, anchor)
        normalizers, left = _normalizers({key: rest[key] for key in left}, channels)
        counters, left = _averaging_counters(left, state, prefix)
        if left:
            continue
        return FittedLayout(weights, prefix, copies, normalizers, counters)
    others = {key: value for key, value in state.items()
              if not any(key.startswith(prefix) and key[len(prefix):] in expected
                         for prefix in fitting)}
    if len(networks) > 1 and not _normalizers(others, channels)[1]:
        # A LightningModule holding a model and its EMA, a student and its teacher (and nothing
        # else): taking the first would tune weights the user may not have meant.
        shown = ", ".join(repr(prefix) for prefix, _ in networks)
        first = networks[0][0]
        raise CheckpointMismatchError(
            f"the checkpoint holds {len(networks)} networks of this architecture with different "
            f"values, under the key prefixes {shown} (a model and its EMA, a student and its "
            "teacher): which to tune cannot be told from the file; save the one you mean on "
            f"its own, e.g. {{key.removeprefix({first!r}): value for key, value in "
            f"state_dict.items() if key.startswith({first!r})}}")
    extra = _normalizers(others, channels)[1]
    if len(networks) == 1 and networks[0][0] and extra:
        # The network is there, under a wrapper's prefix, beside keys of something else (a
        # LightningModule's loss with a class-weight buffer): listing 2n keys as missing and
        # unexpected hid that.
        prefix = networks[0][0]
        raise CheckpointMismatchError(
            f"the keys under the prefix {prefix!r} are exactly the architecture's, but the "
            f"checkpoint also holds {len(extra)} key(s) that are neither copies of them nor an "
            f"input normaliser: {', '.join(extra[:8])}{', …' if len(extra) > 8 else ''}; save "
            f"the network's weights alone, e.g. {{key.removeprefix({prefix!r}): value for key, "
            f"value in state_dict.items() if key.startswith({prefix!r})}}")
    return None


def _per_channel(values: Sequence[float] | None, default: float, channels: int) -> list[float]:
    if values is None:
        return [default] * channels
    return [float(values[0])] * channels if len(values) == 1 else [float(v) for v in values]


def _stored_as(values: list[float], dtype: torch.dtype) -> list[float]:
    """``values`` as a tensor of ``dtype`` holds them."""
    return [float(v) for v in torch.tensor(values, dtype=torch.float64).to(dtype).double()]


def _held(normalizer: Normalizer, mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """``mean`` and ``std`` as ``normalizer``'s tensors would hold them."""
    return [*_stored_as(list(mean), normalizer.mean_dtype),
            *_stored_as(list(std), normalizer.std_dtype)]


def _close(saved: Sequence[float], wanted: Sequence[float], tolerance: float) -> bool:
    return len(saved) == len(wanted) and all(abs(a - b) <= tolerance * max(1.0, abs(b))
                                             for a, b in zip(saved, wanted, strict=True))


def _shown(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.6g}" for value in values) + "]"


def check_normalizers(layout: FittedLayout, mean: Sequence[float] | None,
                      std: Sequence[float] | None, *, configured: bool = True) -> None:
    """Require every normaliser of ``layout`` to equal the ``mean``/``std`` the model applies
    (None: no normalisation, i.e. mean 0 and std 1) within :data:`TOLERANCE`, once rounded to
    the normaliser's float type (bf16's, say); normalisers without values (meta tensors)
    are not compared. ``configured``: whether ``architecture.mean/std`` were set (else the
    values are the model's default, e.g. a torchvision model's ImageNet statistics), for the
    message.

    Raises:
        CheckpointMismatchError: naming the normaliser's keys, its values, the configured ones
            and the settings that give the checkpoint's.
    """
    for normalizer in layout.normalizers:
        if normalizer.mean is None or normalizer.std is None:
            continue
        channels = len(normalizer.mean)
        if mean is not None and len(mean) not in (1, channels):
            channels = len(mean)
        saved_mean = _per_channel(normalizer.mean, 0.0, channels)
        saved_std = _per_channel(normalizer.std, 1.0, channels)
        want_mean = _per_channel(mean, 0.0, channels)
        want_std = _per_channel(std, 1.0, channels)
        # What the model applies, rounded as the normaliser's type would hold it: that type's
        # rounding is no difference, but its spacing near 1 (bf16's 0.0078) is no tolerance
        # for values below 1, where it let a std 1 % off pass as equal.
        tolerance = TOLERANCE
        if _close([*saved_mean, *saved_std], _held(normalizer, want_mean, want_std), tolerance):
            continue
        named = next((f"set architecture.normalization to {name!r}, or "
                      for name, (named_mean, named_std) in NAMED_NORMALIZATIONS.items()
                      if _close([*saved_mean, *saved_std],
                                _held(normalizer, named_mean, named_std), tolerance)),
                     "")
        if _close([*want_mean, *want_std], [0.0] * channels + [1.0] * channels, TOLERANCE):
            applied = "the model applies none (architecture.mean/std are not set)"
        else:
            applied = (f"the model applies mean {_shown(want_mean)}, std {_shown(want_std)} ("
                       + ("architecture.mean/std" if configured else
                          "its default: architecture.mean/std are not set") + ")")
        raise CheckpointMismatchError(
            f"the checkpoint holds an input normaliser ({normalizer.mean_key} "
            f"{_shown(saved_mean)}, {normalizer.std_key} {_shown(saved_std)}): the network was "
            f"trained on inputs normalised by it, but {applied}: {named}set "
            f"architecture.mean to {_shown(saved_mean)} and architecture.std to "
            f"{_shown(saved_std)} (without architecture.normalization); the model applies them "
            "itself, so the checkpoint's normaliser is then left out")
