"""Checks of the loaded model (θ_AT) on one small batch of the job's own data, before any stage.

Every stage reads the model's output as logits under cross-entropy, differentiates it with
respect to the input (PGD) and the weights (MRC, fine-tuning), and assumes that one input gives one
output in eval mode. A model breaking one of these runs to the end with numbers that mean nothing,
so :func:`check_model_outputs` refuses it with one message saying what to change, or, where the
values alone cannot be sure, returns a warning for the run's ``warning`` events:

* **Probabilities instead of logits**, judged by the values, whatever code made them: every row
  non-negative and summing to the same total (1 for a softmax, however written: ``softmax``,
  ``z.exp() / z.exp().sum(1, keepdim=True)``, a softmax then ``.clamp(1e-8, 1)``; 100 for
  percentages). Cross-entropy applies its own log-softmax, so on probabilities it scores
  ``p_y - log Σ exp p``: bounded, with gradients squashed by the softmax's Jacobian; PGD, MRC and
  fine-tuning would optimise that instead of the model's loss. Log-probabilities (``log_softmax``,
  or ``torch.log`` of a softmax: every entry ≤ 0, each row's logsumexp 0) are fine and pass:
  ``log_softmax`` of log-probabilities is themselves, so the loss is the model's. *Negative*
  log-probabilities (every entry ≥ 0, each row's logsumexp of the negated values 0: a
  per-class loss) are refused: the largest output is then the least likely class.
* **A final sigmoid** (``torch.sigmoid``, ``nn.Sigmoid``, ``Tensor.sigmoid``, ``expit``,
  ``hardsigmoid``, or an operation on its result that keeps its shape and the values in [0, 1],
  such as ``sigmoid(z) * 1`` or ``.clamp(0, 1)``): outputs in [0, 1] that need not sum to 1, and
  cross-entropy on them is bounded in the same way. Recorded by :class:`_LastProducer`, a
  ``TorchFunctionMode`` over the first pass, which marks every tensor made by a squashing
  function or, with the same shape, from one.
* **Every output in [0, 1] otherwise** (a sigmoid written out by hand, ``1 / (1 + exp(-z))``, or
  applied outside torch functions) is a *warning*, not a refusal: the values alone cannot tell
  such a sigmoid from logits that happen to lie in [0, 1] (a final ReLU on small values, an
  untrained head with a positive bias), and a trained logit model essentially never gives only
  values in [0, 1] for 32 examples × every class (the wrong classes' logits go negative).
* **Output that changes from one pass to the next in eval mode** (``F.dropout(x, p)`` whose
  ``training`` defaults to True, noise layers): attacks, MRC and the α rule compare numbers that
  would move between two evaluations of the same weights.
* **No gradient with respect to the input** (``torch.no_grad()`` or ``.detach()`` inside
  ``forward``), or a gradient that is exactly zero for every example, at the clean inputs and at
  random points within ``attack.eps`` (rounding, quantisation, ``argmax``): PGD could not move
  the input, so every "robust" accuracy would silently be the clean one. Exactly zero for at
  least half of the examples is refused too, for fewer a warning (logits so large that
  cross-entropy's softmax is one-hot in float32, a temperature left in the model: PGD never
  moves those examples, which then count as robust).
* **Token ids** (an ``nn.Embedding`` looked up with ids cast from the input, ``x.long()``):
  named as such when the input gradient is missing (:mod:`rift.models.token_inputs`; a lookup of
  the float input itself is refused earlier, by ``check_model_accepts``).
* **Outputs that depend on the rest of the batch in eval mode** (statistics over the batch
  dimension in a custom layer, ``F.batch_norm(..., training=True)``, a softmax over dim 0): the
  first example must get the same output in a batch of two beside the second example as
  beside the third (batches of one size, so the same kernels: the repeat tolerance holds).
  A BatchNorm module without running statistics is refused before, by name.
* **Reentrant activation checkpointing** (``torch.utils.checkpoint(..., use_reentrant=True)``
  on the input's path): ``autograd.grad`` cannot go through it (:mod:`rift.gradient_paths`).
* **A forward that writes into its input** (``x -= mean`` in place): the job's data, or the
  attack's inputs, would change under the caller.
* **A forward that writes into the model's own state in eval mode** (a persistent buffer or a
  parameter: a call counter, a running average updated outside ``if self.training``): every
  attack, MRC pass and evaluation would move it, so the weights a run saves, those "returned
  unchanged" at α = 0 included, were not the checkpoint's, with no word.

One batch in fp32 (at most :data:`CHECK_EXAMPLES` examples): two forward passes, two of two
examples, and one or two forward and backward passes: cheap beside any stage.
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
from rift.gradient_paths import reentrant_checkpoints, reentrant_message
from rift.model_state import frozen_except
from rift.models.token_inputs import EmbeddingReads, token_input_message
from rift.scored_weights import scored_parameters

#: Examples the checks run on (the first of the split they are given).
CHECK_EXAMPLES = 32
# Two eval passes may differ by kernel rounding on an accelerator (cuDNN picks algorithms per
# call when not deterministic); dropout moves logits by their own order of magnitude.
_REPEAT_RTOL = 1e-3
# A softmax's rows sum to 1 up to float rounding; logits summing to 1 on every row of a batch
# while all non-negative does not happen by chance.
_SUM_TOLERANCE = 1e-3
# Torch functions whose output lies in [0, 1] whatever their input: a model output made by one
# (or from one by an operation keeping its shape and the [0, 1] range) is a squashed score, not
# a logit (special_expit is torch.special.expit's name).
_SQUASHING = frozenset({"sigmoid", "sigmoid_", "special_expit", "hardsigmoid", "hardsigmoid_"})
# In float32, exp(-104) is below the smallest subnormal: a correct prediction leading every other
# logit by more than this gets a softmax of exactly one-hot, hence a zero cross-entropy gradient
# (a lead of about 17 already rounds the top probability to 1). A lead above 80 on every
# example at a zero gradient names the logits' scale as the cause.
_SATURATED_MARGIN = 80.0
# From this share of the checked examples at a zero input gradient the model is refused: the
# robust accuracies would mostly count inputs PGD never moved (the digits θ_AT at T = 100: 24 of
# 32, robust 74.2 % for 65.9 %); below it, a warning.
_STUCK_REFUSAL_SHARE = 0.5


class _LastProducer(TorchFunctionMode):
    """Records, for the tensors a forward makes, the name of the squashing function
    (:data:`_SQUASHING`) each descends from: made by it, or made by any torch function from a
    tensor that descends from one and has the result's shape (``sigmoid(z) * 1``,
    ``sigmoid(z).clamp(...)``; a sigmoid gate broadcast over a feature map, as in
    squeeze-and-excitation blocks, has another shape and does not pass its mark on). Looked up
    by identity, each entry holding a weak reference, so the forward's intermediate tensors are
    freed as usual."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[int, tuple[str, weakref.ref[torch.Tensor]]] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            name = getattr(func, "__name__", "")
            squashed = name if name in _SQUASHING else self._inherited(result, args, kwargs)
            if squashed is not None:
                self._made[id(result)] = (squashed, weakref.ref(result))
        return result

    def _inherited(self, result: torch.Tensor, args: Any, kwargs: Any) -> str | None:
        for value in [*args, *(kwargs or {}).values()]:
            if isinstance(value, torch.Tensor) and value.shape == result.shape:
                made = self.made(value)
                if made is not None:
                    return made
        return None

    def made(self, tensor: torch.Tensor) -> str | None:
        """The squashing function ``tensor`` descends from in the forward, or None."""
        entry = self._made.get(id(tensor))
        return entry[0] if entry is not None and entry[1]() is tensor else None


