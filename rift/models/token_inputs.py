"""Models that read token ids: an ``nn.Embedding`` (or ``nn.EmbeddingBag``) looking up the input.

RiFT attacks continuous inputs (PGD moves every input value by a small real amount) and passes
every input as a float (N, C, H, W) tensor; a sequence model whose forward starts by looking up
integer token ids in an embedding table cannot be attacked so: fed floats, the lookup fails deep
in the first stage with a dtype error ("Expected tensor for argument #1 'indices' to have one of
the following scalar types: Long, Int"), and with a cast (``x.long()``) inside forward it runs, but
has no gradient with respect to the input, so the attack is a no-op. :class:`EmbeddingReads`
watches which embedding tables a forward pass reads and with what, so the checks can name the
cause instead.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_TABLES = (nn.Embedding, nn.EmbeddingBag)


class EmbeddingReads:
    """A context manager recording, for every embedding table ``model`` looks up in the forward
    passes run inside it, the module's name, the indices' dtype and shape."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._handles: list[RemovableHandle] = []
        self.reads: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def __enter__(self) -> EmbeddingReads:
        for name, module in self._model.named_modules():
            if isinstance(module, _TABLES):
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self.reads.append((name, args[0].dtype, tuple(args[0].shape)))
        return record

    def given_floats(self) -> list[str]:
        """Tables looked up with floating-point indices (the input itself, most likely)."""
        return _unique(name for name, dtype, _ in self.reads if dtype.is_floating_point)

    def per_example(self, batch: int) -> list[str]:
        """Tables looked up with one row of indices per example of a batch of ``batch`` (> 1):
        ids made from the input (a position table read with ``arange`` is not)."""
        return _unique(name for name, _, shape in self.reads
                       if batch > 1 and len(shape) >= 1 and shape[0] == batch)


def _unique(names: Any) -> list[str]:
    return list(dict.fromkeys(names))


def token_input_message(architecture: str, tables: list[str]) -> str:
    """The refusal for a model reading token ids from its input through ``tables``."""
    shown = ", ".join(repr(name) for name in tables[:4]) + (" …" if len(tables) > 4 else "")
    return (f"architecture {architecture!r} looks its input up in an embedding table "
            f"({shown}): it expects integer token ids (a sequence model), but RiFT attacks "
            "continuous inputs (PGD moves each input value by a small real amount and needs "
            "the gradient with respect to it), so it cannot attack token ids. RiFT supports "
            "images and feature vectors; to use this model, attack its embeddings instead "
            "(wrap it so that forward takes the embedded (N, T, D) vectors, with the table "
            "outside the model)")
