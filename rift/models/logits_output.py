"""Logits out of an installed architecture whose forward returns a structure.

Every stage (attacks, MRC, fine-tuning in train mode, evaluation) calls the model and reads
(N, num_classes) logits. An installed architecture (``rift.architectures`` entry point) may return
them inside a structure, as many research models do; :func:`logits_of` takes them out where
the structure says unambiguously which entry they are:

* a ``Mapping`` with a ``"logits"`` tensor (e.g. ``{"logits": ..., "features": ...}``);
* a namedtuple with a ``logits`` field;
* any other object with a ``logits`` tensor attribute (a dataclass, Hugging Face's output
  classes);
* a tuple or list whose first element is a 2-D tensor and no other element is a tensor of the
  same shape (``(logits, features)``; ``(logits, aux_logits)`` could be either way round and is
  refused).

Anything else is refused with a :class:`ConfigError` naming the type and what it holds.
:func:`return_logits` makes the model itself return the logits, so no caller needs to know: its
class is swapped for a subclass whose ``forward`` applies :func:`logits_of`. The model keeps its
parameters, buffers, module names and state-dict keys (a wrapping module would prefix every
key and every MRC row name), and torch.fx traces the new ``forward`` like the old one, with
:func:`logits_of` as one opaque call (``torch.fx.wrap``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rift.errors import ConfigError

_LOGITS = "logits"


def logits_of(output: object, training: bool) -> Tensor:
    """The logits in ``output`` (see the module docstring); ``training`` only words the error.

    Raises:
        ConfigError: (field ``architecture``) no entry is unambiguously the logits.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get(_LOGITS)
        if isinstance(found, Tensor):
            return found
    elif isinstance(output, tuple | list) and output:
        fields = getattr(output, "_fields", None)
        if isinstance(fields, tuple) and _LOGITS in fields:
            named = getattr(output, _LOGITS)
            if isinstance(named, Tensor):
                return named
        first = output[0]
        if (isinstance(first, Tensor) and first.dim() == 2 and not any(
                isinstance(other, Tensor) and other.shape == first.shape
                for other in output[1:])):
            return first
    else:
        attribute = getattr(output, _LOGITS, None)
        # torch.fx hands a wrapped call real arguments unless one is a Proxy or a container of
        # them, which an object is not: traced, the attribute is the Proxy of the logits.
        if isinstance(attribute, Tensor | torch.fx.Proxy):
            return attribute  # type: ignore[return-value]
    mode = "train" if training else "eval"
    raise ConfigError(
        f"in {mode} mode the model returns a {type(output).__name__} ({_describe(output)}), "
        "in which no entry is unambiguously the (batch, num_classes) logits; RiFT takes them "
        "from a tensor, a mapping's 'logits' entry, a 'logits' attribute, or the first "
        "element of a tuple or list when it is 2-D and no other element has its shape: return "
        "one of these", field="architecture")


# A call torch.fx records as one node instead of tracing into it (it inspects values).
torch.fx.wrap("logits_of")


def _describe(output: object, limit: int = 6) -> str:
    def one(value: object) -> str:
        return (f"tensor {tuple(value.shape)}" if isinstance(value, Tensor)
                else type(value).__name__)

    if isinstance(output, Mapping):
        items = [f"{key!r}: {one(value)}" for key, value in list(output.items())[:limit]]
    elif isinstance(output, tuple | list):
        items = [one(value) for value in output[:limit]]
    else:
        return "not a tensor"
    more = ", …" if len(output) > limit else ""
    return ", ".join(items) + more if items else "empty"


_SUBCLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def structure_note(model: nn.Module, *inputs: Tensor) -> str:
    """Where ``model`` (made by :func:`return_logits`) read its logits out of a tuple or list
    by position on ``inputs``, a clause saying so, for an error about the logits' shape; else
    "". A forward returning ``(features, logits)`` was told "returns (1, 16) ... needs logits of
    shape (1, 4)", as if it returned one tensor."""
    base = type(model)
    if base not in _SUBCLASSES.values():
        return ""
    try:
        output = base.__mro__[1].forward(model, *inputs)  # type: ignore[attr-defined]
    except Exception:  # it ran just before: nothing to add where a second pass cannot
        return ""
    if not isinstance(output, tuple | list) or isinstance(output, Mapping) or (
            _LOGITS in (getattr(output, "_fields", None) or ())):
        return ""
    return (f"; its forward returns a {type(output).__name__} ({_describe(output)}), whose "
            "first element RiFT reads as the logits: return the logits first, or a dict with "
            "a 'logits' entry")


def return_logits(model: nn.Module) -> nn.Module:
    """``model``, its class swapped for one whose ``forward`` returns :func:`logits_of` of the
    original output (the same object, returned for chaining). Idempotent."""
    base = type(model)
    if base in _SUBCLASSES.values():
        return model
    if base not in _SUBCLASSES:
        original: Callable[..., Any] = base.forward

        # wraps: torch.fx reads the original's signature (through __wrapped__) for its inputs.
        @functools.wraps(original)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
            return logits_of(original(self, *args, **kwargs), self.training)

        # Same name and module: messages and warnings name the operator's class, not this one.
        _SUBCLASSES[base] = type(base.__name__, (base,), {
            "forward": forward, "__module__": base.__module__,
            "__qualname__": base.__qualname__})
    model.__class__ = _SUBCLASSES[base]
    return model
