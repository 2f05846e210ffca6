"""What a user who does not trust the service's numbers checks on a finished job's artifacts.

Written apart from the library on purpose: nothing here imports rift's attack, evaluation,
interpolation, MRC or checkpoint code. It uses only what a user of the service has anyway: the
architecture (``rift.models.build_model``, the network the job ran), the config parser and the
dataset reader (``rift.data.load_dataset``, whose pixel domain the checks below verify against the
raw files), plus torch and safetensors. Each check re-derives a reported number from the
downloaded files with a plain loop and says what it expected when it fails.

The checks (see ``docs/algorithm.md`` for the rules they hold the library to):

1. weights: θ_α* = (1 − α*)·θ_AT + α*·θ_FT for every floating entry, BatchNorm running statistics
   included; θ_FT differs from θ_AT only in the tuned module's own parameters and, under
   ``finetune.bn_stats: "update"``, in the running statistics of every BatchNorm layer (the whole
   network trains in train mode); integer counters (``num_batches_tracked``) keep θ_AT's value
   for α* < 1; keys are the architecture's state-dict keys (a ``module.`` prefix of the upload
   stripped), dtypes the architecture's, loadable with ``strict=True``.
2. accuracies: clean by a plain loop, robust by a plain L∞ PGD in pixel space (eps, step, steps
   of the config; no random start for exact agreement), on the split the config names.
3. MRC: the reported value is worst loss − baseline loss, the worst loss is reproduced by an
   ascent inside the relative ball (projected, its norm checked), and a longer brute-force ascent
   reaches at least it.
4. splits: the fine-tuning trained on the training split only (BatchNorm counters count its
   batches) and chose its epoch on the validation split (the epoch's reported accuracy is θ_FT's
   on that split).
5. report: the chosen point lies on the curve and follows the α rule, α = 0 is the before
   evaluation, every accuracy is a count over the split's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StateDict = dict[str, Tensor]

#: fp32 unit roundoff: a value computed once in fp32 (a lerp of two fp32 numbers) is within a few
#: of these, relative to the larger end point, of the exact mixture.
_FP32_EPS = float(torch.finfo(torch.float32).eps)
#: PGD and MRC losses from the same weights and inputs, computed batch by batch in another order:
#: the loss is an fp32 mean over examples, so its relative error is a few hundred fp32 ulps.
_LOSS_RTOL = 1e-4


# --------------------------------------------------------------------------- reading files


def read_user_checkpoint(path: Path) -> StateDict:
    """The uploaded checkpoint as a user reads it: safetensors, or a weights-only torch file
    whose ``state_dict`` container is unwrapped. Keys are as stored (prefixes kept)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    return {key: value for key, value in loaded.items() if isinstance(value, Tensor)}


def read_safetensors(data: bytes) -> tuple[StateDict, dict[str, str]]:
    """Tensors and header metadata (``__metadata__`` of the JSON header after its 8-byte length)
    of a downloaded safetensors file."""
    from safetensors.torch import load

    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    return dict(load(data)), dict(header.get("__metadata__") or {})


