"""Module Robust Criticality (docs/algorithm.md, "MRC"; the paper's Algorithm 1).

    MRC(i) = max_{Δ ∈ C_i} R(f(θ + Δ), D) − R(f(θ), D),   C_i = {Δ : ||Δ^(i)||_p ≤ ε ||θ^(i)||_p}

R is the mean cross-entropy on a fixed set of adversarial examples made once on θ. The maximum is
approached by gradient ascent on module i's weight, one pass over the adversarial set per step,
projecting Δ back onto the ball after each pass and measuring R after it. The step per batch is
``mrc.ascent``: "sgd" (lr · g, the reference code's rule) or "normalized" (lr · radius · g/||g||,
which makes the computed MRC invariant to rescaling a ReLU layer; docs/algorithm.md, "Ascent").

A row's weight tensors (one, or an attention's three separate q/k/v projections) are one vector
for the ball, the norm and the step (``rift.flat_weights``). The weight is perturbed in place and
restored afterwards (no copy of the model). With
``engine="cached"`` only the network after the module is recomputed: see ``rift.segments``.
With ``mrc.module_batch`` > 1, consecutive modules are scored together, their perturbed weights
held outside the model (``rift.mrc_stacked``); the ascent loop (``_criticalities_of``) is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import fx, nn

from rift.attacks import PGD
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.config import MRCSpec
from rift.device import autocast
from rift.errors import ConfigError, NumericalError, RiftError
from rift.evaluation import correct_predictions
from rift.flat_weights import FlatWeights
from rift.model_state import frozen_except, input_dtype
from rift.mrc_selection import SCREEN_PASSES, run_selection
from rift.mrc_stacked import FP32_ONLY, StackedProbe, modules_per_group, reshuffled_batches
from rift.mrc_zero_gradient import zero_gradient_modules
from rift.scored_weights import (
    ScoredWeights,
    scored_parameters,
    scored_weights,
    second_names,
    unscored_kinds,
    unscored_reason,
)
from rift.segments import (
    Segment,
    full_model_segment,
    segment_matches,
    split_at_parameters,
    trace,
)

logger = logging.getLogger(__name__)

#: Examples of the first batch on which each cached split is checked against the whole model.
_SPLIT_CHECK = 16

_TINY_NORM = 1e-30  # below any gradient norm that carries a direction in fp32


@dataclass(frozen=True)
class ModuleCriticality:
    """One row of the MRC table. Accuracies in percent, losses in nats (mean cross-entropy)."""

    name: str
    parameters: int
    mrc: float
    worst_robust_loss: float
    robust_accuracy_at_worst: float
    robust_accuracy_drop: float
    seconds: float
    # Largest loss measured after an ascent pass, Δ = 0 not counted (may be below the baseline).
    # Orders modules that tie on ``mrc`` (e.g. several at 0), docs/algorithm.md "Selection".
    max_ascent_loss: float = math.nan
    # Ascent passes run (None: not recorded). Fewer than ``mrc.steps`` only under
    # ``mrc.table = "selection"``, for a module stopped early: then ``exact`` is False and
    # ``mrc``, ``worst_robust_loss`` and ``max_ascent_loss`` are lower bounds of its values.
    passes: int | None = None
    exact: bool = True
    # The loss's gradient w.r.t. the module's weights is exactly zero on every batch of the MRC
    # set (``zero_gradient_modules``): the ascent cannot move, MRC is 0 by construction, and
    # the selection rule passes over the row (``lowest_rows``).
    zero_gradient: bool = False

    def as_dict(self) -> dict[str, float | int | str | bool | None]:
        return asdict(self)


@dataclass
class MRCReport:
    baseline_robust_loss: float
    baseline_robust_accuracy: float
    modules: list[ModuleCriticality] = field(default_factory=list)
    engine: str = "cached"
    # Selected modules left out because their weight does not reach the loss in eval mode (an
    # auxiliary head used only in training, a layer defined but never called).
    unreachable: list[str] = field(default_factory=list)
    # Parameters no row covers (``rift.scored_weights``): never scored, never chosen.
    unscored: list[str] = field(default_factory=list)
    # Rows flagged ``zero_gradient`` (scored, never chosen), in table order.
    zero_gradient: list[str] = field(default_factory=list)
    # Rows taken as given (``done`` of ``module_robust_criticality``), not computed here.
    reused: list[str] = field(default_factory=list)

    def lowest(self) -> ModuleCriticality:
        """The non-robust-critical module: the smallest MRC; ties go to the smaller
        ``max_ascent_loss``, then to the first in definition order."""
        return self.lowest_k(1)[0]

    def lowest_k(self, k: int) -> list[ModuleCriticality]:
        """The ``k`` modules the selection rule orders first (``lowest_rows``)."""
        if not self.modules:
            raise ConfigError("no module was scored, so none can be selected", field="mrc")
        return [self.modules[i] for i in lowest_rows([row.as_dict() for row in self.modules], k)]


def lowest_rows(rows: Sequence[Mapping[str, Any]], k: int) -> list[int]:
    """Indices of the ``k`` rows the selection rule orders first (``selection_key``, then table
    order). Rows are MRC table rows as dicts; one without ``exact`` (recorded before it existed)
    counts as exact.

    Rows flagged ``zero_gradient`` are never chosen: the loss does not depend on their weights
    (a branch behind a zero gate), so their MRC of 0 says nothing about robustness and
    fine-tuning them changes nothing (``rift.finetune`` refuses it).

    Raises:
        ConfigError: (field ``mrc.exclude``) every row is flagged ``zero_gradient``.
        RuntimeError: a chosen row holds a lower bound (``exact`` False). ``mrc.table =
            "selection"`` completes every module that can be chosen, so this is a bug, not a
            choice to make on a bound.
    """
    order = [i for i in selection_order(rows) if not rows[i].get("zero_gradient")][:k]
    if not order:
        raise ConfigError(
            "every module of the MRC table gets a gradient of exactly zero on the MRC set "
            f"({', '.join(str(row['name']) for row in rows)}): the loss does not depend on "
            "their weights, so none can be chosen; check mrc.modules and mrc.exclude",
            field="mrc.exclude")
    bounds = [str(rows[i]["name"]) for i in order if rows[i].get("exact") is False]
    if bounds:
        raise RuntimeError(f"the MRC selection rule would choose {bounds}, whose values are lower "
                           "bounds (stopped early by mrc.table = 'selection'): a bug, please report")
    return order


def selection_order(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Every row's index in the selection rule's order (``selection_key``, then table order),
    lower bounds included: :func:`lowest_rows` is its first ``k``, checked."""
    return sorted(range(len(rows)), key=lambda i: (
        *selection_key(float(rows[i]["mrc"]), rows[i].get("max_ascent_loss")), i))


