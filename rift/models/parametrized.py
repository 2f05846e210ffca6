"""Weights that a parametrization computes, folded into plain weights before a run.

A layer under ``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm`` or
``orthogonal`` (any ``torch.nn.utils.parametrize`` parametrization), or under the older hooks
``torch.nn.utils.weight_norm`` / ``spectral_norm``, holds no ``weight`` Parameter: its weight is
computed from other tensors (``weight_g`` and ``weight_v``; ``parametrizations.weight.original0``
and ``original1``; ``weight_orig`` with the power iteration's ``u`` and ``v``). Before this
module such a layer had no MRC row (a warning named "ParametrizedConv2d layers"), fine-tuning it
trained its bias alone (the weight's tensors sit in a submodule, or are not a ``weight``), and a
spectral norm's power iteration, which runs in train mode, moved ``u`` and ``v``, so the weight,
of every spectral-normed layer while another one was fine-tuned.

The paper scores, fine-tunes and interpolates a layer's weight. Scoring a parametrization's
tensors instead would be another quantity: a weight norm's direction ``v`` is scale-free (a
relative ball on it does not bound the weight's change), and interpolating ``g`` and ``v`` is not
interpolating the weight. So each such weight is folded into the plain ``Parameter`` it computes
(in eval mode: a spectral norm divides by the σ of its stored ``u`` and ``v``, no power
iteration), and every stage sees an ordinary layer. The weights a run writes then hold the plain
key (``conv.weight``) instead of the parametrization's keys; a checkpoint already holding the
plain keys (saved after ``remove_parametrizations``, or a run's own output) loads into the
folded model (:func:`holds_folded_weights`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize, remove_spectral_norm, remove_weight_norm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from rift.model_state import eval_mode

# Parametrization classes of torch.nn.utils.parametrizations → the function users call.
_KINDS = {"_WeightNorm": "weight_norm", "_SpectralNorm": "spectral_norm",
          "_Orthogonal": "orthogonal"}


@dataclass(frozen=True)
class FoldedWeight:
    """``name``: the plain tensor's name in the model (``conv.weight``); ``kind``: what computed
    it (``weight_norm``, ``spectral_norm``, ``orthogonal`` or a parametrization's class name);
    ``keys``: the state-dict keys it replaces."""

    name: str
    kind: str
    keys: tuple[str, ...]


def _hooks(module: nn.Module) -> list[WeightNorm | SpectralNorm]:
    return [hook for hook in module._forward_pre_hooks.values()
            if isinstance(hook, WeightNorm | SpectralNorm)]


def _hook_keys(prefix: str, hook: WeightNorm | SpectralNorm) -> tuple[str, ...]:
    suffixes = ("_g", "_v") if isinstance(hook, WeightNorm) else ("_orig", "_u", "_v")
    return tuple(f"{prefix}{hook.name}{suffix}" for suffix in suffixes)


def folded_layout(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """For each weight a parametrization of ``model`` computes: its plain state-dict key → the
    keys that hold it now. Read from the structure alone (no values: works on the meta device)."""
    layout: dict[str, tuple[str, ...]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(module):
            keys = list(module.state_dict())
            for tensor in module.parametrizations:
                inner = f"parametrizations.{tensor}."
                layout[prefix + tensor] = tuple(prefix + key for key in keys
                                                if key.startswith(inner))
        for hook in _hooks(module):
            layout[prefix + hook.name] = _hook_keys(prefix, hook)
    return layout


def holds_folded_weights(model: nn.Module, keys: Iterable[str]) -> bool:
    """Whether checkpoint ``keys`` hold ``model``'s parametrized weights as plain tensors (the
    model must be folded before loading them), rather than the parametrizations' tensors; at
    the top level or under a training wrapper's prefix (``model.conv.weight``: a Lightning
    module's, read by ``rift.checkpoint_layouts``), since the model's keys, which that layout
    is read against, depend on the answer."""
    layout = folded_layout(model)
    present = set(keys)
    prefixes = {key[: len(key) - len(plain)] for plain in layout for key in present
                if key == plain or key.endswith("." + plain)}
    for prefix in sorted(prefixes, key=len):
        under = {key[len(prefix):] for key in present if key.startswith(prefix)}
        if not any(key in under for held in layout.values() for key in held):
            return True
    return False


def _steps(module: nn.Module, tensor: str) -> nn.ModuleList:
    """The parametrizations computing ``tensor`` (a ``ParametrizationList``)."""
    steps = module.parametrizations[tensor]  # type: ignore[index]  # a ModuleDict there
    assert isinstance(steps, nn.ModuleList)
    return steps


def _kind(module: nn.Module, tensor: str) -> str:
    names = [type(step).__name__ for step in _steps(module, tensor)]
    return ", ".join(_KINDS.get(name, name) for name in names)


def fold_parametrized_weights(model: nn.Module) -> list[FoldedWeight]:
    """Replace every parametrized weight of ``model`` by the plain ``Parameter`` it computes now,
    in eval mode (the model's mode is restored); returns what was folded, in module order.
    A frozen parametrization (its tensors without ``requires_grad``) gives a frozen Parameter."""
    layout = folded_layout(model)
    folded: list[FoldedWeight] = []
    with eval_mode(model):
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module):
                for tensor in list(module.parametrizations):
                    kind = _kind(module, tensor)
                    trainable = any(p.requires_grad for p in _steps(module, tensor).parameters())
                    parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
                    _as_parameter(module, tensor, trainable)
                    folded.append(FoldedWeight(prefix + tensor, kind, layout[prefix + tensor]))
            for hook in _hooks(module):
                kind = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
                remove = remove_weight_norm if isinstance(hook, WeightNorm) \
                    else remove_spectral_norm
                remove(module, hook.name)
                folded.append(FoldedWeight(prefix + hook.name, kind, layout[prefix + hook.name]))
    return folded


def _as_parameter(module: nn.Module, tensor: str, trainable: bool) -> None:
    """``remove_parametrizations`` registers a buffer where the computed value did not require
    grad (frozen originals): MRC scores and fine-tuning trains Parameters, so make it one."""
    value = getattr(module, tensor)
    if not isinstance(value, nn.Parameter):
        delattr(module, tensor)
        module.register_parameter(tensor, nn.Parameter(value.detach(), requires_grad=trainable))
    else:
        value.requires_grad_(trainable)


def folding_warning(folded: list[FoldedWeight]) -> str:
    """The ``warning`` event for a run whose model had parametrized weights."""
    shown = "; ".join(f"{weight.name} ({weight.kind}; keys {', '.join(weight.keys)})"
                      for weight in folded[:4])
    more = f" and {len(folded) - 4} more" if len(folded) > 4 else ""
    return (
        f"{len(folded)} weight(s) are computed by a parametrization: {shown}{more}. RiFT folds "
        "each into the plain weight it computes from the checkpoint (in eval mode) and scores, "
        "fine-tunes and interpolates that weight, as the paper does a layer's weight; the "
        "weights it writes hold the plain key (e.g. "
        f"{folded[0].name}) instead: load them into the model after "
        "torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight') "
        "(torch.nn.utils.remove_weight_norm / remove_spectral_norm for the older hooks). "
        "A spectral norm or orthogonal constraint is not kept while fine-tuning")

