"""Which weights MRC scores, one row per weight tensor (docs/algorithm.md, "Which weights").

A row is a module and the one weight of it that the ascent perturbs:

* every convolution (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``) and ``Linear`` (subclasses
  included, e.g. ``nn.MultiheadAttention``'s ``out_proj``): its ``weight``;
* ``nn.MultiheadAttention`` with packed projections (the usual case, ViT's attention): its
  ``in_proj_weight``, a raw ``Parameter`` of the attention module that no submodule holds.

A ``Parameter`` is scored once, under the first module (in definition order) that holds it:
two modules sharing a weight (tied weights) are one row, since perturbing or fine-tuning one
moves both. Everything else is *unscored*: the biases of scored modules and the parameters of
normalisation layers by design (the paper perturbs weights only), and whatever else a model holds
(ViT's class token and position embedding, ConvNeXt's layer scales, separate q/k/v projections of
an attention with ``kdim != embed_dim``), which the pipeline names in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.parameter import UninitializedParameter

_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
# Parameters outside the table by design, not worth a warning: MRC perturbs weights, not these.
_NORMALIZATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def scored_weight(module: nn.Module) -> nn.Parameter | None:
    """The weight MRC perturbs in ``module`` (see the module docstring), or None."""
    if isinstance(module, _WEIGHT_MODULES):
        weight = module.weight
    elif isinstance(module, nn.MultiheadAttention):
        weight = module.in_proj_weight  # None when q, k and v have separate projections
    else:
        return None
    if not isinstance(weight, nn.Parameter) or isinstance(weight, UninitializedParameter):
        return None
    return weight


@dataclass(frozen=True)
class ScoredWeights:
    """``modules``: the scored modules' names in definition order, one per weight tensor.
    ``aliases``: a module whose weight is already scored under another name → that name.
    ``unscored``: parameter names outside every row, less biases of scored modules and
    normalisation parameters (see the module docstring)."""

    modules: list[str]
    aliases: dict[str, str]
    unscored: list[str]


def scored_weights(model: nn.Module) -> ScoredWeights:
    """The rows of ``model``'s MRC table, its weight aliases and its unscored parameters."""
    modules: list[str] = []
    aliases: dict[str, str] = {}
    owner_of: dict[int, str] = {}  # id(weight) → the module name that scores it
    covered: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        weight = scored_weight(module)
        if isinstance(module, _NORMALIZATION_MODULES):
            covered.update(id(p) for p in own)
        if weight is None:
            continue
        covered.update(id(p) for p in own)  # its biases are outside the table by design
        if id(weight) in owner_of:
            aliases[name] = owner_of[id(weight)]
            continue
        owner_of[id(weight)] = name
        modules.append(name)
    unscored = [name for name, p in model.named_parameters() if id(p) not in covered]
    return ScoredWeights(modules, aliases, unscored)
