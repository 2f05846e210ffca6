"""Module Robust Criticality (RIFT.md step 1, the paper's Algorithm 1).

    MRC(i) = max_{Δ ∈ C_i} R(f(θ + Δ), D) − R(f(θ), D),   C_i = {Δ : ||Δ^(i)||_p ≤ ε ||θ^(i)||_p}

R is the mean cross-entropy on a fixed set of adversarial examples made once on θ. The maximum is
approached by gradient ascent on module i's weight (plain SGD, lr 1 by default), one pass over the
adversarial set per step, projecting Δ back onto the ball after each pass and measuring R after it.

The weight is perturbed in place and restored afterwards (no copy of the model). With
``engine="cached"`` only the network after the module is recomputed: see ``rift.segments``.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from rift.config import MRCSpec
from rift.device import autocast
from rift.errors import ConfigError, JobCancelled
from rift.segments import Segment, full_model_segment, split_at_module, trace

logger = logging.getLogger(__name__)

PERTURBABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


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

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class MRCReport:
    baseline_robust_loss: float
    baseline_robust_accuracy: float
    modules: list[ModuleCriticality] = field(default_factory=list)
    engine: str = "cached"

    def lowest(self) -> ModuleCriticality:
        """The non-robust-critical module: the one with the smallest MRC (first on ties)."""
        if not self.modules:
            raise ConfigError("no module was scored, so none can be selected", field="mrc")
        return min(self.modules, key=lambda row: row.mrc)


def perturbable_modules(model: nn.Module) -> list[str]:
    """Names of every Conv2d and Linear module, in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, PERTURBABLE_TYPES)]


def select_modules(model: nn.Module, spec: MRCSpec) -> list[str]:
    """Apply ``spec.modules`` (an explicit subset) and the include/exclude fnmatch patterns."""
    candidates = perturbable_modules(model)
    if spec.modules is not None:
        unknown = [name for name in spec.modules if name not in candidates]
        if unknown:
            raise ConfigError(
                f"unknown module(s) {unknown}; conv/linear modules of this model are e.g. "
                f"{candidates[:8]}", field="mrc.modules")
        wanted = set(spec.modules)
        candidates = [name for name in candidates if name in wanted]
    if spec.include:
        candidates = [n for n in candidates if any(fnmatch.fnmatchcase(n, p) for p in spec.include)]
    if spec.exclude:
        candidates = [n for n in candidates
                      if not any(fnmatch.fnmatchcase(n, p) for p in spec.exclude)]
    if not candidates:
        raise ConfigError("the module selection (modules/include/exclude) matches no conv or "
                          "linear module", field="mrc.include")
    return candidates


