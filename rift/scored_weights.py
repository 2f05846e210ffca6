"""Which weights MRC scores, one row per module (docs/algorithm.md, "Which weights").

A row is a module and the weight tensors of it that the ascent perturbs, as one vector (their
concatenation: one ball, one norm, one step):

* every convolution (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``), ``Linear`` (subclasses
  included, e.g. ``nn.MultiheadAttention``'s ``out_proj``) and ``Bilinear``: its ``weight``;
* ``nn.MultiheadAttention``: its query, key and value projections, raw ``Parameter`` s of the
  attention module that no submodule holds. Packed (the usual case, ViT's attention), that is
  ``in_proj_weight`` = [W_q; W_k; W_v]; with ``kdim`` or ``vdim`` unlike ``embed_dim`` the three
  are separate (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``) and are scored together,
  as the one vector the packed tensor would be, so both forms of one attention score alike.

Weight tensors are scored once, under the first module (in definition order) that holds them:
two modules sharing a weight (tied weights) are one row, since perturbing or fine-tuning one
moves both. (Rows are compared whole: an attention whose ``k_proj_weight`` alone is tied to
another layer's weight would be two rows sharing that tensor; README, "Known gaps".)
Everything else is *unscored*: the biases of scored modules and the parameters of
normalisation layers by design (the paper perturbs weights only), and whatever else a model holds
as a raw ``Parameter`` (ViT's class token and position embedding, Swin's relative-position
tables, ConvNeXt's layer scales) or in a layer that is not a weighted map of its input
(``nn.Embedding``'s lookup table): the paper scores layers, and such a tensor is not one, so the
pipeline names it in a warning, by kind (:func:`unscored_kinds`), rather than guess a ball for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import prune

_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)
# Parameters outside the table by design, not worth a warning: MRC perturbs weights, not these.
_NORMALIZATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_SEPARATE_PROJECTIONS = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def scored_parameters(module: nn.Module) -> tuple[nn.Parameter, ...]:
    """The weight tensors MRC perturbs together in ``module`` (see the module docstring), in a
    fixed order; empty when ``module`` is not scored (or its weights are not materialised yet,
    as in a lazy layer before its first call)."""
    found: tuple[object, ...]
    if isinstance(module, _WEIGHT_MODULES):
        found = (module.weight,)
    elif isinstance(module, nn.MultiheadAttention):
        packed = module.in_proj_weight  # None when q, k and v have separate projections
        found = (packed,) if packed is not None else tuple(
            getattr(module, name) for name in _SEPARATE_PROJECTIONS)
    else:
        return ()
    if not all(isinstance(weight, nn.Parameter) and not isinstance(weight, UninitializedParameter)
               for weight in found):
        return ()
    return tuple(weight for weight in found if isinstance(weight, nn.Parameter))


@dataclass(frozen=True)
class ScoredWeights:
    """``modules``: the scored modules' names in definition order, one per row (a row's weight
    tensors are held by no other row, see :func:`scored_weights`).
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
    owner_of: dict[tuple[int, ...], str] = {}  # ids of a row's weights → the module scoring them
    covered: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        weights = scored_parameters(module)
        if isinstance(module, _NORMALIZATION_MODULES):
            covered.update(id(p) for p in own)
        if not weights:
            continue
        covered.update(id(p) for p in own)  # its biases are outside the table by design
        key = tuple(id(weight) for weight in weights)
        if key in owner_of:
            aliases[name] = owner_of[key]
            continue
        owner_of[key] = name
        modules.append(name)
    unscored = [name for name, p in model.named_parameters() if id(p) not in covered]
    return ScoredWeights(modules, aliases, unscored)


def second_names(model: nn.Module) -> dict[str, str]:
    """Names under which ``model`` holds a module it already holds under an earlier name (one
    module object registered twice, ``self.again = self.block``) → that first name.
    ``named_modules`` lists such a module once, under its first name, so the MRC table, the
    tuned module and the event names use that one; the second name was refused as "not a
    module of the model" or an unknown module although ``model.again`` is one."""
    first: dict[int, str] = {}
    found: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in first:
            if name != first[id(module)]:
                found[name] = first[id(module)]
        else:
            first[id(module)] = name
    return found


#: What :func:`scored_parameters` scores, in words for a refusal.
SCORED_KINDS = "convolutions, linear and bilinear layers and attention projections"


def unscored_reason(model: nn.Module, name: str, scored: ScoredWeights) -> str | None:
    """Why the module ``name`` of ``model`` has no row of ``scored`` (its
    :func:`scored_weights`), as words that follow the quoted name: a weight scored under another
    name, a pruned layer, or a module of a kind MRC does not score (a BatchNorm, a container,
    with the scored modules inside it); None for a row or a name that is no module (or one
    registered under a second name: :func:`second_names`). One wording for every setting that
    names modules (``mrc.modules``, ``finetune.module``)."""
    module = dict(model.named_modules()).get(name)
    if name in scored.aliases:
        return (f"shares its weight with {scored.aliases[name]!r} (a shared weight is scored "
                "once, under the first module holding it)")
    if module is None or name in scored.modules:
        return None
    if is_pruned(module):
        return ("is pruned with torch.nn.utils.prune: a hook makes its weight from "
                "weight_orig × weight_mask at every call, so it holds no weight Parameter MRC "
                "could perturb (make the pruning permanent with prune.remove(module, 'weight') "
                "before saving to score it)")
    inside = [row for row in scored.modules if row.startswith(f"{name}.")]
    return (f"is a {type(module).__name__}, which MRC does not score (it scores {SCORED_KINDS}: "
            "rift/scored_weights.py)"
            + (f"; the scored modules inside it are e.g. {inside[:8]}" if inside else ""))


def unscored_kinds(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """The parameters ``names`` of ``model`` (``ScoredWeights.unscored``) by why they have no
    row: under ``"raw Parameter"`` those a model's own code holds directly (class tokens,
    position tables, layer scales), under a layer's type name (e.g. ``"Embedding"``) those of a
    ``torch.nn`` layer kind MRC does not score. Keys in first-seen order."""
    kinds: dict[str, list[str]] = {}
    for name in names:
        owner = model.get_submodule(name.rpartition(".")[0])
        layer = type(owner).__module__.startswith("torch.nn.")
        kind = (PRUNED if is_pruned(owner) else type(owner).__name__ if layer
                else "raw Parameter")
        kinds.setdefault(kind, []).append(name)
    return kinds


#: The kind of :func:`unscored_kinds` for the parameters of a layer pruned with
#: ``torch.nn.utils.prune``: its ``weight`` is a plain tensor that a forward pre-hook makes from
#: ``weight_orig × weight_mask`` before every call, so it is no Parameter to perturb or train
#: (perturbing it in place would be overwritten by the hook), and the layer has no row.
PRUNED = "pruned layer"


def is_pruned(module: nn.Module) -> bool:
    """Whether ``module`` is pruned with ``torch.nn.utils.prune`` (see :data:`PRUNED`)."""
    return any(isinstance(hook, prune.BasePruningMethod)
               for hook in module._forward_pre_hooks.values())
