"""Checks of the loaded model (θ_AT) on one small batch of the job's own data, before any stage.

Every stage reads the model's output as logits under cross-entropy, differentiates it with
respect to the input (PGD) and the weights (MRC, fine-tuning), and assumes that one input gives one
output in eval mode. A model breaking one of these runs to the end with numbers that mean nothing,
so :func:`check_model_outputs` refuses it with one message saying what to change:

* **Probabilities instead of logits** (a final softmax: every row non-negative and summing to 1).
  Cross-entropy applies its own log-softmax, so on probabilities it scores ``p_y - log Σ exp p``:
  bounded, with gradients squashed by the softmax's Jacobian; PGD, MRC and fine-tuning would
  optimise that instead of the model's loss. Log-probabilities (a final ``log_softmax``) are fine
  and pass: ``log_softmax`` of log-probabilities is themselves, so the loss is the model's.
* **A final sigmoid** (``torch.sigmoid``, ``nn.Sigmoid``, ``Tensor.sigmoid``, ``expit``,
  ``hardsigmoid`` producing the returned tensor): outputs in [0, 1] that need not sum to 1, so
  the softmax test above misses them, and cross-entropy on them is bounded in the same way. The
  values alone cannot tell a sigmoid from legitimate logits that happen to lie in [0, 1] (a
  final ReLU on small values), so the function that made the output is recorded
  (:class:`_LastProducer`, a ``TorchFunctionMode`` over the first pass).
* **Output that changes from one pass to the next in eval mode** (``F.dropout(x, p)`` whose
  ``training`` defaults to True, noise layers): attacks, MRC and the α rule compare numbers that
  would move between two evaluations of the same weights.
* **No gradient with respect to the input** (``torch.no_grad()`` or ``.detach()`` inside
  ``forward``), or a gradient that is exactly zero for every example, at the clean inputs and at
  random points within ``attack.eps`` (rounding, quantisation, ``argmax``): PGD could not move
  the input, so every "robust" accuracy would silently be the clean one.
* **A forward that writes into its input** (``x -= mean`` in place): the job's data, or the
  attack's inputs, would change under the caller.

One batch in fp32 (at most :data:`CHECK_EXAMPLES` examples), three forward passes and one backward
pass: cheap beside any stage.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from rift.attacks import PGD
from rift.data import ImageTensors, iterate_batches
from rift.errors import ConfigError
from rift.model_state import frozen_except

#: Examples the checks run on (the first of the split they are given).
CHECK_EXAMPLES = 32
# Two eval passes may differ by kernel rounding on an accelerator (cuDNN picks algorithms per
# call when not deterministic); dropout moves logits by their own order of magnitude.
_REPEAT_RTOL = 1e-3
# A softmax's rows sum to 1 up to float rounding; logits summing to 1 on every row of a batch
# while all non-negative does not happen by chance.
_SUM_TOLERANCE = 1e-3
# Torch functions whose output lies in [0, 1] whatever their input: a model output made by one
# is a squashed score, not a logit (special_expit is torch.special.expit's name).
_SQUASHING = frozenset({"sigmoid", "sigmoid_", "special_expit", "hardsigmoid", "hardsigmoid_"})


class _LastProducer(TorchFunctionMode):
    """Records, for the tensors a forward makes, the name of the torch function that made each
    (looked up by identity, each entry holding a weak reference, so the forward's intermediate
    tensors are freed as usual)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[int, tuple[str, weakref.ref[torch.Tensor]]] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            name = getattr(func, "__name__", "")
            self._made[id(result)] = (name, weakref.ref(result))
        return result

    def made(self, tensor: torch.Tensor) -> str | None:
        """The name of the function that made ``tensor`` in the forward, or None."""
        entry = self._made.get(id(tensor))
        return entry[0] if entry is not None and entry[1]() is tensor else None