def check_model_outputs(model: nn.Module, data: ImageTensors, attack: PGD, *,
                        device: torch.device, name: str) -> list[str]:
    """Refuse ``model`` (named ``name`` in messages) when, on the first examples of ``data``, it
    breaks one of the module docstring's assumptions. Mode, ``requires_grad`` flags and the
    global random state are left as they were.

    Returns:
        Warnings (one sentence each) for what the values make likely but not certain: every
        output in [0, 1].

    Raises:
        ConfigError: (field ``architecture``) naming what the forward does and what to change.
    """
    if len(data) == 0:
        return []
    images, labels = next(iterate_batches(data.head(CHECK_EXAMPLES), CHECK_EXAMPLES,
                                          device=device))
    devices = [device] if device.type == "cuda" else []
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    with torch.random.fork_rng(devices=devices), frozen_except(model):
        warnings = _check_passes(model, images, name)
        stuck = _check_input_gradient(model, images, labels, attack, name)
    _refuse_state_writes(model, state, name)
    return warnings if stuck is None else [*warnings, stuck]


def _refuse_state_writes(model: nn.Module, before: dict[str, torch.Tensor], name: str) -> None:
    """Refuse ``model`` when the checks' eval-mode passes changed an entry of its state dict.
    Measured before: a call counter and a running mean updated in eval mode were saved, moved,
    in ``tuned.safetensors`` at α = 0 ("returned unchanged") and in θ_FT outside the tuned
    module, with no word; the run's own copy of θ_AT was taken after one probe pass too."""
    written = [key for key, value in model.state_dict().items()
               if key in before and not _same_values(value, before[key])]
    if written:
        raise ConfigError(
            f"architecture {name!r} changes its own state dict in forward in eval mode: "
            f"{', '.join(written[:6])}{' …' if len(written) > 6 else ''} (e.g. a call counter "
            "or a running average updated outside 'if self.training:'). Every attack, MRC pass "
            "and evaluation would move them, so the weights the run saves (also those returned "
            "unchanged at α = 0) would not be the checkpoint's. Update them in training only, "
            "or keep them out of the state dict (register_buffer(..., persistent=False))",
            field="architecture")


