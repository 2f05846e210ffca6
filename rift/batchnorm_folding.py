"""BatchNorm folded into the convolution before it, for evaluations (clean passes and PGD).

In eval mode a BatchNorm is a fixed per-channel affine map, y = γ (x − μ) / √(σ² + ε) + β, so a
convolution followed by it is one convolution with scaled weights and a bias: the same function up
to float rounding, with one elementwise pass less forward and backward. Evaluations always run
the model in eval mode with frozen parameters (``rift.model_state.frozen_except``), whatever
``finetune.bn_stats`` says, so they may use a folded copy; fine-tuning and MRC never do (they
change weights or need BatchNorm's own gradients).

On a CPU in fp32 the interpolation stage of a PGD-trained ResNet-18 (64 CIFAR-size images, PGD-5)
measured 6 % less CPU time folded (``bench/evaluation_speed.py``; the convolutions, which folding
leaves as they are, are ~88 % of a PGD step). Outcomes agree up to rounding: a PGD step takes the
sign of the input gradient, so an example whose gradient entry is ~0 may step the other way, but
counts and the chosen α matched on every bench and test run.

The graph comes from ``torch.fx`` (traced once per model; a model fx cannot trace is evaluated
unfolded). A layer and the BatchNorm after it are folded only where the fold is the same function
for every value of their weights (:func:`_exact_pairs`): each module called at one place, the
layer's output read by the BatchNorm alone, nothing else in the graph reading the layer's tensors,
no hooks on either (a backward hook changes PGD's gradient, which no forward check sees), running
statistics, and for a Linear a 2-D output (BatchNorm1d normalises dim 1, the Linear's features only
there). A model with no such pair is evaluated itself. The first folded copy is also checked
against the model on a few inputs, as a guard against what these rules do not foresee: a check at
θ_AT alone cannot see a wrong fold whose error vanishes at θ_AT's weights (a BatchNorm still at
its identity statistics, fine-tuned later), which is why the rules come first.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_weights

from rift.model_state import frozen_except

# A folded copy's logits may differ from the model's by rounding only; a wrong graph (e.g. a
# traced branch that differs from the model's forward) differs by far more.
_CHECK_RTOL = 1e-3
#: Inputs the first folded copy is checked on (``BatchNormFolding``'s ``probe``).
FOLD_CHECK_EXAMPLES = 8
#: (layer, BatchNorm) module types folded, exactly these classes: a subclass may compute
#: something else in its forward (a weight-standardised convolution, a scaled BatchNorm).
_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
          (nn.Linear, nn.BatchNorm1d))
# Dtypes a fold keeps to rounding: in half or bfloat16 the scaled weight is rounded again.
_FOLD_DTYPES = (torch.float32, torch.float64)
#: A pair of graph nodes to fold, by name: (the layer's call, the BatchNorm's call).
FoldPair = tuple[str, str]


def folds_on(device: torch.device, precision: str) -> bool:
    """Whether ``evaluation.fold_batchnorm: "auto"`` folds on ``device`` at ``precision``: on a
    CPU in fp32, where it was measured (under bf16 autocast the folded weights are rounded to
    bf16 after scaling, a larger change than fp32 rounding; on a GPU it is not measured)."""
    return device.type == "cpu" and precision == "fp32"


class BatchNormFolding:
    """Folded eval-mode copies of one model, made again for each new set of weights.

    ``model`` keeps its submodules: the traced graph shares them, so :meth:`current` reads the
    weights loaded into ``model`` at the time of the call. ``probe``: a few inputs of the data
    evaluated, for the one-time check that the folded graph computes the model's function (and
    the shapes that decide whether a Linear's BatchNorm folds).
    """

    def __init__(self, model: nn.Module, probe: Tensor) -> None:
        self.model = model
        self._probe = probe[:FOLD_CHECK_EXAMPLES]
        self._traced: fx.GraphModule | None = None
        self._pairs: list[FoldPair] = []
        self._usable: bool | None = None  # None: not yet tried

    @property
    def folding(self) -> bool | None:
        """True once a folded copy passed the check, False when folding was ruled out (no pair
        folds exactly, or the check failed), None before the first :meth:`current`."""
        return self._usable

    def current(self) -> nn.Module:
        """An eval-mode copy of ``model`` with its present weights, BatchNorm folded (parameters
        frozen), or ``model`` itself when it cannot be folded."""
        if self._usable is False:
            return self.model
        with frozen_except(self.model):
            if self._usable is None:
                self._usable = self._prepare()
                if not self._usable:
                    return self.model
            assert self._traced is not None
            folded = folded_copy(self._traced, self._pairs)
        for parameter in folded.parameters():
            parameter.requires_grad_(False)
        return folded

    def _prepare(self) -> bool:
        """Trace, find the exact pairs and check the first folded copy (model in eval mode)."""
        if self._probe.numel() == 0:
            return False
        traced = _trace(self.model)
        if traced is None:
            return False
        self._pairs = _exact_pairs(traced, self._probe)
        if not self._pairs:
            return False
        try:
            folded = folded_copy(traced, self._pairs)
        except Exception:  # a layout the fusion functions refuse: evaluate unfolded
            return False
        self._traced = traced
        return _same_function(self.model, folded, self._probe)


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return fx.symbolic_trace(model)
    except Exception:
        return None


def _has_hooks(module: nn.Module) -> bool:
    return any((module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                module._backward_pre_hooks))


def _output_dims(traced: fx.GraphModule, probe: Tensor) -> dict[str, int] | None:
    """Number of dimensions of each tensor node's output on ``probe`` (None: cannot tell)."""
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(probe)
    except Exception:
        return None
    dims = {}
    for node in traced.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            dims[node.name] = len(meta.shape)
    return dims


