"""Whether a model applies the ``architecture.mean/std`` (or ``normalization``) it was built with.

The built-in and torchvision architectures apply them through RiFT's input buffers
(:func:`rift.models.normalization.applied_normalization` reads them back). An installed builder
receives ``mean`` and ``std`` as keyword arguments and is trusted to apply them, yet
``def build(*, num_classes, in_channels, mean=None, std=None): return MyNet(num_classes)``
drops them. Measured: the digits θ_AT under such a builder with ``normalization: "mnist"`` ran
on raw [0, 1] inputs (clean 92.0 % on 200 test examples, where the built-in ``small_cnn``, which
applies it, scores 77.5 %) while the run's config, result and job records said MNIST's
normalisation was applied, and the preflight's normalisation comparison, which assumes the
model applies the configured mean/std, compared the wrong inputs, without a word.
:func:`refuse_ignored_normalization` builds the network with and without them from one seed and
refuses the run when the two are the same function on a probe.
"""

from __future__ import annotations

import torch
from torch import nn

from rift.config import ArchitectureSpec
from rift.errors import ConfigError
from rift.model_state import eval_mode
from rift.models.normalization import MEAN_BUFFER, applied_normalization
from rift.models.registry import build_model

# The seed both copies are built from: a builder drawing its initial weights from torch's
# generator gives the same weights twice, so only mean/std can make the copies differ.
_BUILD_SEED = 0
#: Examples of the probe both copies are run on.
PROBE_EXAMPLES = 2


def refuse_ignored_normalization(model: nn.Module, spec: ArchitectureSpec,
                                 image_shape: tuple[int, int, int]) -> None:
    """Refuse ``spec`` when it sets ``mean``/``std`` and ``model`` (built from it) holds no
    RiFT input buffers, yet a copy built without them computes the same outputs on a random
    probe of ``image_shape`` (C, H, W). Nothing is decided (no error) where the builder is not
    reproducible from torch's seed, keeps mean/std in its state dict, or fails on the probe:
    the other checks report what fails. The caller's random state is left as it was.

    Raises:
        ConfigError: (field ``architecture.normalization``, else ``architecture.mean``).
    """
    if spec.mean is None or spec.std is None:
        return
    refuse_unset_input_buffers(model, spec)
    applied = applied_normalization(model)
    if applied is not None:
        # RiFT's buffers (a builder reusing a built-in network, or registering them itself):
        # their values say what forward applies.
        if _same_values(applied[0], spec.mean) and _same_values(applied[1], spec.std):
            return
        _refuse(spec, f"its input buffers hold mean {applied[0]}, std {applied[1]}")
    plain_spec = spec.model_copy(update={"mean": None, "std": None, "normalization": None})
    channels, height, width = image_shape
    try:
        with torch.random.fork_rng(devices=[]):
            given, plain = (_seeded_build(each, channels, height, width)
                            for each in (spec, plain_spec))
            if not _same_state(given, plain):
                return  # mean/std kept in the state dict (or weights not reproducible)
            probe = torch.rand(PROBE_EXAMPLES, *image_shape,
                               generator=torch.Generator().manual_seed(_BUILD_SEED))
            with eval_mode(given), eval_mode(plain), torch.no_grad():
                same = torch.equal(given(probe), plain(probe))
    except Exception:  # a builder or forward failing here is reported by the other checks
        return
    if same:
        _refuse(spec, "built with it and without it, the network computes the same outputs")


def _same_values(applied: list[float], given: list[float]) -> bool:
    # One given value stands for every channel; buffers hold float32 roundings of the settings.
    expanded = given * len(applied) if len(given) == 1 else given
    return len(expanded) == len(applied) and all(
        abs(a - g) <= 1e-6 * max(1.0, abs(g)) for a, g in zip(applied, expanded, strict=True))


def _refuse(spec: ArchitectureSpec, evidence: str) -> None:
    setting = (f"architecture.normalization {spec.normalization!r}"
               if spec.normalization is not None else "architecture.mean/std")
    raise ConfigError(
        f"architecture {spec.name!r} ignores the input normalisation it is given ({setting}: "
        f"mean {spec.mean}, std {spec.std}): {evidence}, so the run would feed it inputs "
        "normalised otherwise while its records say this normalisation was applied. An "
        "installed builder receives mean and std as keyword arguments: apply them at the start "
        f"of forward ((x - mean) / std), or leave {setting} out if the network normalises its "
        "inputs its own way",
        field=("architecture.normalization" if spec.normalization is not None
               else "architecture.mean"))


def refuse_unset_input_buffers(model: nn.Module, spec: ArchitectureSpec) -> None:
    """Refuse ``spec`` when it sets ``mean``/``std`` and ``model`` holds RiFT's input buffers
    unset (a builder reusing a built-in network without passing them on). Needs no values, so
    the fit check at ``POST /v1/jobs`` (a meta model) refuses it as the job would; a network
    without these buffers needs :func:`refuse_ignored_normalization`'s forward passes.

    Raises:
        ConfigError: as :func:`refuse_ignored_normalization`.
    """
    if spec.mean is not None and MEAN_BUFFER in model._buffers and \
            model._buffers[MEAN_BUFFER] is None:
        _refuse(spec, "its input buffers (input_mean, input_std) are unset, so it applies none")


def _seeded_build(spec: ArchitectureSpec, channels: int, height: int, width: int) -> nn.Module:
    torch.manual_seed(_BUILD_SEED)
    return build_model(spec, in_channels=channels, image_size=height, image_width=width)


def _same_state(first: nn.Module, second: nn.Module) -> bool:
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)