def _same_values(now: torch.Tensor, before: torch.Tensor) -> bool:
    # NaN differs from itself: a buffer holding NaN as a marker (a statistic not yet seen)
    # and left alone is unchanged.
    if torch.equal(now, before):
        return True
    return (now.is_floating_point() and now.shape == before.shape and now.dtype == before.dtype
            and bool(torch.isclose(now, before, rtol=0, atol=0, equal_nan=True).all()))


def _check_passes(model: nn.Module, images: torch.Tensor, name: str) -> list[str]:
    original = images.clone()
    producer = _LastProducer()
    with torch.no_grad():
        with producer:
            first = model(images)
        made_by = producer.made(first)
        second = model(images)
        # The first example beside the second, then beside the third: batches of one size, so
        # the kernels and their rounding are the same, and statistics over two examples move
        # with the partner where forward mixes examples.
        partnered = ([model(images[[0, partner]])[0] for partner in (1, 2)]
                     if len(images) > 2 else None)
    if not torch.equal(images, original):
        raise ConfigError(
            f"architecture {name!r} changes its input tensor in place in forward (e.g. "
            "'x -= mean' or 'x.clamp_(...)'): the job's images and the attack's inputs would "
            "change under it. Make forward write new tensors ('x = x - mean')",
            field="architecture")
    _refuse_non_finite(first, name)
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
    if partnered is not None and not torch.allclose(partnered[0], partnered[1],
                                                    rtol=_REPEAT_RTOL,
                                                    atol=_REPEAT_RTOL * scale):
        difference = float((partnered[0] - partnered[1]).abs().max())
        raise ConfigError(
            f"architecture {name!r} gives one input another output in a batch with a second "
            "input than with a third (batches of two, eval mode; largest difference "
            f"{difference:.3g}): forward mixes examples (statistics over "
            "the batch dimension, such as a custom normalisation with x.mean(0) or a BatchNorm "
            "called with training=True, or a softmax over dim 0). Attacks, MRC and the α rule "
            "batch examples differently from stage to stage and need each example's output "
            "to be its own: use running statistics or a per-example normalisation in eval "
            "mode", field="architecture")
    return _check_output_kind(first.double(), made_by, len(images), name)