def _exact_pairs(traced: fx.GraphModule, probe: Tensor) -> list[FoldPair]:
    """The (layer, BatchNorm) calls of ``traced`` whose fold is the model's function for any
    weights (module docstring): a fold replaces a module everywhere it is used, so the layer and
    the BatchNorm must each be called at this one place, and the layer's output and tensors
    must reach nothing but this BatchNorm."""
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    # Anything reading a layer's weight or bias directly (F.conv2d(x, self.conv.weight)) would
    # read the folded copy's scaled tensors.
    read = [str(node.target) for node in traced.graph.nodes if node.op == "get_attr"]
    dims: dict[str, int] | None = None
    pairs: list[FoldPair] = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        layer_node = node.args[0]
        if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module":
            continue
        name, bn_name = str(layer_node.target), str(node.target)
        layer, bn = modules.get(name), modules.get(bn_name)
        if layer is None or bn is None or (type(layer), type(bn)) not in _PAIRS:
            continue
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if (calls[name] != 1 or calls[bn_name] != 1 or len(layer_node.users) != 1
                or bn.running_mean is None or bn.running_var is None
                or _has_hooks(layer) or _has_hooks(bn)
                or any(target == name or target.startswith(name + ".") for target in read)
                or any(t.dtype not in _FOLD_DTYPES for t in (*layer.parameters(),
                                                              *bn.parameters(), *bn.buffers())
                       if t.is_floating_point())):
            continue
        if isinstance(layer, nn.Linear):
            dims = _output_dims(traced, probe) if dims is None else dims
            if dims is None or dims.get(layer_node.name) != 2:
                continue
        pairs.append((layer_node.name, node.name))
    return pairs


def _fused(layer: nn.Module, bn: nn.Module) -> nn.Module:
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return fuse_conv_bn_eval(layer, bn)
    assert isinstance(layer, nn.Linear)
    # torch's fuse_linear_bn_eval multiplies by the BatchNorm's weight even where it has none
    # (affine=False: γ = 1, β = 0), a TypeError that stopped the stage.
    assert bn.running_mean is not None and bn.running_var is not None
    ones = torch.ones_like(bn.running_mean)
    fused = copy.deepcopy(layer)
    fused.weight, fused.bias = fuse_linear_bn_weights(
        layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
        bn.weight if bn.weight is not None else ones,
        bn.bias if bn.bias is not None else torch.zeros_like(ones))
    return fused


def folded_copy(traced: fx.GraphModule, pairs: list[FoldPair]) -> fx.GraphModule:
    """A copy of ``traced`` (eval mode, present weights) with each pair's BatchNorm folded into
    its layer; ``traced`` itself is left as it is."""
    model = copy.deepcopy(traced).eval()
    nodes = {node.name: node for node in model.graph.nodes}
    for layer_name, bn_name in pairs:
        layer_node, bn_node = nodes[layer_name], nodes[bn_name]
        target = str(layer_node.target)
        parent, _, attribute = target.rpartition(".")
        fused = _fused(model.get_submodule(target), model.get_submodule(str(bn_node.target)))
        setattr(model.get_submodule(parent), attribute, fused)
        bn_node.replace_all_uses_with(layer_node)
        model.graph.erase_node(bn_node)
    model.delete_all_unused_submodules()
    model.recompile()
    return model


@torch.no_grad()
def _same_function(model: nn.Module, folded: nn.Module, probe: Tensor) -> bool:
    expected, got = model(probe).float(), folded(probe).float()
    if expected.shape != got.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=_CHECK_RTOL, atol=_CHECK_RTOL * scale))