def without_wrapper_prefix(state: Mapping[str, Tensor]) -> StateDict:
    """Keys without a DataParallel ``module.`` (or ``torch.compile`` ``_orig_mod.``) prefix
    held by every key, as the README says the run's weight files are written."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


# --------------------------------------------------------------------------- 1. weights


@dataclass(frozen=True)
class WeightsExpectation:
    """What the downloaded θ_FT and θ_α* must be, relative to the uploaded θ_AT."""

    module: str  # the tuned module (named_modules name)
    alpha: float  # α*
    bn_stats: str  # "update" or "freeze"
    batches_per_epoch: int  # fine-tuning batches per epoch (the training split's size / batch)
    best_epoch: int  # the epoch θ_FT was kept at (1-based)


def _own_parameter_keys(model: nn.Module, module: str) -> set[str]:
    prefix = f"{module}." if module else ""
    return {prefix + name for name, _ in model.get_submodule(module).named_parameters(recurse=False)}


def _running_stat_keys(model: nn.Module) -> tuple[set[str], set[str]]:
    """(running mean/var keys, num_batches_tracked keys) of layers that keep running statistics."""
    floats: set[str] = set()
    counters: set[str] = set()
    for name, layer in model.named_modules():
        if isinstance(layer, nn.modules.batchnorm._NormBase) and layer.track_running_stats:
            prefix = f"{name}." if name else ""
            floats |= {prefix + "running_mean", prefix + "running_var"}
            counters.add(prefix + "num_batches_tracked")
    return floats, counters


def assert_mixture(tuned: Tensor, start: Tensor, end: Tensor, alpha: float, key: str) -> None:
    """``tuned`` is (1 − α)·start + α·end within what one fp32 rounding of a lerp can leave."""
    exact = (1 - alpha) * start.double() + alpha * end.double()
    scale = torch.maximum(start.double().abs(), end.double().abs())
    error = (tuned.double() - exact).abs()
    bound = 4 * _FP32_EPS * scale + 1e-30
    worst = float((error - bound).max()) if error.numel() else 0.0
    assert worst <= 0, (f"{key}: θ_α* is not (1 − α)θ_AT + αθ_FT at α = {alpha}: largest error "
                        f"{float(error.max()):.3g} beyond fp32 rounding")


def check_weights(model: nn.Module, theta_at_upload: Mapping[str, Tensor], tuned: Mapping[str, Tensor],
                  finetuned: Mapping[str, Tensor], expect: WeightsExpectation) -> None:
    """Check 1 (see the module docstring). ``model`` is the architecture the job ran (fresh);
    ``theta_at_upload`` the checkpoint as uploaded (a wrapper prefix allowed)."""
    theta_at = without_wrapper_prefix(theta_at_upload)
    architecture = model.state_dict()
    # Keys: the architecture's (a counter the upload lacked is the model's initial 0).
    assert set(tuned) == set(architecture), sorted(set(tuned) ^ set(architecture))
    assert set(finetuned) == set(architecture)
    stat_floats, counters = _running_stat_keys(model)
    missing = set(architecture) - set(theta_at)
    assert missing <= counters, f"the run's weights hold keys the upload lacks: {missing}"
    theta_at = {**{key: torch.zeros_like(architecture[key]) for key in missing}, **theta_at}
    # Loadable as they are, strictly, into a fresh model of the architecture.
    model.load_state_dict(dict(tuned), strict=True)
    model.load_state_dict(dict(finetuned), strict=True)

    own = _own_parameter_keys(model, expect.module)
    assert own, f"the tuned module {expect.module!r} has no parameters"
    moved = {key for key in architecture if not torch.equal(finetuned[key], theta_at[key])}
    assert moved & own, f"θ_FT equals θ_AT in the tuned module {expect.module!r}"
    allowed = own | (stat_floats | counters if expect.bn_stats == "update" else set())
    assert moved <= allowed, (f"θ_FT changed more than {expect.module!r} (bn_stats "
                              f"{expect.bn_stats}): {sorted(moved - allowed)}")
    if expect.bn_stats == "update":
        # Train mode moves every BatchNorm layer's statistics, before and after the tuned module.
        assert stat_floats <= moved, f"running statistics not updated: {sorted(stat_floats - moved)}"
    for key in counters:
        steps = expect.best_epoch * expect.batches_per_epoch if expect.bn_stats == "update" else 0
        assert int(finetuned[key]) == int(theta_at[key]) + steps, (
            f"{key}: θ_FT counted {int(finetuned[key]) - int(theta_at[key])} batches, the "
            f"training split gives {expect.batches_per_epoch} per epoch × best epoch "
            f"{expect.best_epoch}")

    alpha = expect.alpha
    for key, value in architecture.items():
        assert tuned[key].dtype == value.dtype == finetuned[key].dtype, key
        assert tuned[key].shape == value.shape, key
        start, end = theta_at[key].to(value.dtype), finetuned[key]
        if not value.is_floating_point():  # counters: not coordinates
            assert torch.equal(tuned[key], end if alpha == 1.0 else start), key
        elif alpha in (0.0, 1.0):  # the end points bit for bit
            assert torch.equal(tuned[key], start if alpha == 0.0 else end), key
        elif key in moved:
            assert_mixture(tuned[key], start, end, alpha, key)
        else:
            assert torch.equal(tuned[key], start), f"{key} differs from θ_AT"


# --------------------------------------------------------------------------- 2. accuracies


@dataclass(frozen=True)
class PlainPGD:
    """PGD written from Madry et al., on images in pixel units (the model holds its
    normalisation). L∞: δ ← clip_eps(δ + step·sign(∇δ CE)); L2: δ ← proj_eps(δ + step·g/||g||)
    per example; then x + δ is clipped into the domain."""

    eps: float
    step_size: float
    steps: int
    lower: float | None = 0.0
    upper: float | None = 1.0
    norm: str = "linf"

    def _step(self, delta: Tensor, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return (delta + self.step_size * grad.sign()).clamp(-self.eps, self.eps)
        shape = (-1, *([1] * (grad.dim() - 1)))
        delta = delta + self.step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        norms = delta.flatten(1).norm(dim=1).view(shape)
        return delta * (self.eps / norms.clamp_min(1e-12)).clamp(max=1.0)

    def _into_domain(self, images: Tensor) -> Tensor:
        if self.lower is not None:
            images = images.clamp(min=self.lower)
        if self.upper is not None:
            images = images.clamp(max=self.upper)
        return images

    def attack(self, model: nn.Module, images: Tensor, labels: Tensor,
               start: Tensor | None = None) -> Tensor:
        """Adversarial images; ``start`` is a random start in [−eps, eps] (None: from x)."""
        delta = torch.zeros_like(images) if start is None else start.clone()
        delta = self._into_domain(images + delta) - images
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(images + delta), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = self._step(delta.detach(), grad)
            delta = self._into_domain(images + delta) - images
        return (images + delta).detach()


def as_pixels(images: Tensor) -> Tensor:
    """Stored images as float pixels in [0, 1] (uint8 / 255; floats as they are)."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def clean_correct(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 256) -> Tensor:
    """Per-example clean correctness (bool), model in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(as_pixels(images[i:i + batch])).argmax(1) == labels[i:i + batch]
                          for i in range(0, len(labels), batch)])


def robust_correct(model: nn.Module, images: Tensor, labels: Tensor, attack: PlainPGD,
                   batch: int = 256, seed: int | None = None) -> Tensor:
    """Per-example robust correctness (bool) under ``attack``; ``seed`` draws uniform random
    starts (None: none)."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    outcomes = []
    for i in range(0, len(labels), batch):
        x, y = as_pixels(images[i:i + batch]), labels[i:i + batch]
        start = None
        if generator is not None:
            start = (torch.rand(x.shape, generator=generator) * 2 - 1) * attack.eps
        adversarial = attack.attack(model, x, y, start)
        with torch.no_grad():
            outcomes.append(model(adversarial).argmax(1) == y)
    return torch.cat(outcomes)


