"""Split a network at one weight so only the part after it is recomputed.

During MRC the model is in eval mode and the adversarial set is fixed, so every activation that does
not depend on the perturbed weight is a constant. ``split_at_parameters`` traces the network with
torch.fx and returns a *prefix* (input -> the activations that the weight's readers and everything
downstream of them read) and a *suffix* (those activations -> logits). Caching the prefix outputs
once per module turns each of the 2·steps passes into a pass over the suffix only
(docs/algorithm.md, "Cost": ~n/2 layers on average).

A weight may be read in several places: a module called twice, two modules holding one tied
``Parameter``, a functional read of ``module.weight``, or a leaf module (``nn.MultiheadAttention``)
that holds a linear layer and calls it from inside. The split is taken at *every* node that reads
it, so the prefix never holds a value computed from the weight (caching such a value would score
a perturbation that only reaches some of its uses).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn


@dataclass
class Segment:
    """``suffix(*prefix(x))`` equals ``model(x)``; ``prefix`` never depends on the split weight."""

    prefix: nn.Module
    suffix: nn.Module
    cached_values: int  # how many tensors the prefix hands to the suffix


class _Identity(nn.Module):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (images,)


def full_model_segment(model: nn.Module) -> Segment:
    """The trivial split: nothing cached, the suffix is the whole model (the fallback path)."""
    return Segment(prefix=_Identity(), suffix=model, cached_values=1)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``. The GraphModule shares the model's parameters (no copy), so
    perturbing a weight of ``model`` in place is seen by every segment built from the trace."""
    return fx.symbolic_trace(model)


def split_at_parameters(traced: fx.GraphModule, parameters: Sequence[torch.Tensor]
                        ) -> Segment | None:
    """Split ``traced`` at every node that reads one of ``parameters`` (compared by identity;
    several when an MRC row perturbs several tensors together): a ``call_module`` of a module
    holding it, directly or in a submodule, or a ``get_attr`` of it. ``None`` when the graph
    reads none of them or the output does not depend on them."""
    graph = traced.graph
    readers = [node for node in graph.nodes
               if any(_reads(traced, node, parameter) for parameter in parameters)]
    if not readers:
        return None
    output_node = next(n for n in graph.nodes if n.op == "output")

    downstream: set[fx.Node] = set()
    for reader in readers:
        downstream |= _downstream_of(reader)
    if not any(arg in downstream for arg in output_node.all_input_nodes):
        return None

    # Values produced outside the downstream set but read inside it: the cache. Attribute reads
    # (parameters, buffers) are constants and are copied into the suffix instead of being cached.
    frontier: list[fx.Node] = []
    for node in graph.nodes:
        if node in downstream:
            for arg in node.all_input_nodes:
                if arg not in downstream and arg not in frontier and arg.op != "get_attr":
                    frontier.append(arg)

    prefix_graph = fx.Graph()
    prefix_env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            break
        if node in downstream:
            continue
        prefix_env[node] = prefix_graph.node_copy(node, lambda n: prefix_env[n])
    prefix_graph.output(tuple(prefix_env[n] for n in frontier))
    prefix = fx.GraphModule(traced, prefix_graph)
    # Drop what only the suffix needed (e.g. layers after the module on a parallel branch).
    prefix.graph.eliminate_dead_code()
    prefix.recompile()

    suffix_graph = fx.Graph()
    suffix_env: dict[fx.Node, fx.Node] = {}
    for index, node in enumerate(frontier):
        suffix_env[node] = suffix_graph.placeholder(f"cached_{index}")
    for node in graph.nodes:
        reads_constant = node.op == "get_attr" and any(u in downstream for u in node.users)
        if reads_constant or node in downstream:
            suffix_env[node] = suffix_graph.node_copy(node, lambda n: suffix_env[n])
    suffix_graph.output(fx.map_arg(output_node.args[0], lambda n: suffix_env[n]))

    return Segment(
        prefix=prefix,
        suffix=fx.GraphModule(traced, suffix_graph),
        cached_values=len(frontier),
    )


# The cached split runs the same operations as the model, so it agrees up to kernel rounding (an
# accelerator may pick other algorithms per call); a dropped or reordered in-place operation
# moves the output by the size of an activation.
_MATCH_RTOL = 1e-3


def segment_matches(model: nn.Module, segment: Segment, images: torch.Tensor) -> bool:
    """Whether ``segment`` computes what ``model`` does on ``images``: ``suffix(*prefix(x))``
    equals ``model(x)``, twice on the same cached values, which it leaves unchanged.

    An in-place operation can break the split where the model is right: one whose result is
    not used (``out.relu_()`` before ``out.mean()``) is dead code to torch.fx and dropped from
    the prefix; one in the prefix runs before suffix operations that read its tensor earlier in
    the model; one in the suffix writing into a cached value changes it for every later pass.
    """
    with torch.no_grad():
        expected = model(images)
        cached = tuple(segment.prefix(images))
        kept = [value.clone() if isinstance(value, torch.Tensor) else value for value in cached]
        outputs = [segment.suffix(*cached) for _ in range(2)]
    unchanged = all(not isinstance(value, torch.Tensor) or torch.equal(value, copy)
                    for value, copy in zip(cached, kept, strict=True))
    scale = max(1.0, float(expected.abs().max()))
    return unchanged and all(
        isinstance(output, torch.Tensor) and output.shape == expected.shape
        and torch.allclose(output.float(), expected.float(), rtol=_MATCH_RTOL,
                           atol=_MATCH_RTOL * scale) for output in outputs)


def _reads(traced: fx.GraphModule, node: fx.Node, parameter: torch.Tensor) -> bool:
    if node.op == "call_module":
        module = traced.get_submodule(str(node.target))
        return any(held is parameter for held in module.parameters())
    if node.op == "get_attr":
        return _attribute(traced, str(node.target)) is parameter
    return False


def _attribute(root: nn.Module, target: str) -> object:
    try:
        return functools.reduce(getattr, target.split("."), root)
    except AttributeError:
        return None


def _downstream_of(start: fx.Node) -> set[fx.Node]:
    """``start`` and every node that (transitively) reads its value, excluding the output node."""
    seen: set[fx.Node] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node in seen or node.op == "output":
            continue
        seen.add(node)
        stack.extend(node.users)
    return seen