def check_model_outputs(model: nn.Module, data: ImageTensors, attack: PGD, *,
                        device: torch.device, name: str) -> None:
    """Refuse ``model`` (named ``name`` in messages) when, on the first examples of ``data``, it
    breaks one of the module docstring's assumptions. Mode, ``requires_grad`` flags and the
    global random state are left as they were.

    Raises:
        ConfigError: (field ``architecture``) naming what the forward does and what to change.
    """
    if len(data) == 0:
        return
    images, labels = next(iterate_batches(data.head(CHECK_EXAMPLES), CHECK_EXAMPLES,
                                          device=device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_except(model):
        _check_passes(model, images, name)
        _check_input_gradient(model, images, labels, attack, name)


def _check_passes(model: nn.Module, images: torch.Tensor, name: str) -> None:
    original = images.clone()
    producer = _LastProducer()
    with torch.no_grad():
        with producer:
            first = model(images)
        made_by = producer.made(first)
        second = model(images)
    if not torch.equal(images, original):
        raise ConfigError(
            f"architecture {name!r} changes its input tensor in place in forward (e.g. "
            "'x -= mean' or 'x.clamp_(...)'): the job's images and the attack's inputs would "
            "change under it. Make forward write new tensors ('x = x - mean')",
            field="architecture")
    scale = max(1.0, float(first.abs().max()))
    if not torch.allclose(first, second, rtol=_REPEAT_RTOL, atol=_REPEAT_RTOL * scale):
        difference = float((first - second).abs().max())
        raise ConfigError(
            f"architecture {name!r} gives different outputs for the same {len(images)} inputs "
            f"in two passes in eval mode (largest difference {difference:.3g}): dropout or "
            "noise stays active in eval mode (F.dropout(x, p) defaults to training=True; pass "
            "training=self.training, or use nn.Dropout), or forward updates a buffer it reads. "
            "Attacks, MRC and the α rule need one output per input: make forward deterministic "
            "in eval mode", field="architecture")
    if first.shape[1] > 1 and bool((first >= 0).all()) and float(
            (first.double().sum(1) - 1).abs().max()) < _SUM_TOLERANCE:
        raise ConfigError(
            f"architecture {name!r} returns probabilities (every row of its output on "
            f"{len(images)} examples is non-negative and sums to 1: a softmax at the end of "
            "forward), but RiFT's attacks, MRC and fine-tuning apply cross-entropy, which needs "
            "logits: on probabilities they would optimise another, bounded loss. Remove the "
            "final softmax, or end forward with log_softmax (log-probabilities are valid "
            "logits)", field="architecture")
    if made_by is not None and made_by in _SQUASHING and bool(((first >= 0) & (first <= 1)).all()):
        raise ConfigError(
            f"architecture {name!r} ends forward with {made_by.removeprefix('special_')} (every "
            f"output on {len(images)} examples lies in [0, 1]), but RiFT's attacks, MRC and "
            "fine-tuning apply cross-entropy, which needs logits: on outputs squashed into "
            "[0, 1] the loss is bounded and its gradients vanish where the model is confident, "
            "so they would optimise another loss than the model's. Return the values before "
            "the sigmoid (they rank the classes the same way)", field="architecture")


def _check_input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          attack: PGD, name: str) -> None:
    points = [images]
    if attack.eps > 0:
        # A model with zero gradient at its clean inputs (saturated) may have one nearby, where
        # PGD's random start puts the first step.
        generator = torch.Generator(device=images.device).manual_seed(0)
        noise = torch.rand(images.shape, generator=generator, device=images.device)
        points.append(attack.clamp(images + (noise * 2 - 1) * attack.eps))
    for point in points:
        inputs = point.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs)
            if not logits.requires_grad:
                raise ConfigError(
                    f"architecture {name!r} returns outputs without a gradient (forward runs "
                    "under torch.no_grad(), detaches them or makes them from argmax/one_hot): "
                    "PGD needs the gradient with respect to the input, MRC and fine-tuning with "
                    "respect to the weights. "
                    "Remove torch.no_grad()/.detach() from forward and return the logits",
                    field="architecture")
            loss = F.cross_entropy(logits.float(), labels)
            (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
        if grad is None:
            raise ConfigError(
                f"architecture {name!r} detaches its input in forward (the output has no "
                "gradient with respect to the input), so PGD cannot attack it and every robust "
                "accuracy would be the clean one. Remove the .detach() (or the no_grad block) "
                "on the input's path", field="architecture")
        if bool((grad != 0).any()):
            return
    where = ("at the clean inputs and at random points within attack.eps" if len(points) > 1
             else "at the clean inputs")
    raise ConfigError(
        f"the gradient of the loss with respect to the input is exactly zero for all "
        f"{len(images)} examples checked ({where}): PGD cannot move the input, so every robust "
        f"accuracy would silently be the clean one. Architecture {name!r} has a step in its "
        "forward (rounding, quantisation, argmax, a hard threshold) or outputs so saturated "
        "that the loss is flat; attack a differentiable version of the model (e.g. a "
        "straight-through estimator for the rounding)", field="architecture")