def selection_key(mrc: float, max_ascent_loss: float | None) -> tuple[float, float]:
    """Sort key of the selection rule: MRC first, the ascent's own maximum breaks ties (a
    missing value, from a table recorded before it existed, sorts last among equals)."""
    tie = max_ascent_loss if max_ascent_loss is not None and not math.isnan(max_ascent_loss) \
        else math.inf
    return (mrc, tie)


# The MRC settings that only choose which rows exist, not any row's values.
_ROW_CHOICE_FIELDS = {"include", "exclude", "modules", "shards"}


def update_digest(digest: Any, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and bytes (any dtype, bf16 too) to a hashlib digest."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def mrc_inputs_digest(adversarial_images: torch.Tensor, labels: torch.Tensor, spec: MRCSpec, *,
                      seed: int, precision: str) -> str:
    """SHA-256 of everything a module's row is computed from besides the model's θ (fixed for a
    job): the adversarial set and labels, bit for bit, the MRC settings that shape a row, the
    seed, the precision, the device type and the torch version. Two rows computed under equal
    digests from the same θ are the same computation (``_score_one`` restores every weight and
    seeds each module's batch orders alike, so a row does not depend on the modules before it):
    a row stored under this digest can stand for one computed again (``done`` of
    :func:`module_robust_criticality`)."""
    digest = hashlib.sha256()
    for tensor in (adversarial_images, labels):
        update_digest(digest, tensor)
    settings = spec.model_dump(mode="json", exclude=_ROW_CHOICE_FIELDS)
    digest.update(repr((sorted(settings.items()), seed, precision, adversarial_images.device.type,
                        torch.__version__)).encode())
    return digest.hexdigest()


def row_from_dict(row: Mapping[str, Any]) -> ModuleCriticality | None:
    """The row ``ModuleCriticality.as_dict`` made (e.g. a stored ``module_scored`` event's
    payload); None if a field is missing or of another type (such a row is computed again)."""
    values: dict[str, Any] = {}
    if isinstance(row.get("zero_gradient"), bool):  # absent from rows recorded before it
        values["zero_gradient"] = row["zero_gradient"]
    for name, kind in (("name", str), ("parameters", int), ("mrc", float),
                       ("worst_robust_loss", float), ("robust_accuracy_at_worst", float),
                       ("robust_accuracy_drop", float), ("seconds", float),
                       ("max_ascent_loss", float), ("passes", int), ("exact", bool)):
        value = row.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # JSON writes 1.0 back as 1 on some paths
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return None
        values[name] = value
    return ModuleCriticality(**values)


def perturbable_modules(model: nn.Module) -> list[str]:
    """Names of the modules MRC scores (``rift.scored_weights``: convolutions, linear layers and
    attention projections), in definition order, each weight tensor once."""
    return scored_weights(model).modules


def select_modules(model: nn.Module, spec: MRCSpec) -> list[str]:
    """Apply ``spec.modules`` (an explicit subset) and the include/exclude fnmatch patterns."""
    scored = scored_weights(model)
    candidates = list(scored.modules)
    emptied_by = "mrc"  # the model itself has no conv or linear module
    if spec.modules is not None:
        refused = [name for name in spec.modules if name not in candidates]
        if refused:
            raise ConfigError(_refused_modules(model, refused, scored),
                              field="mrc.modules")
        wanted = set(spec.modules)
        if candidates:
            emptied_by = "mrc.modules"
        candidates = [name for name in candidates if name in wanted]
    if spec.include and candidates:
        emptied_by = "mrc.include"
        candidates = [n for n in candidates if any(fnmatch.fnmatchcase(n, p) for p in spec.include)]
    if spec.exclude and candidates:
        emptied_by = "mrc.exclude"
        candidates = [n for n in candidates
                      if not any(fnmatch.fnmatchcase(n, p) for p in spec.exclude)]
    if not candidates and emptied_by == "mrc":
        raise ConfigError(_nothing_scored(model, scored.unscored), field="architecture")
    if not candidates:
        # The field named is the one that removed the last module.
        raise ConfigError("the module selection (modules/include/exclude) matches no conv or "
                          f"linear module ({emptied_by} left none)", field=emptied_by)
    return candidates


def _nothing_scored(model: nn.Module, unscored: list[str]) -> str:
    """Why a model with no scored weight cannot be run, naming what its parameters are."""
    kinds = unscored_kinds(model, unscored)
    held = "; ".join(
        f"{'raw Parameters held by its own code' if kind == 'raw Parameter' else kind}"
        f": {_names(names)}" for kind, names in kinds.items())
    return ("the model has no layer MRC scores (a convolution, Linear, Bilinear or attention "
            "projection): " + (f"its parameters are {held}" if held else "it has no parameters")
            + ". RiFT scores layers and fine-tunes the least critical one; write the weights "
            "as such layers (x @ w is nn.Linear(in, out, bias=False) holding w.T)")


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _refused_modules(model: nn.Module, refused: list[str], scored: ScoredWeights) -> str:
    """Why each name of ``mrc.modules`` in ``refused`` has no row: a module MRC does not score
    (a BatchNorm, a container), a weight scored under another name, or no module at all."""
    reasons = [f"{name!r} {reason}" for name in refused
               if (reason := unscored_reason(model, name, scored)) is not None]
    second = second_names(model)
    reasons.extend(f"{name!r} is the module {second[name]!r} registered under a second name: "
                   f"its row is {second[name]!r}" for name in refused if name in second)
    modules = dict(model.named_modules())
    unknown = [name for name in refused
               if name not in scored.aliases and name not in modules and name not in second]
    if unknown:
        reasons.append(f"unknown module(s) {unknown}; conv/linear modules of this model are "
                       f"e.g. {scored.modules[:8]}")
    return "; ".join(reasons)


