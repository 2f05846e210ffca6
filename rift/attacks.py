"""Projected gradient descent (Madry et al., 2018) in L∞ and L2, inside an input domain: [0, 1]
for images, per-feature bounds or no bounds for feature vectors (``AttackSpec.domain``).

The attack's arithmetic (the perturbation, its gradient and the projection) stays in fp32 even when
the model runs under bf16 autocast: a bf16 step of 2/255 on a pixel near 1.0 would round away. A
user's own float64 model is attacked in float64, and a float16 or bfloat16 one (``.half()``) in
fp32 for the same reason, its inputs cast to its dtype (:func:`rift.model_state.input_dtype`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rift.attack_radius import resolve_domain
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.config import AttackSpec
from rift.device import autocast
from rift.errors import ConfigError
from rift.inputs_in_domain import check_inputs_in_domain
from rift.model_state import frozen_except, input_dtype

_TINY = 1e-12


@dataclass(frozen=True)
class PGD:
    """PGD with the parameters named as in the paper: radius ``eps``, ``step_size`` (α), ``steps``.

    ``eps`` and ``step_size`` are in the units of [0, 1] images (8/255 is 8 grey levels).
    """

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    random_start: bool = True
    # (lower, upper) per channel/feature (one value: all), or None for no bounds.
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = ((0.0,), (1.0,))

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")

    @classmethod
    def from_spec(cls, spec: AttackSpec, *, feature_vectors: bool = False) -> PGD:
        """``feature_vectors``: the inputs are (N, F, 1, 1) features, for which ``"auto"`` means
        no bounds; for images it means [0, 1]."""
        return cls(spec.eps, spec.step_size, spec.steps, spec.norm, spec.random_start,
                   resolve_domain(spec.domain, feature_vectors=feature_vectors))

    def check_inputs(self, images: torch.Tensor, what: str) -> None:
        """Require clean ``images`` (N, C, H, W; uint8 read as value / 255) to lie inside the
        attack's bounds, with one bound or one per channel/feature. ``what`` names the data in
        the message.

        Every step clamps x + δ into the bounds, so a clean input outside them would be moved
        there by more than ``eps`` and the "adversarial" example would not be near it.

        Raises:
            ConfigError: (field ``attack.domain``) the number of bounds does not fit the
                channels, or a value lies outside its bound.
        """
        if self.bounds is None or images.numel() == 0:
            return
        channels = images.shape[1]
        if len(self.bounds[0]) not in (1, channels):
            raise ConfigError(
                f"attack.domain has {len(self.bounds[0])} bounds but the {what} have {channels} "
                f"channels/features; give 1 bound or {channels}", field="attack.domain")
        dims = [0, *range(2, images.dim())]
        low, high = images.amin(dim=dims).float(), images.amax(dim=dims).float()
        if images.dtype == torch.uint8:
            low, high = low / 255, high / 255
        # Compared in float32 by the rule job creation also applies to an upload's range.
        check_inputs_in_domain(self.bounds, low.tolist(), high.tolist(), what)

    def clamp(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` moved into the attack's domain (unchanged without bounds)."""
        return self._clamp(images)

    def _clamp(self, images: torch.Tensor) -> torch.Tensor:
        if self.bounds is None:
            return images
        lower, upper = (torch.tensor(side, dtype=images.dtype, device=images.device)
                        .view(1, -1, *([1] * (images.dim() - 2))) for side in self.bounds)
        if lower.shape[1] not in (1, images.shape[1]):
            raise ValueError(f"the attack domain has {lower.shape[1]} bounds but the inputs "
                             f"have {images.shape[1]} channels/features")
        return torch.maximum(torch.minimum(images, upper), lower)

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        precision: str = "fp32",
        should_cancel: ShouldCancel | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return adversarial images (N, C, H, W) in [0, 1] within ``eps`` of ``images``: float32,
        or float64 for a float64 model (whose inputs are cast to its dtype, see the module
        docstring).

        The random start draws uniform [0, 1) values of the images' shape from ``generator``,
        unless ``noise`` gives them (e.g. drawn per example, so that an example's start does not
        depend on the batch it is attacked in: ``rift.sequential_attack``).

        The model is put in eval mode for the attack (BatchNorm uses running statistics) and
        restored afterwards; its parameters receive no gradient. ``should_cancel`` is polled
        before every step (:func:`rift.cancellation.raise_if_cancelled`): with 1,000 steps one
        batch is minutes of work, so a check per batch alone would not stop it promptly.
        """
        dtype = input_dtype(model)
        images = images.detach().to(torch.promote_types(dtype, torch.float32))
        if self.eps == 0 or self.steps == 0:
            return images.clone()
        # The attack needs the input gradient even when the caller evaluates under
        # ``torch.no_grad()`` or ``torch.inference_mode()`` (a common wrapper around an
        # evaluation loop): it failed there with "element 0 of tensors does not require grad".
        # Under inference mode the images are inference tensors, which autograd cannot record
        # with, so they are copied out of it first.
        with torch.inference_mode(False), torch.enable_grad(), frozen_except(model):
            if images.is_inference():
                images = images.clone()
            delta = self._initial_delta(images, generator, noise)
            for _ in range(self.steps):
                raise_if_cancelled(should_cancel)
                delta.requires_grad_(True)
                with autocast(images.device, precision):
                    logits = model((images + delta).to(dtype))
                loss = F.cross_entropy(logits.float(), labels)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = self._step(delta.detach(), grad, images)
            # Clamped once more: x + (clamp(x + δ) − x) is not always clamp(x + δ) in floating
            # point, and the returned point fell up to one float step outside a bound (an L2
            # attack in [0.1, 0.9] returned 0.099999994 < float32(0.1)).
            return self._clamp(images + delta).detach()

    def _initial_delta(
        self, images: torch.Tensor, generator: torch.Generator | None,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(images)
        if noise is None:
            noise = torch.rand(images.shape, generator=generator, device=generator.device
                               if generator is not None else images.device)
        elif noise.shape != images.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the images "
                             f"{tuple(images.shape)}")
        noise = noise.to(device=images.device, dtype=images.dtype)
        if self.norm == "linf":
            delta = (noise * 2 - 1) * self.eps
        else:
            # A point at distance eps/2 in the direction of a uniform draw from the cube [-1, 1]^d
            # (the per-example noise is uniform): neither the direction nor the radius is uniform
            # over the ball. Kept (a change would move every L2 figure already reported); README
            # "Attacks" says so.
            direction = noise * 2 - 1
            direction = direction / _per_example_l2(direction).clamp_min(_TINY)
            delta = direction * self.eps * 0.5
        return self._clamp(images + delta) - images

    def _step(
        self, delta: torch.Tensor, grad: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        if self.norm == "linf":
            delta = (delta + self.step_size * grad.sign()).clamp(-self.eps, self.eps)
        else:
            delta = delta + self.step_size * grad / _per_example_l2(grad).clamp_min(_TINY)
            scale = (self.eps / _per_example_l2(delta).clamp_min(_TINY)).clamp(max=1.0)
            delta = delta * scale
        # Keep x + δ a valid input.
        return self._clamp(images + delta) - images


def _per_example_l2(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped (N, 1, 1, 1) for broadcasting."""
    return tensor.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.dim() - 1)))
