"""Several modules' MRC ascent passes in one forward/backward (``mrc.module_batch``).

For a group of K modules the network is split once, at all of their weights together
(``rift.segments.split_at_parameters``), so the cached prefix ends before the group's first module.
The suffix then runs K copies of every batch at once with ``torch.func.vmap`` over weights
stacked along a new leading dimension: copy j sees module j's perturbed weights and every other
module's original ones. Copies do not interact (the model is in eval mode, BatchNorm uses its
running statistics), so copy j's loss, accuracy and gradient are those of scoring module j alone,
up to float rounding: copy j recomputes the layers between the group's first module and module j,
which the one-module engine takes from its cache, and a convolution with a stacked weight may run
a different kernel (a grouped convolution).

What it buys: one launch of K·B examples instead of K launches of B, which pays where one batch
leaves an accelerator idle. What it costs: each copy also runs the layers from the group's first
module to its own, and every stacked weight's gradient is computed for all K copies (only copy j's
is used). On a CPU, which one batch already keeps busy, that is a net loss (README, "MRC speed").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import vmap

from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.device import autocast
from rift.evaluation import correct_predictions
from rift.flat_weights import FlatWeights
from rift.model_state import functional_call_restoring
from rift.segments import Segment

logger = logging.getLogger(__name__)

#: Modules per group under ``mrc.module_batch = "auto"`` on an accelerator: a guess not yet
#: measured on one (bench/gpu_suite.sh "stacked" measures it); out-of-memory halves it.
AUTO_ACCELERATOR_GROUP = 4

Measured = tuple[float, float]  # (mean robust loss in nats, robust accuracy in percent)


#: Why groups need fp32: with a stacked weight, ``vmap``'s convolution rule runs below autocast,
#: so a bf16 run would compute a group's convolutions in fp32 (or fail on a bf16 cached input:
#: "Input type (CPUBFloat16Type) and weight type (torch.FloatTensor) should be the same", torch
#: 2.14 on the CPU), not as the one-module engine does.
FP32_ONLY = ("mrc.module_batch > 1 needs precision fp32 (torch.func.vmap does not apply bf16 "
             "autocast to convolutions with stacked weights); scoring one module at a time")


def modules_per_group(setting: int | str, device: torch.device, precision: str = "fp32") -> int:
    """``mrc.module_batch`` as a number: an int is itself; "auto" is 1 on a CPU (one module's
    batch already keeps its cores busy: bench/results/mrc_module_batch_resnet18_cpu.json) or
    in bf16 (``FP32_ONLY``), and ``AUTO_ACCELERATOR_GROUP`` otherwise."""
    if isinstance(setting, int):
        return setting
    return 1 if device.type == "cpu" or precision != "fp32" else AUTO_ACCELERATOR_GROUP


def reshuffled_batches(cache: list[tuple[torch.Tensor, ...]], labels: list[torch.Tensor],
                       generator: torch.Generator
                       ) -> tuple[list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """The examples of ``cache``/``labels`` in a new order drawn from ``generator`` (one
    ``randperm`` of all examples), cut into batches of the same sizes. Both probes use it, so a
    module scored in a group sees the batch orders it would see alone."""
    examples = sum(len(y) for y in labels)
    order = torch.randperm(examples, generator=generator).to(labels[0].device)
    sizes = [len(y) for y in labels]
    columns = [torch.cat(parts)[order].split(sizes) for parts in zip(*cache, strict=True)]
    return list(zip(*columns, strict=True)), list(torch.cat(labels)[order].split(sizes))


class StackedProbe:
    """The suffix of a group's split run for K perturbed copies at once: ascent passes and loss
    measurements, each returning one value per module (the interface of ``rift.mrc``'s
    one-module probe, ``_OneModule``).

    ``originals[j]`` are module j's weight tensors inside the model (never written here);
    ``copies[j]`` hold its perturbed values outside the model (``FlatWeights.detached_copy``), which
    the ascent steps and projections update exactly as the one-module engine updates the weight in
    place. Out-of-memory is not handled here: the caller scores the group again in smaller groups.
    """

    def __init__(self, segment: Segment, cache: list[tuple[torch.Tensor, ...]],
                 labels: list[torch.Tensor], precision: str, should_cancel: ShouldCancel | None,
                 originals: Sequence[FlatWeights], copies: Sequence[FlatWeights]) -> None:
        self.segment, self.cache, self.labels = segment, cache, labels
        self.precision, self.should_cancel = precision, should_cancel
        self.examples = sum(len(y) for y in labels)
        self.originals, self.copies = list(originals), list(copies)
        # One name per weight: ``functional_call`` (tie_weights=True) gives a tied weight's
        # other names the same value, and refuses two values for one tied weight.
        names: dict[int, str] = {}
        for name, parameter in segment.suffix.named_parameters():
            names.setdefault(id(parameter), name)
        self._slots = [(names[id(tensor)], module, position)
                       for module, weights in enumerate(self.originals)
                       for position, tensor in enumerate(weights.tensors)]

    def _stacked(self) -> dict[str, torch.Tensor]:
        """Each group weight as K copies along a new first dimension: copy j of module j's
        weight is its perturbed value (gradients flow to it), every other copy the original."""
        count, values = len(self.copies), {}
        for name, module, position in self._slots:
            original = self.originals[module].tensors[position].detach()
            values[name] = torch.stack([self.copies[module].tensors[position] if copy == module
                                        else original for copy in range(count)])
        return values

    def _logits(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(K, batch, classes) logits of the K copies, in fp32."""
        def one_copy(weights: dict[str, torch.Tensor], *cached: torch.Tensor) -> torch.Tensor:
            return functional_call_restoring(self.segment.suffix, weights, cached).float()

        in_dims = (0, *(None for _ in inputs))  # the weights vary, the cached inputs are shared
        return vmap(one_copy, in_dims=in_dims)(self._stacked(), *inputs)

    def _new_sums(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        device = self.labels[0].device
        return [(torch.zeros((), dtype=torch.float64, device=device),
                 torch.zeros((), dtype=torch.int64, device=device)) for _ in self.copies]

    def _results(self, sums: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Measured]:
        return [(float(loss) / self.examples, 100.0 * float(hits) / self.examples)
                for loss, hits in sums]

    def _batch(self, index: int, with_grad: bool,
               sums: list[tuple[torch.Tensor, torch.Tensor]] | None) -> list[torch.Tensor] | None:
        """Per module, the gradient of batch ``index``'s mean loss w.r.t. its copy as one vector
        (None: no gradient), adding each copy's summed loss and hits to ``sums`` when given."""
        raise_if_cancelled(self.should_cancel)
        inputs, labels = self.cache[index], self.labels[index]
        with torch.set_grad_enabled(with_grad):
            with autocast(labels.device, self.precision):
                logits = self._logits(inputs)
            # One cross-entropy per copy, as the one-module engine computes it.
            losses = [F.cross_entropy(copy_logits, labels, reduction="sum")
                      for copy_logits in logits]
        if sums is not None:
            for (loss_sum, hit_sum), loss, copy_logits in zip(sums, losses, logits, strict=True):
                loss_sum.add_(loss.detach().double())
                hit_sum.add_(correct_predictions(copy_logits.detach(), labels).sum())
        if not with_grad:
            return None
        size = len(labels)
        tensors = [tensor for copy in self.copies for tensor in copy.tensors]
        # Copy j's loss reads only copy j of each stacked weight, so the gradient of the sum
        # w.r.t. module j's copy is that of its own loss.
        grads = torch.autograd.grad(torch.stack(losses).sum() / size, tensors)
        out, start = [], 0
        for copy in self.copies:
            out.append(copy.flatten(grads[start:start + len(copy.tensors)]))
            start += len(copy.tensors)
        return out

    def reshuffle(self, generator: torch.Generator) -> None:
        """Redraw which examples form each batch (same batch sizes), from ``generator``: the
        same draw as the one-module probe's, so every module sees the order it would alone."""
        self.cache, self.labels = reshuffled_batches(self.cache, self.labels, generator)

    def measure_start(self) -> tuple[list[Measured], list[torch.Tensor]]:
        """Each module's (loss, accuracy) where its copy stands, and each copy's gradient on the
        first batch (the forward the next pass starts with), as the one-module probe does."""
        sums = self._new_sums()
        for index in range(1, len(self.cache)):
            self._batch(index, False, sums)
        grads = self._batch(0, True, sums)
        assert grads is not None
        return self._results(sums), grads

    def ascend(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]],
               first: list[torch.Tensor] | None) -> None:
        """One ascent pass for every module, ``copy_j += steps[j](grad_j)`` per batch; ``first``
        holds the first batch's gradients when ``measure_start`` computed them."""
        for index in range(len(self.cache)):
            grads = first if index == 0 and first is not None else self._batch(index, True, None)
            assert grads is not None
            for copy, step, grad in zip(self.copies, steps, grads, strict=True):
                copy.add_(step(grad))

    def measure(self) -> list[Measured]:
        """Each module's (mean robust loss, robust accuracy in percent) over the whole set."""
        sums = self._new_sums()
        for index in range(len(self.cache)):
            self._batch(index, False, sums)
        return self._results(sums)