def make_adversarial_set(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: PGD,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    should_cancel: ShouldCancel | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``images`` (on their device) made once on θ, in batches.

    Every random start is drawn up front (from ``generator``, in example order), so the set does
    not depend on ``batch_size`` beyond float rounding and the batch may shrink on
    out-of-memory; on the CPU the draws equal those of drawing batch by batch.
    ``should_cancel`` is polled before every batch and every attack step: with many examples and
    steps this loop alone can run for minutes (a cancel once took 198 s to land here)."""
    noise = None
    if attack.random_start and attack.eps and attack.steps:
        device = generator.device if generator is not None else images.device
        noise = torch.rand(images.shape, generator=generator, device=device)
    parts = []
    for start in range(0, len(images), batch_size):
        raise_if_cancelled(should_cancel)
        parts.append(attack.perturb(
            model, images[start:start + batch_size], labels[start:start + batch_size],
            precision=precision, should_cancel=should_cancel,
            noise=noise[start:start + batch_size] if noise is not None else None))
    return torch.cat(parts)


def project_onto_ball(delta: torch.Tensor, radius: float, p: int | str) -> torch.Tensor:
    """Nearest point of {Δ : ||Δ||_p ≤ radius} for p = 2 (Frobenius) or 'inf' (elementwise)."""
    if p == "inf":
        return delta.clamp(-radius, radius)
    norm = float(delta.norm(p=2))
    return delta * (radius / norm) if norm > radius else delta


def module_weights(model: nn.Module, name: str) -> tuple[nn.Parameter, ...]:
    """The weight tensors MRC perturbs together in module ``name``
    (``rift.scored_weights.scored_parameters``)."""
    weights = scored_parameters(model.get_submodule(name))
    if not weights:
        raise ConfigError(f"module {name!r} has no weight MRC can score", field="mrc.modules")
    return weights


def unreachable_modules(model: nn.Module, names: Sequence[str], example: torch.Tensor
                        ) -> list[str]:
    """The modules of ``names`` whose weights get no gradient from the model's output on
    ``example`` in the model's current mode: the output does not depend on them (an auxiliary
    head used only in training, a layer never called). Their MRC would be 0 by construction and
    the selection would pick a module that cannot change the model's predictions."""
    groups = [module_weights(model, name) for name in names]
    weights = [weight for group in groups for weight in group]
    flags = [weight.requires_grad for weight in weights]
    try:
        for weight in weights:
            weight.requires_grad_(True)
        with torch.enable_grad():
            output = model(example)
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return list(names)
            grads = torch.autograd.grad(output.float().sum(), weights, allow_unused=True)
    finally:
        for weight, flag in zip(weights, flags, strict=True):
            weight.requires_grad_(flag)
    # A row is unreachable when none of its tensors gets a gradient.
    unreachable, start = [], 0
    for name, group in zip(names, groups, strict=True):
        if all(grad is None for grad in grads[start:start + len(group)]):
            unreachable.append(name)
        start += len(group)
    return unreachable


def reachable_modules(model: nn.Module, names: Sequence[str], example: torch.Tensor
                      ) -> tuple[list[str], list[str]]:
    """``names`` split into the modules MRC scores and those it leaves out
    (:func:`unreachable_modules`, in the model's current mode), both in the order of ``names``.
    The one rule for the whole table and for planning its shards (``rift.mrc_shards``), so that
    no shard is handed only modules that would be left out.

    Raises:
        ConfigError: none of ``names`` affects the output.
    """
    unreachable = unreachable_modules(model, names, example.to(input_dtype(model)))
    if unreachable:
        logger.warning("not scored, the output does not depend on them: %s", unreachable)
    reachable = [name for name in names if name not in unreachable]
    if not reachable:
        raise ConfigError(
            f"no selected module affects the model's output in eval mode "
            f"({', '.join(unreachable)}), so none can be scored", field="mrc.modules")
    return reachable, unreachable


def weight_norm(weight: torch.Tensor, p: int | str) -> float:
    return float(weight.abs().max()) if p == "inf" else float(weight.norm(p=2))