def _refuse_non_finite(outputs: torch.Tensor, name: str) -> None:
    """Refuse outputs holding NaN or +inf (-inf is a masked class, which softmax takes). Before,
    a forward taking the log of a zero pixel was told "dropout or noise stays active in eval
    mode" (NaN differs from itself in the comparison of two passes)."""
    bad = torch.isnan(outputs) | (outputs == float("inf"))
    rows = bad.reshape(len(outputs), -1).any(1)
    if bool(rows.any()):
        raise ConfigError(
            f"architecture {name!r} returns NaN or +inf in eval mode for {int(rows.sum())} of "
            f"the first {len(outputs)} test examples (e.g. the log or reciprocal of a zero "
            "pixel, a division by a zero norm, an overflow): cross-entropy on them is NaN, so "
            "attacks, MRC and fine-tuning would follow no gradient, and every such example "
            "would count as an error. Make forward finite on the data (e.g. torch.log(x + "
            "1e-6), or clamp before dividing)", field="architecture")


def _probability_total(totals: torch.Tensor) -> float | None:
    """1 or 100 when every row total is that, up to float rounding of a softmax (relative);
    else None. Other constant totals are not judged: an untrained model on similar inputs can
    give nearly the same non-negative row totals by chance."""
    for total in (1.0, 100.0):
        if float((totals - total).abs().max()) < _SUM_TOLERANCE * total:
            return total
    return None


def _check_output_kind(outputs: torch.Tensor, made_by: str | None, count: int,
                       name: str) -> list[str]:
    """Refuse probability-like outputs (the module docstring's rules, on float64 ``outputs``);
    return the warning for outputs that only lie in [0, 1]."""
    if outputs.shape[1] < 2 or not bool(torch.isfinite(outputs).all()):
        return []  # non-finite logits: the stages' own checks report them
    logits_fix = ("RiFT's attacks, MRC and fine-tuning apply cross-entropy, which needs logits "
                  "and applies log-softmax itself")
    total = _probability_total(outputs.sum(1)) if bool((outputs >= 0).all()) else None
    # One-hot rows times 100 (argmax inside forward) are left to the gradient check, which
    # names the step; a softmax (total 1) is refused even where it saturates to one-hot.
    if total == 100.0 and not bool(((outputs > 0) & (outputs < total)).any()):
        total = None
    if total is not None:
        what = ("probabilities (every row of its output on "
                f"{count} examples is non-negative and sums to 1: a softmax at the end of "
                "forward, however written)") if total == 1.0 else (
                f"percentages (every row of its output on {count} examples is non-negative and "
                "sums to 100: a softmax times 100)")
        raise ConfigError(
            f"architecture {name!r} returns {what}, but {logits_fix}: on probabilities they "
            "would optimise another, bounded loss. Return logits (remove the final softmax), "
            "or end forward with log_softmax (log-probabilities are valid logits)",
            field="architecture")
    if bool((outputs >= 0).all()) and bool(
            (torch.logsumexp(-outputs, 1).abs() < _SUM_TOLERANCE).all()):
        raise ConfigError(
            f"architecture {name!r} returns negative log-probabilities (every output on {count} "
            "examples is ≥ 0 and exp(-output) sums to 1 on every row: a per-class loss such as "
            "-log_softmax), so its largest output is its least likely class, and "
            f"{logits_fix}. Return log_softmax (without the minus sign) or the logits",
            field="architecture")
    in_unit_range = bool(((outputs >= 0) & (outputs <= 1)).all())
    if not in_unit_range:
        return []
    if made_by is not None:
        raise ConfigError(
            f"architecture {name!r} ends forward with {made_by.removeprefix('special_')} (every "
            f"output on {count} examples lies in [0, 1]), but {logits_fix}: on outputs squashed "
            "into [0, 1] the loss is bounded and its gradients vanish where the model is "
            "confident, so they would optimise another loss than the model's. Return the "
            "values before the sigmoid (they rank the classes the same way)",
            field="architecture")
    return [
        f"every output of architecture {name!r} on {count} test examples lies in [0, 1] "
        f"(from {float(outputs.min()):.3g} to {float(outputs.max()):.3g}): probabilities of a "
        "sigmoid written out by hand (1 / (1 + exp(-z))) look like this, and cross-entropy on "
        "them, which RiFT's attacks, MRC and fine-tuning apply, is a bounded loss whose "
        "gradients vanish where the model is confident: the robust accuracies and MRC would "
        "not be the model's. If forward ends with a sigmoid, return the values before it "
        "(logits; cross-entropy applies log-softmax itself); logits that merely lie in [0, 1] "
        "(a final ReLU on small values) are fine"]