def percent_of(correct: Tensor) -> float:
    return 100.0 * int(correct.sum()) / len(correct)


def assert_count_over(accuracy: float, total: int, what: str) -> int:
    """``accuracy`` (percent) is k/total for an integer k; returns k."""
    count = accuracy * total / 100
    assert abs(count - round(count)) < 1e-6, f"{what} = {accuracy} is not a count over {total}"
    return round(count)


# --------------------------------------------------------------------------- 3. MRC


def relative_ball_ascent(model: nn.Module, weight: nn.Parameter, images: Tensor, labels: Tensor,
                         *, eps: float, steps: int, lr: float, batch: int,
                         start: Tensor | None = None, decay: float = 1.0
                         ) -> tuple[float, float, float]:
    """Projected normalized gradient ascent of the mean cross-entropy over ``weight`` inside
    {W + Δ : ||Δ||_F ≤ eps·||W||_F}, one step per batch of ``batch``, projected and measured
    after each pass over the set. Returns (largest loss measured after a pass, accuracy in
    percent there, largest ||Δ|| / ||W|| seen at a measurement); the weight is restored.
    ``decay`` multiplies the step after each pass; ``start`` is a first Δ (projected)."""
    original = weight.detach().clone()
    radius = eps * float(original.norm())

    def project(delta: Tensor) -> Tensor:
        norm = float(delta.norm())
        return delta * (radius / norm) if norm > radius else delta

    model.eval()
    flags = [(p, p.requires_grad) for p in model.parameters()]
    best, accuracy_at_best, widest = -math.inf, math.nan, 0.0
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(parameter is weight)
        if start is not None:
            with torch.no_grad():
                weight.copy_(original + project(start))
        step = lr * radius
        for _ in range(steps):
            for i in range(0, len(labels), batch):
                loss = F.cross_entropy(model(images[i:i + batch]), labels[i:i + batch])
                (grad,) = torch.autograd.grad(loss, weight)
                with torch.no_grad():
                    weight.add_(grad * (step / max(float(grad.norm()), 1e-30)))
            with torch.no_grad():
                weight.copy_(original + project(weight - original))
            widest = max(widest, float((weight.detach() - original).norm()) / float(original.norm()))
            loss_here, accuracy_here = mean_loss_and_accuracy(model, images, labels, batch)
            if loss_here > best:
                best, accuracy_at_best = loss_here, accuracy_here
            step *= decay
    finally:
        with torch.no_grad():
            weight.copy_(original)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    return best, accuracy_at_best, widest


