"""Robust accuracy counted chunk by chunk in a fixed example order, stopping once a bar is out of
reach (``rift.robust_tally``); the evaluation behind the α curve (``rift.interpolation``).

Two properties make an early-stopped count a prefix of the full one, so that stopping never
changes a verdict:

* The order and the chunks are fixed before the attack starts: they depend on the data, the chunk
  size and, for α > 0, on per-example facts both curve modes know (:func:`likely_failures_first`),
  never on whether the caller will stop.
* Each example's random start is drawn from its own generator, seeded by the evaluation seed and
  the example's index in the data (:func:`rift.evaluation.example_noise`), so an example starts
  from the same point whatever chunk, order or batch size it is attacked in. Two points of the
  curve therefore attack every example from the same start, a paired comparison with the bar, and
  a full count equals :func:`rift.evaluation.evaluate_accuracy`'s up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rift.attacks import PGD
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.data import ImageTensors, iterate_batches
from rift.device import autocast
from rift.evaluation import RandomStarts, correct_predictions
from rift.model_state import frozen_except
from rift.robust_tally import RobustTally

# At most this many chunks per evaluation: an early stop overshoots its verdict by at most one
# chunk, 1/32 of the examples, while chunks stay as large as the batch size allows otherwise.
STOP_CHECKS = 32
# ...but no chunk below this on a CPU (unless the batch size is): an attack call has a fixed
# cost, and on small sets 1/32 is a handful of examples. On the digits demo job (449 examples,
# small_cnn, CPU) chunks of 15 made the stage 2.7x slower than chunks of 64 for 7 % fewer
# attacked examples.
MIN_STOP_CHUNK = 64
# ...and on a CPU a heavier model needs fewer: a chunk of this many forward FLOPs of the model
# (torch's count, :func:`example_flops`) already runs at full speed there. One thread, PGD-5, CPU
# ms per attacked example by chunk size (1 / 2 / 4 / 8 / 16 / 32 / 64 examples): ResNet-18 on
# 32×32 images (1.1 GFLOP) 159 / 94 / 73 / 71 / 66 / 68 / -, so it gets 16, the fastest, where
# a stop is settled 4× sooner than with 64; small_cnn on 8×8 digits (0.3 MFLOP) 1.58 / 1.59 /
# 0.83 / 0.45 / 0.26 / 0.16 / 0.12 keeps 64.
CPU_MIN_CHUNK_FLOPS: float | None = 16 * 1.1e9  # None: MIN_STOP_CHUNK for every model
# On an accelerator (CUDA, MPS...) no chunk below the batch size (None), or below this number:
# there a PGD step's kernels cost about the same for a few dozen examples as for a whole batch.
# On an H100, chunks of 16 made a 21-point PGD-10 curve of 512 ResNet-18 CIFAR images take 64 s
# (3 s per α for 32 calls × 10 steps), where the time of a batch-sized call is a fraction of it.
ACCELERATOR_MIN_STOP_CHUNK: int | None = None


def stop_chunk(total: int, batch_size: int, device: torch.device | None = None,
               flops_per_example: float | None = None) -> int:
    """Examples attacked between two checks of the verdict on ``device`` (a CPU when None):
    ≤ ``batch_size``, ≥ 1. ``flops_per_example`` (:func:`example_flops`) lowers a CPU's floor
    for a heavy model; it depends only on the model and the input shape, so both curve modes,
    and every run of a job, get the same chunks."""
    floor = MIN_STOP_CHUNK
    if device is not None and device.type != "cpu":
        floor = batch_size if ACCELERATOR_MIN_STOP_CHUNK is None else ACCELERATOR_MIN_STOP_CHUNK
    elif CPU_MIN_CHUNK_FLOPS is not None and flops_per_example is not None and flops_per_example > 0:
        floor = max(1, min(floor, math.ceil(CPU_MIN_CHUNK_FLOPS / flops_per_example)))
    chunk = min(batch_size, max(floor, math.ceil(total / STOP_CHECKS)))
    return max(1, min(chunk, total))


@torch.no_grad()
def example_flops(model: nn.Module, data: ImageTensors, *, device: torch.device) -> float | None:
    """Forward FLOPs of ``model`` on one example of ``data`` as torch counts them (convolutions,
    matrix products, attention; ``torch.utils.flop_counter``), or None when the set is empty or
    nothing was counted. A function of the model and the input shape only, never of timing."""
    if len(data) == 0:
        return None
    images, _ = next(iterate_batches(data.select(torch.arange(1)), 1, device=device))
    try:
        with frozen_except(model), FlopCounterMode(display=False) as counter:
            model(images)
    except (RuntimeError, TypeError, NotImplementedError):
        # Only a finer stop granularity rests on the count: a model the counter cannot run keeps
        # the default floor, and any real fault of its forward surfaces in the attack itself.
        return None
    flops = counter.get_total_flops()
    return float(flops) if flops > 0 else None


def _margins(logits: Tensor, labels: Tensor) -> Tensor:
    """The true class's logit less the best other one (negative: misclassified)."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return true - logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)