def _check_input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          attack: PGD, name: str) -> str | None:
    """Refuse ``model`` when no example has an input gradient; return the warning for the
    examples that have none (exactly zero at every point checked), else None."""
    points = [images]
    if attack.eps > 0:
        # A model with zero gradient at its clean inputs (saturated) may have one nearby, where
        # PGD's random start puts the first step.
        generator = torch.Generator(device=images.device).manual_seed(0)
        noise = torch.rand(images.shape, generator=generator, device=images.device)
        points.append(attack.clamp(images + (noise * 2 - 1) * attack.eps))
    tables = EmbeddingReads(model)
    # Per example: examples are independent in eval mode (checked before), so each one's rows
    # of the batch loss's input gradient are its own gradient.
    stuck = torch.ones(len(images), dtype=torch.bool, device=images.device)
    clean_logits: torch.Tensor | None = None
    for point in points:
        inputs = point.clone().requires_grad_(True)
        with torch.enable_grad():
            with tables:
                logits = model(inputs)
            if not logits.requires_grad:
                _refuse_token_ids(tables, len(images), name)
                raise ConfigError(
                    f"architecture {name!r} returns outputs without a gradient (forward runs "
                    "under torch.no_grad(), detaches them or makes them from argmax/one_hot): "
                    "PGD needs the gradient with respect to the input, MRC and fine-tuning with "
                    "respect to the weights. "
                    "Remove torch.no_grad()/.detach() from forward and return the logits",
                    field="architecture")
            segments = reentrant_checkpoints(logits)
            if segments:
                raise ConfigError(reentrant_message(name, segments), field="architecture")
            # Summed, not averaged: a mean over the batch could round a tiny gradient to zero.
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
        if grad is None:
            _refuse_token_ids(tables, len(images), name)
            raise ConfigError(
                f"architecture {name!r} detaches its input in forward (the output has no "
                "gradient with respect to the input), so PGD cannot attack it and every robust "
                "accuracy would be the clean one. Remove the .detach() (or the no_grad block) "
                "on the input's path", field="architecture")
        if clean_logits is None:
            clean_logits = logits.detach().float()
        stuck &= (grad.reshape(len(images), -1) == 0).all(1)
    where = ("at the clean inputs and at random points within attack.eps" if len(points) > 1
             else "at the clean inputs")
    if not bool(stuck.any()):
        return None
    if not bool(stuck.all()):
        assert clean_logits is not None
        message = _partly_stuck_message(clean_logits, labels, stuck, where, name)
        if float(stuck.float().mean()) < _STUCK_REFUSAL_SHARE:
            return message
        raise ConfigError(message[0].upper() + message[1:], field="architecture")
    _refuse_token_ids(tables, len(images), name)
    zeros = all_zero_weights(model)
    cause = (
        f"Architecture {name!r} holds weights that are all zero: {', '.join(zeros[:5])}"
        f"{' …' if len(zeros) > 5 else ''} (an untrained or zero-initialised layer: torchvision "
        "initialises a VisionTransformer's head to zero, so an untrained ViT has one), so its "
        "logits do not depend on the input; give the checkpoint of a trained model" if zeros
        else f"Architecture {name!r} has a step in its forward (rounding, quantisation, argmax, "
        "a hard threshold) or outputs so saturated that the loss is flat; attack a "
        "differentiable version of the model (e.g. a straight-through estimator for the "
        "rounding)")
    raise ConfigError(
        f"the gradient of the loss with respect to the input is exactly zero for all "
        f"{len(images)} examples checked ({where}): PGD cannot move the input, so every robust "
        f"accuracy would silently be the clean one. {cause}", field="architecture")