def mean_loss_and_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 512
                           ) -> tuple[float, float]:
    model.eval()
    total, hits = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            logits = model(images[i:i + batch])
            total += float(F.cross_entropy(logits, labels[i:i + batch], reduction="sum"))
            hits += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return total / len(labels), 100.0 * hits / len(labels)


def check_mrc_table(mrc: Mapping[str, Any], lowest: str, *, allow_negative: bool = False
                    ) -> None:
    """The table's own arithmetic: MRC = worst − baseline, worst = max(baseline, ascent) (Δ = 0
    is in the ball) unless ``allow_negative``, drop = baseline accuracy − accuracy at worst, and
    ``lowest`` (the table's ``selected_module``, the job's ``metrics.lowest_mrc_module``) has the
    lowest (MRC, max_ascent_loss), first in table order on ties. The module fine-tuned is another
    where ``finetune.module`` names one or a sweep picks another candidate."""
    baseline, baseline_accuracy = mrc["baseline_robust_loss"], mrc["baseline_robust_accuracy"]
    for row in mrc["rows"]:
        name = row["name"]
        assert math.isclose(row["mrc"], row["worst_robust_loss"] - baseline,
                            rel_tol=1e-9, abs_tol=1e-12), name
        expected_worst = (row["max_ascent_loss"] if allow_negative
                          else max(baseline, row["max_ascent_loss"]))
        assert math.isclose(row["worst_robust_loss"], expected_worst, rel_tol=1e-12), name
        if not allow_negative:
            assert row["mrc"] >= 0, name
            if row["worst_robust_loss"] == baseline:  # no pass rose above Δ = 0
                assert row["robust_accuracy_at_worst"] == baseline_accuracy, name
        assert math.isclose(row["robust_accuracy_drop"],
                            baseline_accuracy - row["robust_accuracy_at_worst"], abs_tol=1e-9), name
    order = sorted(range(len(mrc["rows"])), key=lambda i: (
        mrc["rows"][i]["mrc"], mrc["rows"][i]["max_ascent_loss"], i))
    assert mrc["rows"][order[0]]["name"] == lowest, (lowest, mrc["rows"])


# --------------------------------------------------------------------------- 5. report


def check_curve(points: Sequence[Mapping[str, Any]], chosen_alpha: float, *, tolerance: float,
                total: int, before: Mapping[str, Any] | None) -> None:
    """Check 5 on one interpolation curve measured on ``total`` examples. ``before``: the
    reported θ_AT figures when they were measured on the same split (else None)."""
    alphas = [p["alpha"] for p in points]
    assert alphas[0] == 0.0 and alphas[-1] == 1.0 and alphas == sorted(alphas), alphas
    chosen = [p for p in points if p["alpha"] == chosen_alpha]
    assert len(chosen) == 1, (chosen_alpha, alphas)
    point = chosen[0]
    baseline = points[0]["robust_accuracy"]
    assert baseline is not None and point["robust_accuracy"] is not None
    for p in points:
        assert_count_over(p["clean_accuracy"], total, f"clean accuracy at α = {p['alpha']}")
        for field in ("robust_accuracy", "robust_accuracy_at_most"):
            if p.get(field) is not None:
                assert_count_over(p[field], total, f"{field} at α = {p['alpha']}")
    bar = baseline - tolerance - 1e-9
    assert point["robust_accuracy"] >= bar
    # No point with more clean accuracy keeps the bar (measured, or bounded from above).
    for p in points:
        robust = p["robust_accuracy"] if p["robust_accuracy"] is not None \
            else p.get("robust_accuracy_at_most")
        if p["clean_accuracy"] > point["clean_accuracy"]:
            assert robust is not None and robust < bar, (p, point)
        elif p["clean_accuracy"] == point["clean_accuracy"] and p is not point:
            # Ties: the higher robust accuracy, then the smaller α.
            assert robust is not None, (p, point)
            assert robust < bar or robust < point["robust_accuracy"] or (
                robust == point["robust_accuracy"] and p["alpha"] > point["alpha"]), (p, point)
    if before is not None:
        assert before["clean_accuracy"] == points[0]["clean_accuracy"]
        assert before["robust_accuracy"] == baseline


def multiset(images: Tensor) -> list[bytes]:
    """Each example's bytes, sorted: a split's content regardless of order."""
    return sorted(bytes(example.contiguous().numpy().tobytes()) for example in images.cpu())


def same_examples(first: Tensor, second: Tensor) -> bool:
    return multiset(first) == multiset(second)
