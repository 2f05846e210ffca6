"""Whether θ_AT does clearly better on the job's data with another input normalisation than the
one configured (``architecture.mean/std``).

A checkpoint trained on normalised inputs but run on [0, 1] images (or the reverse) is often
well above chance (measured on the digits: a ``small_cnn`` trained with MNIST's mean/std and
run without scored 72.7 % instead of 91.4 %), so the preflight's chance bar passes it and every
stage then tunes a model that never saw such inputs. A model generally does best on inputs
shaped like its training inputs, so :func:`better_normalization` measures the clean accuracy
under a few usual normalisations besides the configured one, on the preflight's sample, and
reports the best when it is clearly better: at least :data:`MARGIN` points higher and with at
most :data:`ERROR_RATIO` of the configured errors (a paired comparison on the same examples).

Tried: none (inputs in [0, 1]), the sample's own per-channel mean and std, the named
normalisations with the data's channel count (``architecture.normalization``), the [0, 255]
pixel scale (mean 0, std 1/255) and the [-1, 1] scale (mean 0.5, std 0.5); for feature vectors
only none and the sample's own per-feature statistics. Limits: a normalisation outside that
list is not found (only a worse configured one is seen, when one of the list beats it); the
comparison assumes the model applies the configured mean/std as ``(x - mean) / std`` at its
input, as the built-in and torchvision architectures do (an installed builder ignoring them is
refused before, by :mod:`rift.models.normalization_applied`); below :data:`MIN_EXAMPLES`
examples the comparison is not made (one example would be worth more than a point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rift.config import NAMED_NORMALIZATIONS
from rift.data import ImageTensors, iterate_batches
from rift.device import autocast
from rift.model_state import eval_mode

#: Percentage points by which another normalisation must beat the configured one.
MARGIN = 10.0
#: ... while leaving at most this share of the configured one's errors.
ERROR_RATIO = 0.75
#: Fewer examples than this and the comparison is not made.
MIN_EXAMPLES = 100
#: Candidates within this many points of the best are named with it.
NEAR = 2.0
_PIXEL_STD = 1 / 255


@dataclass(frozen=True)
class Normalization:
    """One way to normalise the inputs: what it is and the setting that gives it."""

    name: str  # e.g. "architecture.normalization 'mnist'"
    setting: str  # e.g. "set architecture.normalization to 'mnist'"
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class NormalizationFinding:
    """``better``'s clean accuracy against the configured one's, in percent, on ``examples``."""

    configured: str
    configured_accuracy: float
    better: Normalization
    accuracy: float
    examples: int
    # Other candidates within NEAR points of the best, with their accuracies: similar
    # normalisations (CIFAR's and ImageNet's) score alike, so the best need not be the one.
    near: tuple[tuple[str, float], ...] = ()

    def sentence(self) -> str:
        close = "; ".join(f"{name} {accuracy:.1f}%" for name, accuracy in self.near)
        return (f"the checkpoint's clean accuracy on {self.examples} test examples is "
                f"{self.configured_accuracy:.1f}% with {self.configured}, but "
                f"{self.accuracy:.1f}% with {self.better.name} (mean "
                f"{_short(self.better.mean)}, std {_short(self.better.std)})"
                + (f" (close: {close})" if close else "")
                + ": it was likely trained with that input normalisation or a similar one; "
                f"{self.better.setting}, or check architecture.normalization/mean/std against "
                "the checkpoint's training")


def _short(values: Sequence[float]) -> str:
    shown = ", ".join(f"{value:.4g}" for value in values[:3])
    return f"[{shown}{', …' if len(values) > 3 else ''}]"


def _candidates(channels: int, feature_vectors: bool, data_mean: list[float],
                data_std: list[float]) -> list[Normalization]:
    """In the order ties are settled: a named setting before the sample's own statistics."""
    found = [Normalization("no normalisation",
                           "leave architecture.normalization and architecture.mean/std out",
                           [0.0] * channels, [1.0] * channels)]
    if not feature_vectors:
        found.extend(Normalization(f"architecture.normalization {name!r}",
                                   f"set architecture.normalization to {name!r}", list(mean),
                                   list(std))
                     for name, (mean, std) in NAMED_NORMALIZATIONS.items()
                     if len(mean) == channels)
        found.append(Normalization("the [0, 255] pixel scale",
                                   "set architecture.mean [0] and architecture.std [1/255]",
                                   [0.0] * channels, [_PIXEL_STD] * channels))
        # Normalize((0.5,) * 3, (0.5,) * 3): PyTorch's CIFAR tutorial, Hugging Face's ViT image
        # processors, GAN code. Without it the digits θ_AT trained so was told the sample's own
        # statistics (84.8 % on 256 test examples), not this (90.6 %).
        found.append(Normalization("the [-1, 1] scale (mean 0.5, std 0.5)",
                                   "set architecture.mean [0.5] and architecture.std [0.5]",
                                   [0.5] * channels, [0.5] * channels))
    found.append(Normalization(
        f"the data's own per-{'feature' if feature_vectors else 'channel'} statistics",
        "set architecture.mean/std to them", data_mean, data_std))
    return found