def _partly_stuck_message(logits: torch.Tensor, labels: torch.Tensor, stuck: torch.Tensor,
                          where: str, name: str) -> str:
    """What to say of the examples (``stuck``, not all) whose input gradient is exactly zero:
    a warning below :data:`_STUCK_REFUSAL_SHARE` of them, else the refusal.

    Measured on the digits θ_AT with its logits multiplied by T (a temperature left in the
    model, as a defensively distilled network evaluated at T = 1): PGD-10 robust accuracy 65.9 %
    at T = 1, 74.2 % at T = 100 and 88.0 % at T = 1000 against 90.6 % clean, with 24 and 29 of
    32 examples at a zero gradient (T = 30: 65.0 %, 5 of 32): cross-entropy's softmax rounds to
    exactly one-hot in float32 once the top logit leads the others by about 104, so the loss is
    flat there. The check refused a zero gradient only where every example had one, and the
    runs ended with those figures and no word."""
    count, total = int(stuck.sum()), len(stuck)
    top2 = logits[stuck].topk(2, dim=1).values if logits.shape[1] >= 2 else None
    margins = top2[:, 0] - top2[:, 1] if top2 is not None else None
    right = logits[stuck].argmax(1) == labels[stuck]
    if margins is not None and bool(right.all()) and float(margins.min()) > _SATURATED_MARGIN:
        cause = (
            f"On each of them the top logit leads every other by {float(margins.min()):.4g} or "
            f"more (up to {float(margins.max()):.4g}): cross-entropy's softmax rounds to exactly "
            "one-hot in float32, so the loss is flat there. Logits of this scale come from a "
            "temperature or scale left in the model (a defensively distilled network evaluated "
            "at T = 1, logits multiplied by a constant): return the logits divided by it. The "
            "flat loss also gives MRC and fine-tuning no gradient on such examples")
    else:
        cause = (
            "A step in forward (rounding, quantisation, a hard threshold) or a region where "
            "every path is inactive (dead ReLUs) gives them no gradient; attack a "
            "differentiable version of the model")
    return (
        f"the gradient of the loss with respect to the input is exactly zero for {count} of the "
        f"{total} test examples checked ({where}) on architecture {name!r}: PGD cannot move "
        "those inputs, so each counts as robust whenever its prediction is right, and the "
        f"robust accuracies may overstate the model's robustness. {cause}")


def all_zero_weights(model: nn.Module) -> list[str]:
    """Names of ``model``'s weight tensors (parameters of two or more dimensions) whose every
    value is zero. Where the input gradient is zero everywhere, such a layer is the likely cause
    (a zero-initialised head left untrained), not a step in forward, which the message named
    alone before; biases are left out, being zero by design in many initialisations."""
    return [key for key, parameter in model.named_parameters()
            if parameter.dim() >= 2 and parameter.numel() > 0 and _all_zero(parameter)]


def _all_zero(tensor: torch.Tensor) -> bool:
    return not bool(tensor.any())


def zero_weight_modules_warning(model: nn.Module, scored: list[str]) -> str | None:
    """The warning for modules of ``scored`` (names MRC will score) whose weights are all zero,
    else None. MRC perturbs a weight within ``mrc.eps·‖w‖``: for ‖w‖ = 0 that ball is {0}, so
    such a module scores MRC exactly 0, the lowest any module can, and is chosen by definition
    rather than for being the least critical (a residual branch's zero-initialised or pruned
    conv leaves the input gradient intact, so the output check above does not refuse it)."""
    zeros = [name for name in scored
             if (weights := scored_parameters(model.get_submodule(name)))
             and all(_all_zero(weight) for weight in weights)]
    if not zeros:
        return None
    listed = ", ".join(zeros[:5]) + (f" and {len(zeros) - 5} more" if len(zeros) > 5 else "")
    return (f"module(s) {listed} hold weights that are all zero: MRC perturbs a weight within "
            "mrc.eps times its norm, a ball of radius 0 here, so they score MRC exactly 0, the "
            "lowest possible, and the choice falls on them by definition, not for being the "
            "least robust-critical; name the module to fine-tune with finetune.module, or leave "
            "them out with mrc.exclude")


def _refuse_token_ids(tables: EmbeddingReads, batch: int, name: str) -> None:
    """Where the input has no gradient and an embedding table was looked up with one row of
    indices per example (ids cast from the input, ``x.long()``), name that as the cause."""
    read = tables.per_example(batch) or tables.given_floats()
    if read:
        raise ConfigError(token_input_message(name, read), field="architecture")