class _LossProbe:
    """Runs the suffix over cached prefix outputs: ascent passes and loss measurements.

    A measurement after pass k and the first batch of pass k + 1 see the same weights, so
    ``measure_start`` takes that batch's loss from the forward that also gives its gradient, which
    ``ascend`` then uses for its first step; the other batches are measured without grad. The
    values are those of a separate measurement; a one-batch set saves a whole forward pass per
    step. The two halves are separate calls so that ``rift.mrc_selection`` can stop a module
    between them with the exact sequence of computations the full table runs.

    On out-of-memory a batch is computed again in parts of half the size (``micro``), their
    gradients summed: still one ascent step per batch of ``mrc.batch_size``, the same step up to
    float rounding (BatchNorm is in eval mode, so a part's outputs do not depend on the others).
    """

    def __init__(self, segment: Segment, cache: list[tuple[torch.Tensor, ...]],
                 labels: list[torch.Tensor], precision: str,
                 should_cancel: ShouldCancel | None, *, micro: int | None = None,
                 on_backoff: Callable[[int, int], None] | None = None) -> None:
        self.segment, self.cache, self.labels = segment, cache, labels
        self.precision, self.should_cancel = precision, should_cancel
        self.examples = sum(len(y) for y in labels)
        self.micro, self.on_backoff = micro, on_backoff  # examples per part; None: whole batch

    def _new_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.labels[0].device
        return (torch.zeros((), dtype=torch.float64, device=device),
                torch.zeros((), dtype=torch.int64, device=device))

    def _result(self, sums: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
        return float(sums[0]) / self.examples, 100.0 * float(sums[1]) / self.examples

    def _parts(self, index: int) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        inputs, labels = self.cache[index], self.labels[index]
        size = self.micro
        if size is None or size >= len(labels):
            return [(inputs, labels)]
        return [(tuple(x[start:start + size] for x in inputs), labels[start:start + size])
                for start in range(0, len(labels), size)]

    def _batch(self, index: int, weight: FlatWeights | None,
               sums: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | None:
        """The gradient of batch ``index``'s mean loss w.r.t. ``weight`` as one vector (None: no
        gradient), adding the batch's summed loss and hits to ``sums`` when given."""
        while True:
            try:
                grad, batch_sums = self._batch_once(index, weight)
                break
            except torch.OutOfMemoryError:
                if not self._can_split(index):
                    raise
                self._halve_parts(index)
        if sums is not None:
            sums[0].add_(batch_sums[0])
            sums[1].add_(batch_sums[1])
        return grad

    def _batch_once(self, index: int, weight: FlatWeights | None
                    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        batch_sums, grad = self._new_sums(), None
        size = len(self.labels[index])
        for inputs, labels in self._parts(index):
            raise_if_cancelled(self.should_cancel)
            with torch.set_grad_enabled(weight is not None):
                with autocast(labels.device, self.precision):
                    logits = self.segment.suffix(*inputs).float()
                loss_sum = F.cross_entropy(logits, labels, reduction="sum")
            batch_sums[0].add_(loss_sum.detach().double())
            batch_sums[1].add_(correct_predictions(logits.detach(), labels).sum())
            if weight is not None:
                part = weight.flatten(torch.autograd.grad(loss_sum / size, weight.tensors))
                grad = part if grad is None else grad.add_(part)
        return grad, batch_sums

    def _can_split(self, index: int) -> bool:
        """Whether the batch can be cut in smaller parts: more than one example per part, and
        every cached prefix output indexed by example (a traced prefix may also hand over, e.g.,
        a size that a slice would make wrong)."""
        size = len(self.labels[index])
        return (self.micro or size) > 1 and all(
            isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == size
            for x in self.cache[index])

    def _halve_parts(self, index: int) -> None:
        current = self.micro or len(self.labels[index])
        smaller = max(1, current // 2)
        logger.warning("out of memory in the MRC ascent at %d examples per pass part; "
                       "continuing with %d (same steps, summed gradients)", current, smaller)
        if self.on_backoff is not None:
            self.on_backoff(current, smaller)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the failed attempt's cached blocks back
        self.micro = smaller

    def reshuffle(self, generator: torch.Generator) -> None:
        """Redraw which examples form each batch (same batch sizes), from ``generator``."""
        self.cache, self.labels = reshuffled_batches(self.cache, self.labels, generator)

    def measure_start(self, weight: FlatWeights) -> tuple[tuple[float, float], torch.Tensor]:
        """(mean robust loss, robust accuracy in percent) where ``weight`` stands, and the
        gradient of the first batch there: the next pass starts with that batch, so its forward
        serves both (the other batches are measured without grad first, in this order)."""
        sums = self._new_sums()
        for index in range(1, len(self.cache)):
            self._batch(index, None, sums)
        grad = self._batch(0, weight, sums)
        assert grad is not None
        return self._result(sums), grad

    def ascend(self, weight: FlatWeights, step: Callable[[torch.Tensor], torch.Tensor],
               first: torch.Tensor | None = None) -> None:
        """One pass of gradient *ascent* on the mean cross-entropy, ``weight += step(grad)`` per
        batch; ``first`` is the first batch's gradient when ``measure_start`` computed it."""
        for index in range(len(self.cache)):
            grad = first if index == 0 and first is not None else self._batch(index, weight, None)
            assert grad is not None
            weight.add_(step(grad))

    def measure(self) -> tuple[float, float]:
        """(mean robust loss, robust accuracy in percent) over the whole adversarial set."""
        sums = self._new_sums()
        for index in range(len(self.cache)):
            self._batch(index, None, sums)
        return self._result(sums)


def ascent_step(spec: MRCSpec, radius: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-batch ascent step of ``spec.ascent`` (docs/algorithm.md, "Ascent").

    "sgd": lr · g. "normalized": lr · radius · g/||g||_2 for p = 2, lr · radius · sign(g) for
    p = 'inf' (the steepest-ascent direction of each ball). Rescaling the layer by β scales the
    radius by β and leaves g's direction unchanged, so the normalized path scales by β exactly.
    """
    if spec.ascent == "sgd":
        return lambda grad: grad * spec.lr
    if spec.p == "inf":
        return lambda grad: grad.sign() * (spec.lr * radius)

    def normalized(grad: torch.Tensor) -> torch.Tensor:
        # A zero gradient (e.g. a dead ReLU layer) stays zero: no step. The clamp avoids 0/0
        # without reading the norm back to the host (no device synchronisation per batch).
        return grad * (spec.lr * radius / grad.norm(p=2).clamp_min(_TINY_NORM))

    return normalized


class _AscentProbe(Protocol):
    """What the ascent loop needs of a probe, one value per module it scores: ``_OneModule``
    (one module, in place) or ``rift.mrc_stacked.StackedProbe`` (a group at once)."""

    def reshuffle(self, generator: torch.Generator) -> None: ...

    def measure_start(self) -> tuple[list[tuple[float, float]], list[torch.Tensor]]: ...

    def ascend(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]],
               first: list[torch.Tensor] | None) -> None: ...

    def measure(self) -> list[tuple[float, float]]: ...


class _OneModule:
    """A ``_LossProbe`` and the one weight it perturbs in place, as an ``_AscentProbe``."""

    def __init__(self, probe: _LossProbe, weight: FlatWeights) -> None:
        self.probe, self.weight = probe, weight

    def reshuffle(self, generator: torch.Generator) -> None:
        self.probe.reshuffle(generator)

    def measure_start(self) -> tuple[list[tuple[float, float]], list[torch.Tensor]]:
        measured, grad = self.probe.measure_start(self.weight)
        return [measured], [grad]

    def ascend(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]],
               first: list[torch.Tensor] | None) -> None:
        (step,) = steps
        self.probe.ascend(self.weight, step, None if first is None else first[0])

    def measure(self) -> list[tuple[float, float]]:
        return [self.probe.measure()]


class _Worst:
    """One module's running worst case: the largest loss measured (Δ = 0, the baseline, counts)
    and the largest measured after a pass (it does not)."""

    def __init__(self, baseline: tuple[float, float]) -> None:
        self.worst_loss, self.accuracy_at_worst = baseline
        self.reached, self.accuracy_at_reached = -math.inf, baseline[1]

    def keep(self, measured: tuple[float, float]) -> None:
        if measured[0] > self.reached:
            self.reached, self.accuracy_at_reached = measured
        if measured[0] > self.worst_loss:
            self.worst_loss, self.accuracy_at_worst = measured

    def result(self, allow_negative: bool) -> tuple[float, float, float]:
        if allow_negative:
            return self.reached, self.accuracy_at_reached, self.reached
        return self.worst_loss, self.accuracy_at_worst, self.reached


class _Ascent:
    """The ascent of one or several weights (a group, in lock step), one pass at a time, with
    everything needed to stop after any pass and go on later with the same computations.

    Each ``advance`` runs a pass, projects onto the ball and measures where the pass ended. Before
    the last pass that measurement is ``measure_start`` (see ``_LossProbe``): it also computes the
    next pass's first gradient, kept here until that pass runs, so stopping in between changes
    nothing. With ``spec.reshuffle`` every pass draws a new batch order from one generator
    seeded with ``seed`` (per module: a group's modules share the draw each would get alone) and
    the measurement is separate. After any pass the running values (``results``) are lower
    bounds of the final ones: each is a running maximum.

    ``suspend`` puts the original weights back and keeps the perturbed ones aside (``rift.
    mrc_selection`` pauses modules); ``resume`` writes them in again, and ``replay_order`` gives a
    new probe the batch order the passes so far left.
    """

    def __init__(self, weights: Sequence[FlatWeights], spec: MRCSpec,
                 baseline: tuple[float, float], seed: int = 0) -> None:
        self.weights, self.spec, self.seed = list(weights), spec, seed
        self._originals: list[torch.Tensor] | None = [weight.read() for weight in self.weights]
        radii = [spec.eps * weight_norm(original, spec.p) for original in self._originals]
        self.radii = radii
        self.steps = [ascent_step(spec, radius) for radius in radii]
        self.generator = torch.Generator().manual_seed(seed) if spec.reshuffle else None
        self.trackers = [_Worst(baseline) for _ in self.weights]
        self.passes = 0
        self._first: list[torch.Tensor] | None = None  # the next pass's first gradients
        self._kept: list[torch.Tensor] | None = None  # perturbed values while suspended

    @property
    def finished(self) -> bool:
        return self.passes >= self.spec.steps

    def advance(self, probe: _AscentProbe) -> None:
        """One ascent pass, projected onto the ball, and the measurement where it ended."""
        assert self._originals is not None and not self.finished
        if self.generator is not None:
            probe.reshuffle(self.generator)  # a new order: the start was measured separately
            probe.ascend(self.steps, None)
        else:
            probe.ascend(self.steps, self._first)
            self._first = None
        with torch.no_grad():
            for weight, original, radius in zip(self.weights, self._originals, self.radii,
                                                strict=True):
                weight.copy_(original + project_onto_ball(weight.read() - original, radius,
                                                          self.spec.p))
        self.passes += 1
        if self.generator is None and not self.finished:
            measured, self._first = probe.measure_start()
        else:
            measured = probe.measure()
        for tracker, value in zip(self.trackers, measured, strict=True):
            tracker.keep(value)

    def results(self) -> list[tuple[float, float, float]]:
        """Per weight, (worst loss, accuracy at it, largest loss after a pass): the first two
        count Δ = 0 (the baseline) unless ``allow_negative``, the last never does."""
        return [tracker.result(self.spec.allow_negative) for tracker in self.trackers]

    def restore(self) -> None:
        """Write the original weights back (the ascent is over or suspended)."""
        if self._originals is not None:
            for weight, original in zip(self.weights, self._originals, strict=True):
                weight.copy_(original)

    def suspend(self) -> None:
        """Keep the perturbed weights aside and put the originals back. The originals are not
        kept: the model holds them again, and ``resume`` reads them from it."""
        self._kept = [weight.read() for weight in self.weights]
        self.restore()
        self._originals = None

    def resume(self) -> None:
        self._originals = [weight.read() for weight in self.weights]
        assert self._kept is not None
        for weight, kept in zip(self.weights, self._kept, strict=True):
            weight.copy_(kept)
        self._kept = None

    def replay_order(self, probe: _AscentProbe) -> None:
        """Give a fresh probe (batches in their first order) the order the passes so far left:
        the same draws again from a generator seeded alike."""
        if self.generator is not None:
            generator = torch.Generator().manual_seed(self.seed)
            for _ in range(self.passes):
                probe.reshuffle(generator)


def _criticality_of(
    weight: FlatWeights, probe: _LossProbe, spec: MRCSpec, baseline: tuple[float, float],
    seed: int = 0,
) -> tuple[float, float, float]:
    """(worst loss, accuracy at it, largest loss after a pass) of one module: see
    ``_criticalities_of``."""
    (result,) = _criticalities_of([weight], _OneModule(probe, weight), spec, baseline, seed)
    return result


def _criticalities_of(
    weights: Sequence[FlatWeights], probe: _AscentProbe, spec: MRCSpec,
    baseline: tuple[float, float], seed: int = 0,
) -> list[tuple[float, float, float]]:
    """Per weight, the whole ascent's ``_Ascent.results``: all ``spec.steps`` passes, each
    measured once (the point reached by pass k while pass k + 1 starts). Every weight is
    restored."""
    ascent = _Ascent(weights, spec, baseline, seed)
    try:
        while not ascent.finished:
            ascent.advance(probe)
    finally:
        ascent.restore()
    return ascent.results()


@dataclass
class _Scoring:
    """What every module's ascent shares in one ``module_robust_criticality`` call."""

    model: nn.Module
    traced: fx.GraphModule | None
    full: Segment
    image_batches: list[torch.Tensor]
    label_batches: list[torch.Tensor]
    spec: MRCSpec
    baseline: tuple[float, float]
    precision: str
    seed: int
    should_cancel: ShouldCancel | None
    on_backoff: Callable[[int, int], None] | None
    micro: int | None  # examples per part of a batch after out-of-memory; None: whole batches
    on_warning: Callable[[str], None] | None = None
    split_refused: bool = False  # a module's cached split failed segment_matches: full passes
    zero_gradient: Collection[str] = ()  # modules flagged (rift.mrc_zero_gradient)

    def segment_at(self, tensors: Sequence[torch.Tensor]) -> Segment:
        segment = split_at_parameters(self.traced, tensors) if self.traced is not None else None
        if segment is None:
            return self.full
        # A few examples through both ways, in fp32 (the question is the graph, not rounding);
        # no more than a part of a batch once batches had to be cut for memory.
        examples = min(_SPLIT_CHECK, self.micro or _SPLIT_CHECK)
        if not segment_matches(self.model, segment, self.image_batches[0][:examples]):
            message = ("the cached MRC engine's split of the model does not reproduce its output "
                       f"for {', '.join(self._names_of(tensors))} (an in-place operation such as "
                       "out.relu_() or x += y on a cached activation): it, and every later module "
                       "whose split differs alike (logged, not repeated here), runs full forward "
                       "passes (same values, slower)")
            logger.warning(message)
            if self.on_warning is not None and not self.split_refused:
                self.on_warning(message)
            self.split_refused = True
            return self.full
        return segment

    def _names_of(self, tensors: Sequence[torch.Tensor]) -> list[str]:
        return [name for name, parameter in self.model.named_parameters()
                if any(parameter is tensor for tensor in tensors)]

    def prefix_cache(self, segment: Segment) -> list[tuple[torch.Tensor, ...]]:
        device = self.image_batches[0].device
        with torch.no_grad(), autocast(device, self.precision):
            return [tuple(segment.prefix(x)) for x in self.image_batches]

    def row(self, name: str, weight: FlatWeights, result: tuple[float, float, float],
            seconds: float, passes: int | None = None, exact: bool = True) -> ModuleCriticality:
        worst_loss, accuracy, reached = result
        if not math.isfinite(worst_loss):
            raise NumericalError(
                f"the robust loss of module {name!r} diverged to {worst_loss} during the "
                "ascent; lower mrc.lr or mrc.eps", field="mrc.lr")
        return ModuleCriticality(
            name=name, parameters=weight.numel(), mrc=worst_loss - self.baseline[0],
            worst_robust_loss=worst_loss, robust_accuracy_at_worst=accuracy,
            robust_accuracy_drop=self.baseline[1] - accuracy, seconds=seconds,
            max_ascent_loss=reached, passes=self.spec.steps if passes is None else passes,
            exact=exact, zero_gradient=name in self.zero_gradient)


@contextlib.contextmanager
def _scoring_of(names: Sequence[str]) -> Iterator[None]:
    """An unexpected error raised while scoring ``names`` says which module(s) it was (a note:
    its type is kept, for the out-of-memory back-off and the worker's retries). A model whose
    code fails on one module's perturbed weight failed a job, or one MRC shard of it, with an
    error naming no module. Errors of this library already say what they are about."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, RiftError):
            exc.add_note(f"while scoring MRC module(s) {', '.join(names)}")
        raise


def _score_one(scoring: _Scoring, name: str) -> ModuleCriticality:
    """Module ``name`` alone, its weight perturbed in place (with out-of-memory back-off)."""
    started = time.perf_counter()
    weight = FlatWeights(module_weights(scoring.model, name))
    segment = scoring.segment_at(weight.tensors)
    probe = _LossProbe(segment, scoring.prefix_cache(segment), scoring.label_batches,
                       scoring.precision, scoring.should_cancel, micro=scoring.micro,
                       on_backoff=scoring.on_backoff)
    weight.requires_grad_(True)
    try:
        result = _criticality_of(weight, probe, scoring.spec, scoring.baseline, scoring.seed)
    finally:
        weight.requires_grad_(False)
    scoring.micro = probe.micro
    return scoring.row(name, weight, result, time.perf_counter() - started)


class _PausableModule:
    """One module's ascent under ``mrc.table = "selection"``, which ``rift.mrc_selection`` runs
    pass by pass and may pause: paused, the model holds the module's original weight and only
    the ascent's state is kept (its perturbed weight, next first gradient, trackers); the prefix
    cache is dropped and rebuilt on resume, so at most one module's cache is in memory. The
    passes are those of ``_score_one``, computation for computation, so a module run to the end
    gets the full table's row exactly."""

    def __init__(self, scoring: _Scoring, name: str) -> None:
        self.scoring, self.name = scoring, name
        self.weight = FlatWeights(module_weights(scoring.model, name))
        self.segment = scoring.segment_at(self.weight.tensors)
        self.ascent = _Ascent([self.weight], scoring.spec, scoring.baseline, scoring.seed)
        self.probe: _LossProbe | None = None
        self.seconds = 0.0
        self._open()  # the ascent starts from the model's weights, now

    def _open(self) -> None:
        scoring = self.scoring
        self.probe = _LossProbe(self.segment, scoring.prefix_cache(self.segment),
                                scoring.label_batches, scoring.precision, scoring.should_cancel,
                                micro=scoring.micro, on_backoff=scoring.on_backoff)
        self.ascent.replay_order(_OneModule(self.probe, self.weight))
        self.weight.requires_grad_(True)

    def _close(self) -> None:
        if self.probe is not None:
            self.scoring.micro = self.probe.micro
        self.probe = None
        self.weight.requires_grad_(False)

    def advance(self) -> tuple[float, float]:
        """The next pass; the module's running selection key (a lower bound of its final)."""
        started = time.perf_counter()
        if self.probe is None:
            self.ascent.resume()
            self._open()
        assert self.probe is not None
        try:
            self.ascent.advance(_OneModule(self.probe, self.weight))
        except BaseException:
            self._close()
            self.ascent.restore()
            raise
        worst_loss, _, reached = self.ascent.results()[0]
        self.seconds += time.perf_counter() - started
        return selection_key(worst_loss - self.scoring.baseline[0], reached)

    def pause(self) -> None:
        self.ascent.suspend()
        self._close()

    def finish(self, exact: bool) -> ModuleCriticality:
        """The row (the weight restored, the ascent's state dropped)."""
        if self.probe is not None:
            self.ascent.restore()
            self._close()
        (result,) = self.ascent.results()
        return self.scoring.row(self.name, self.weight, result, self.seconds,
                                passes=self.ascent.passes, exact=exact)


def _score_selection(scoring: _Scoring, names: Sequence[str], keep: int,
                     required: Collection[str], on_row: Callable[[ModuleCriticality], None],
                     screen: int = SCREEN_PASSES) -> list[ModuleCriticality]:
    """Rows of ``names`` in table order under ``mrc.table = "selection"``
    (``rift.mrc_selection``): the ``keep`` lowest and every module in ``required`` exact, the
    others possibly lower bounds. ``on_row`` is called once per module as it is final."""
    modules: dict[int, _PausableModule] = {}
    rows: dict[int, ModuleCriticality] = {}

    def advance(index: int) -> tuple[float, float]:
        raise_if_cancelled(scoring.should_cancel)
        with _scoring_of(names[index:index + 1]):
            if index not in modules:
                modules[index] = _PausableModule(scoring, names[index])
            return modules[index].advance()

    def finish(index: int, exact: bool) -> None:
        rows[index] = modules.pop(index).finish(exact)
        on_row(rows[index])

    try:
        run_selection(len(names), steps=scoring.spec.steps, keep=keep,
                      advance=advance, pause=lambda index: modules[index].pause(), finish=finish,
                      required={i for i, name in enumerate(names) if name in required},
                      screen=screen,
                      ineligible={i for i, name in enumerate(names)
                                  if name in scoring.zero_gradient})
    finally:
        for module in modules.values():  # a cancel or an error: every weight back as it was
            if module.probe is not None:
                module.ascent.restore()
                module._close()
    return [rows[index] for index in range(len(names))]


def _score_group(scoring: _Scoring, names: Sequence[str]) -> list[ModuleCriticality]:
    """Modules ``names`` together (``rift.mrc_stacked``); the model's weights are only read.
    Each row's ``seconds`` is the group's time divided evenly."""
    started = time.perf_counter()
    originals = [FlatWeights(module_weights(scoring.model, name)) for name in names]
    copies = [weight.detached_copy() for weight in originals]
    segment = scoring.segment_at([t for weight in originals for t in weight.tensors])
    probe = StackedProbe(segment, scoring.prefix_cache(segment), scoring.label_batches,
                         scoring.precision, scoring.should_cancel, originals, copies)
    results = _criticalities_of(copies, probe, scoring.spec, scoring.baseline, scoring.seed)
    seconds = (time.perf_counter() - started) / len(names)
    return [scoring.row(name, weight, result, seconds)
            for name, weight, result in zip(names, originals, results, strict=True)]


def _score_all(scoring: _Scoring, names: Sequence[str], group_size: int,
               on_warning: Callable[[str], None] | None = None) -> Iterator[ModuleCriticality]:
    """Every module of ``names`` in order, ``group_size`` consecutive modules at a time.

    A group that runs out of memory is scored again in groups of half its size (what it had done
    is discarded: the model was not written, and the batch orders are redrawn from the seed), and
    later groups keep the smaller size. Once the baseline or a module needed batches in parts
    (``_LossProbe``), modules are scored one at a time: K copies of a batch cannot fit where one
    did not. A group the stacked forward cannot run (an operation ``torch.func.vmap`` refuses)
    is scored one module at a time, as are all later ones. Each is logged and passed to
    ``on_warning``."""
    def warn(message: str) -> None:
        logger.warning("%s", message)
        if on_warning is not None:
            on_warning(message)

    position = 0
    while position < len(names):
        raise_if_cancelled(scoring.should_cancel)
        group = names[position:position + group_size]
        if len(group) == 1 or scoring.micro is not None:
            with _scoring_of(group[:1]):
                rows = [_score_one(scoring, group[0])]
        else:
            try:
                with _scoring_of(group):
                    rows = _score_group(scoring, group)
            except torch.OutOfMemoryError:
                group_size = max(1, len(group) // 2)
                warn(f"out of memory scoring {len(group)} modules at once in the MRC ascent; "
                     f"continuing with {group_size} (mrc.module_batch; the same table)")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # give the failed attempt's cached blocks back
                continue
            except (RuntimeError, NotImplementedError) as exc:
                warn(f"the MRC ascent cannot stack modules of this model "
                     f"({type(exc).__name__}: {exc}); scoring one module at a time "
                     "(as mrc.module_batch = 1; the same table)")
                group_size = 1
                continue
        yield from rows
        position += len(rows)


def module_robust_criticality(
    model: nn.Module,
    adversarial_images: torch.Tensor,
    labels: torch.Tensor,
    spec: MRCSpec,
    *,
    precision: str = "fp32",
    on_module: Callable[[ModuleCriticality, int, int], None] | None = None,
    should_cancel: ShouldCancel | None = None,
    seed: int = 0,
    on_backoff: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    candidates: int = 1,
    keep_exact: Collection[str] = (),
    screen: int = SCREEN_PASSES,
    done: Mapping[str, ModuleCriticality] | None = None,
    warn_settings: bool = True,
) -> MRCReport:
    """Score every selected module of ``model`` (``rift.scored_weights``) on a fixed adversarial
    set. Selected modules the output does not depend on are left out and listed in
    ``report.unreachable``; ``report.unscored`` names the parameters no row covers.

    ``adversarial_images`` (N, C, H, W) in [0, 1] and ``labels`` (N,) live on the model's device.
    The model is kept in eval mode (BatchNorm running statistics), every weight is left exactly as
    it was, and ``on_module(row, index, total)`` is called after each module. ``seed`` draws the
    batch orders when ``spec.reshuffle`` is set (the same for every module). On out-of-memory a
    batch is computed in smaller parts (see ``_LossProbe``), ``on_backoff(failed, next)`` is
    called, and later modules keep the smaller parts. ``spec.module_batch`` > 1 scores that many
    consecutive modules at once (``rift.mrc_stacked``; same table up to float rounding), in
    smaller groups after out-of-memory (``_score_all``), calling ``on_warning(message)``.

    ``spec.table == "selection"`` (``rift.mrc_selection``) runs only the passes that decide which
    ``candidates`` modules have the lowest MRC (and completes those of ``keep_exact``, e.g. the
    module ``finetune.module`` names); the other rows may be lower bounds (``exact`` False), and
    ``on_module`` is still called once per module, in the order they are final; ``screen`` is
    the passes every module gets first (``rift.mrc_selection.SCREEN_PASSES``; bench/mrc.py
    compares settings).

    ``done`` maps module names to rows computed earlier on the same inputs (the caller checks
    :func:`mrc_inputs_digest`; e.g. by an attempt of the stage that was stopped): those rows are
    taken as they are, not computed again, and listed in ``report.reused``; ``on_module`` is
    called for the computed rows only (``index`` counts the reused ones first). Exact, as each
    row is computed alone from the same inputs and seed. Only with ``spec.table == "full"``
    (under "selection" which passes a module runs depends on the others' values, so ``done`` is
    not used), and with ``mrc.module_batch`` > 1 only for whole groups at the table's start (a
    row scored in a group may differ from its row alone by float rounding).

    ``warn_settings`` False: the warnings that follow from the settings alone (``module_batch``
    not used under ``table = "selection"`` or in bf16) are logged, not passed to
    ``on_warning``: each shard of a sharded table would say them again, so one shard does.
    """
    # A user's float64 or half model scores its own dtype's inputs (rift.model_state).
    adversarial_images = adversarial_images.to(input_dtype(model))
    with frozen_except(model):
        names, unreachable = reachable_modules(model, select_modules(model, spec),
                                               adversarial_images[:1])
        traced = _trace_or_none(model, spec.engine)
        engine = "cached" if traced is not None else "full"
        image_batches = list(adversarial_images.split(spec.batch_size))
        label_batches = list(labels.split(spec.batch_size))

        full = full_model_segment(model)
        probe = _LossProbe(full, [(x,) for x in image_batches], label_batches, precision,
                           should_cancel, on_backoff=on_backoff)
        baseline = probe.measure()
        if not math.isfinite(baseline[0]):
            raise NumericalError(
                f"the robust loss of the original weights is {baseline[0]}: check the "
                "checkpoint and architecture.mean/std")
        report = MRCReport(baseline_robust_loss=baseline[0], baseline_robust_accuracy=baseline[1],
                           engine=engine, unreachable=unreachable,
                           unscored=scored_weights(model).unscored)
        report.zero_gradient = zero_gradient_modules(
            model, {name: module_weights(model, name) for name in names}, image_batches,
            label_batches, precision=precision, part_size=probe.micro)
        if report.zero_gradient:
            logger.warning("scored but never chosen, the loss's gradient w.r.t. their weights "
                           "is exactly zero on the MRC set: %s", report.zero_gradient)
        scoring = _Scoring(model, traced, full, image_batches, label_batches, spec, baseline,
                           precision, seed, should_cancel, on_backoff, probe.micro,
                           on_warning=on_warning, zero_gradient=frozenset(report.zero_gradient))
        del probe

        def setting_warning(message: str) -> None:
            logger.warning("%s", message)
            if on_warning is not None and warn_settings:
                on_warning(message)

        if spec.table == "selection":
            if isinstance(spec.module_batch, int) and spec.module_batch > 1:
                setting_warning("mrc.table 'selection' scores one module at a time (it pauses "
                                "and resumes modules one by one): mrc.module_batch "
                                f"{spec.module_batch} is not used")

            final = itertools.count()  # modules final so far: the progress index

            def on_row(row: ModuleCriticality) -> None:
                index = next(final)
                if on_module is not None:
                    on_module(row, index, len(names))

            report.modules = _score_selection(scoring, names, candidates, set(keep_exact), on_row,
                                              screen)
            return report
        group_size = modules_per_group(spec.module_batch, adversarial_images.device, precision)
        if group_size > 1 and precision != "fp32":
            setting_warning(FP32_ONLY)  # every module one at a time (rows reused alike)
            group_size = 1
        reused = _reusable_rows(names, done or {}, group_size)
        report.reused = [name for name in names if name in reused]
        computed = _score_all(scoring, [name for name in names if name not in reused],
                              group_size, on_warning)
        scored = 0
        for name in names:  # table order; the computed rows come in it too
            if name in reused:
                # A row stored before the flag existed is flagged as this call found.
                report.modules.append(dataclasses.replace(
                    reused[name], zero_gradient=name in scoring.zero_gradient))
                continue
            row = next(computed)
            report.modules.append(row)
            if on_module is not None:
                on_module(row, len(reused) + scored, len(names))
            scored += 1
        return report


def _reusable_rows(names: Sequence[str], done: Mapping[str, ModuleCriticality],
                   group_size: int) -> dict[str, ModuleCriticality]:
    """The rows of ``done`` that stand for ``names``' rows exactly: every exact one of them
    scored alone, or with groups of ``group_size`` > 1 only the whole groups at the start
    whose rows are all there (the groups a resumed run then makes are those an uninterrupted
    run made)."""
    usable = {name: row for name, row in done.items()
              if row.exact and row.name == name and row.passes is not None}
    if group_size <= 1:
        return {name: usable[name] for name in names if name in usable}
    prefix = 0
    while prefix < len(names) and names[prefix] in usable:
        prefix += 1
    prefix -= prefix % group_size
    return {name: usable[name] for name in names[:prefix]}


def _trace_or_none(model: nn.Module, engine: str) -> fx.GraphModule | None:
    if engine == "full":
        return None
    try:
        return trace(model)
    except Exception as exc:  # torch.fx raises many types on untraceable control flow
        if engine == "cached":
            raise ConfigError(
                f"the model cannot be traced with torch.fx ({type(exc).__name__}: {exc}); use "
                "mrc.engine='full' or 'auto'", field="mrc.engine") from exc
        logger.warning("torch.fx cannot trace %s (%s); MRC falls back to full forwards",
                       type(model).__name__, exc)
        return None


def merge_reports(parts: Sequence[MRCReport], module_order: Sequence[str]) -> MRCReport:
    """Join tables computed for disjoint module subsets (e.g. by several workers) into one,
    ordered as ``module_order``. All parts must share the same baseline (same adversarial set)."""
    if not parts:
        raise ConfigError("nothing to merge", field="mrc")
    first = parts[0]
    rows = {row.name: row for part in parts for row in part.modules}
    order = {name: i for i, name in enumerate(module_order)}
    merged = sorted(rows.values(), key=lambda row: order.get(row.name, len(order)))
    unreachable = [name for part in parts for name in part.unreachable]
    return MRCReport(first.baseline_robust_loss, first.baseline_robust_accuracy, merged,
                     first.engine, unreachable, first.unscored,
                     zero_gradient=[row.name for row in merged if row.zero_gradient])