def _same(a: Normalization, mean: Sequence[float], std: Sequence[float]) -> bool:
    return all(abs(x - y) < 1e-6 for x, y in zip([*a.mean, *a.std], [*mean, *std], strict=True))


def better_normalization(model: nn.Module, sample: ImageTensors, *,
                         mean: Sequence[float] | None, std: Sequence[float] | None,
                         configured_accuracy: float, batch_size: int, device: torch.device,
                         precision: str = "fp32", bar: float | None = None
                         ) -> NormalizationFinding | None:
    """The best of the module docstring's normalisations when it beats the configured one
    (``mean``/``std``, None: none) by :data:`MARGIN` points and :data:`ERROR_RATIO`, or, with
    ``bar`` given, when it reaches ``bar`` percent (the preflight's, to explain a failure);
    else None. ``configured_accuracy``: the configured model's clean accuracy on ``sample``.
    Clean passes only, model mode restored."""
    if len(sample) < MIN_EXAMPLES:
        return None
    images = torch.cat([batch for batch, _ in iterate_batches(sample, batch_size,
                                                              device=device)])
    channels = images.shape[1]
    if mean is not None and len(mean) != channels:
        return None  # the model refused this already; nothing sensible to compare
    feature_vectors = images.shape[2:] == (1, 1)
    per_channel = images.transpose(0, 1).reshape(channels, -1).double()
    data_std = per_channel.std(1).clamp_min(1e-3)
    configured_mean = list(mean) if mean is not None else [0.0] * channels
    configured_std = list(std) if std is not None else [1.0] * channels
    candidates = [c for c in _candidates(channels, feature_vectors,
                                         per_channel.mean(1).tolist(), data_std.tolist())
                  if not _same(c, configured_mean, configured_std)]
    measured = [(_accuracy(model, sample, candidate, configured_mean, configured_std,
                           batch_size, device, precision), candidate)
                for candidate in candidates]
    if not measured:
        return None
    accuracy, candidate = max(measured, key=lambda pair: pair[0])  # the first of equals
    configured_errors = 100.0 - configured_accuracy
    clearly = (accuracy >= configured_accuracy + MARGIN
               and 100.0 - accuracy <= ERROR_RATIO * configured_errors)
    if not clearly and not (bar is not None and accuracy >= bar > configured_accuracy):
        return None
    configured = ("no normalisation" if mean is None else
                  f"the configured mean {_short(configured_mean)}, std {_short(configured_std)}")
    near = tuple((other.name, other_accuracy) for other_accuracy, other in measured
                 if other is not candidate and other_accuracy >= accuracy - NEAR)
    return NormalizationFinding(configured, configured_accuracy, candidate, accuracy,
                                len(sample), near)


def _accuracy(model: nn.Module, sample: ImageTensors, candidate: Normalization,
              mean: list[float], std: list[float], batch_size: int, device: torch.device,
              precision: str) -> float:
    """Clean accuracy (percent) of ``model``, which applies ``(x - mean) / std`` itself, when
    its inputs are normalised by ``candidate`` instead: it is fed ``(x - m') / s' · std + mean``
    so that its own normalisation yields ``(x - m') / s'``."""
    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    shift, scale = column(candidate.mean), column(candidate.std)
    own_mean, own_std = column(mean), column(std)
    correct = 0
    with eval_mode(model), torch.no_grad():
        for images, labels in iterate_batches(sample, batch_size, device=device):
            inputs = (images - shift) / scale * own_std + own_mean
            with autocast(images.device, precision):
                predictions = model(inputs).argmax(1)
            correct += int((predictions == labels).sum())
    return 100.0 * correct / len(sample)