@dataclass(frozen=True, eq=False)
class CleanOutcomes:
    """One clean pass: ``correct`` (N,) bool on the CPU (:func:`correct_predictions`: a row
    with a NaN or infinite logit is never correct) and ``finite`` (N,) bool, whether every
    logit of the example was finite."""

    correct: Tensor
    finite: Tensor


@torch.no_grad()
def clean_outcomes(model: nn.Module, data: ImageTensors, *, batch_size: int,
                   device: torch.device, precision: str = "fp32",
                   should_cancel: ShouldCancel | None = None) -> CleanOutcomes:
    """Whether each example is classified correctly, and whether its logits were finite."""
    correct, finite = [], []
    with frozen_except(model):
        for images, labels in iterate_batches(data, batch_size, device=device):
            raise_if_cancelled(should_cancel)
            with autocast(images.device, precision):
                logits = model(images).float()
            correct.append(correct_predictions(logits, labels).cpu())
            finite.append(torch.isfinite(logits).all(1).cpu())
    if not correct:
        return CleanOutcomes(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    return CleanOutcomes(torch.cat(correct), torch.cat(finite))


def clean_correct(model: nn.Module, data: ImageTensors, *, batch_size: int, device: torch.device,
                  precision: str = "fp32", should_cancel: ShouldCancel | None = None) -> Tensor:
    """Whether each example is classified correctly: a (N,) bool tensor on the CPU."""
    return clean_outcomes(model, data, batch_size=batch_size, device=device, precision=precision,
                          should_cancel=should_cancel).correct


@dataclass(frozen=True, eq=False)
class Attacked:
    """What :func:`attack_until` found. ``robust``: (N,) bool on the CPU, True where an attacked
    example stayed correct; ``margin``: (N,) float, the adversarial logit margin of each attacked
    example (NaN for those never attacked)."""

    tally: RobustTally
    robust: Tensor
    margin: Tensor


def likely_failures_first(clean: Tensor, baseline: Attacked) -> Tensor:
    """An example order for attacking θ_α: misclassified clean at α first (their attack almost
    always fails), then those θ_AT's attack broke, then the rest; inside each part by θ_AT's
    adversarial margin, thinnest first. A point below the bar is then shown to miss it after little
    more than its failures are attacked: on three digits curves this order attacked 3–12 % more
    examples than an oracle knowing every outcome would, data order 54–112 % more."""
    order = torch.argsort(baseline.margin, stable=True)
    likely_robust = clean.to(torch.int64) * 2 + baseline.robust.to(torch.int64)
    return order[torch.argsort(likely_robust[order], stable=True)]


def attack_until(
    model: nn.Module,
    data: ImageTensors,
    attack: PGD,
    *,
    at_least: int,
    chunk: int,
    device: torch.device,
    seed: int,
    order: Tensor | None = None,
    precision: str = "fp32",
    should_cancel: ShouldCancel | None = None,
    random_starts: RandomStarts | None = None,
) -> Attacked:
    """Attack ``data`` in ``order`` (data order when None), ``chunk`` examples at a time, and stop
    after the first chunk that leaves the count certainly below ``at_least`` (0: attack all).

    ``random_starts`` (made with ``seed`` over ``data``) keeps the random starts for the next
    call on the same data; without it they are drawn again.

    The model is in eval mode throughout and gets back its mode and gradient flags.
    """
    total = len(data)
    order = torch.arange(total) if order is None else order.cpu()
    # Without a kept table, every start is drawn afresh (a budget of 0 keeps nothing).
    starts = random_starts if random_starts is not None else RandomStarts(seed, total, max_bytes=0)
    robust = torch.zeros(total, dtype=torch.bool)
    margin = torch.full((total,), math.nan)
    correct = attacked = 0
    steps = attack.steps if attack.eps and attack.steps else 0
    with frozen_except(model):
        for start in range(0, total, chunk):
            if RobustTally(correct, attacked, total).cannot_reach(at_least):
                break
            raise_if_cancelled(should_cancel)
            index = order[start:start + chunk]
            images, labels = next(iterate_batches(data.select(index), len(index), device=device))
            noise = starts.draw(index, tuple(images.shape[1:])) if attack.random_start else None
            adversarial = attack.perturb(model, images, labels, precision=precision,
                                         should_cancel=should_cancel, noise=noise)
            with torch.no_grad(), autocast(adversarial.device, precision):
                logits = model(adversarial).float()
            kept = correct_predictions(logits, labels).cpu()
            robust[index] = kept
            margin[index] = _margins(logits, labels).cpu()
            correct += int(kept.sum())
            attacked += len(index)
    return Attacked(RobustTally(correct, attacked, total, attacked * steps), robust, margin)