def make_adversarial_set(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: object,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Adversarial versions of ``images`` (on their device) made once on θ, in batches."""
    parts = []
    for start in range(0, len(images), batch_size):
        parts.append(attack.perturb(  # type: ignore[attr-defined]
            model, images[start:start + batch_size], labels[start:start + batch_size],
            generator=generator, precision=precision))
    return torch.cat(parts)


def project_onto_ball(delta: torch.Tensor, radius: float, p: int | str) -> torch.Tensor:
    """Nearest point of {Δ : ||Δ||_p ≤ radius} for p = 2 (Frobenius) or 'inf' (elementwise)."""
    if p == "inf":
        return delta.clamp(-radius, radius)
    norm = float(delta.norm(p=2))
    return delta * (radius / norm) if norm > radius else delta


def module_weight(model: nn.Module, name: str) -> nn.Parameter:
    """The ``weight`` parameter of the conv/linear module ``name``."""
    weight = model.get_submodule(name).weight
    if not isinstance(weight, nn.Parameter):
        raise ConfigError(f"module {name!r} has no weight parameter", field="mrc.modules")
    return weight


def weight_norm(weight: torch.Tensor, p: int | str) -> float:
    return float(weight.abs().max()) if p == "inf" else float(weight.norm(p=2))


class _LossProbe:
    """Runs the suffix over cached prefix outputs: ascent passes and loss measurements."""

    def __init__(self, segment: Segment, cache: list[tuple[torch.Tensor, ...]],
                 labels: list[torch.Tensor], precision: str,
                 should_cancel: Callable[[], bool] | None) -> None:
        self.segment, self.cache, self.labels = segment, cache, labels
        self.precision, self.should_cancel = precision, should_cancel
        self.examples = sum(len(y) for y in labels)

    def _check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise JobCancelled()

    def ascend(self, weight: nn.Parameter, lr: float) -> None:
        """One pass of SGD *ascent* on the mean cross-entropy, a step per batch."""
        for inputs, labels in zip(self.cache, self.labels, strict=True):
            self._check_cancel()
            with autocast(labels.device, self.precision):
                logits = self.segment.suffix(*inputs)
            loss = F.cross_entropy(logits.float(), labels)
            (grad,) = torch.autograd.grad(loss, weight)
            with torch.no_grad():
                weight.add_(grad.to(weight.dtype), alpha=lr)

    @torch.no_grad()
    def measure(self) -> tuple[float, float]:
        """(mean robust loss, robust accuracy in percent) over the whole adversarial set."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.labels[0].device)
        correct = torch.zeros((), dtype=torch.int64, device=self.labels[0].device)
        for inputs, labels in zip(self.cache, self.labels, strict=True):
            self._check_cancel()
            with autocast(labels.device, self.precision):
                logits = self.segment.suffix(*inputs).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
        return float(loss_sum) / self.examples, 100.0 * float(correct) / self.examples


def _criticality_of(
    weight: nn.Parameter, probe: _LossProbe, spec: MRCSpec, baseline: tuple[float, float]
) -> tuple[float, float]:
    """Worst (loss, accuracy) over the ascent, Δ = 0 included; the weight is restored after."""
    original = weight.detach().clone()
    radius = spec.eps * weight_norm(original, spec.p)
    worst_loss, accuracy_at_worst = baseline
    try:
        for _ in range(spec.steps):
            probe.ascend(weight, spec.lr)
            with torch.no_grad():
                weight.copy_(original + project_onto_ball(weight - original, radius, spec.p))
            loss, accuracy = probe.measure()
            if loss > worst_loss:
                worst_loss, accuracy_at_worst = loss, accuracy
    finally:
        with torch.no_grad():
            weight.copy_(original)
    return worst_loss, accuracy_at_worst


def module_robust_criticality(
    model: nn.Module,
    adversarial_images: torch.Tensor,
    labels: torch.Tensor,
    spec: MRCSpec,
    *,
    precision: str = "fp32",
    on_module: Callable[[ModuleCriticality, int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> MRCReport:
    """Score every selected conv/linear module of ``model`` on a fixed adversarial set.

    ``adversarial_images`` (N, C, H, W) in [0, 1] and ``labels`` (N,) live on the model's device.
    The model is kept in eval mode (BatchNorm running statistics), every weight is left exactly as
    it was, and ``on_module(row, index, total)`` is called after each module.
    """
    names = select_modules(model, spec)
    was_training = model.training
    model.eval()
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        traced = _trace_or_none(model, spec.engine)
        engine = "cached" if traced is not None else "full"
        image_batches = list(adversarial_images.split(spec.batch_size))
        label_batches = list(labels.split(spec.batch_size))

        full = full_model_segment(model)
        baseline = _LossProbe(full, [(x,) for x in image_batches], label_batches, precision,
                              should_cancel).measure()
        report = MRCReport(baseline_robust_loss=baseline[0], baseline_robust_accuracy=baseline[1],
                           engine=engine)
        for index, name in enumerate(names):
            started = time.perf_counter()
            segment = split_at_module(traced, name) if traced is not None else None
            segment = segment or full
            with torch.no_grad(), autocast(adversarial_images.device, precision):
                cache = [tuple(segment.prefix(x)) for x in image_batches]
            probe = _LossProbe(segment, cache, label_batches, precision, should_cancel)
            weight = module_weight(model, name)
            weight.requires_grad_(True)
            try:
                worst_loss, accuracy = _criticality_of(weight, probe, spec, baseline)
            finally:
                weight.requires_grad_(False)
            del cache, probe
            row = ModuleCriticality(
                name=name,
                parameters=weight.numel(),
                mrc=worst_loss - baseline[0],
                worst_robust_loss=worst_loss,
                robust_accuracy_at_worst=accuracy,
                robust_accuracy_drop=baseline[1] - accuracy,
                seconds=time.perf_counter() - started,
            )
            report.modules.append(row)
            if on_module is not None:
                on_module(row, index, len(names))
        return report
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(grad_flags[name])
        model.train(was_training)


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
    return MRCReport(first.baseline_robust_loss, first.baseline_robust_accuracy, merged,
                     first.engine)
