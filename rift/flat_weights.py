"""A row of the MRC table's weight tensors seen as one vector (``rift.mrc``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class FlatWeights:
    """A row's weight tensors seen as one vector, their flattened concatenation in order.

    The ball, its radius and the ascent step are those of that vector, so an attention's separate
    q/k/v projections are scored as the packed ``in_proj_weight`` = [W_q; W_k; W_v] would be: the
    same vector, up to the order of its entries, which no norm or step here depends on.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)
        self.sizes = [t.numel() for t in self.tensors]

    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``parts`` (one per tensor, e.g. their gradients) as one vector; a view when one."""
        if len(parts) == 1:
            return parts[0].reshape(-1)
        return torch.cat([part.reshape(-1) for part in parts])

    def read(self) -> torch.Tensor:
        """A copy of the current values as one vector."""
        return self.flatten([t.detach() for t in self.tensors]).clone()

    @torch.no_grad()
    def add_(self, delta: torch.Tensor) -> None:
        for tensor, part in zip(self.tensors, delta.split(self.sizes), strict=True):
            tensor.add_(part.view(tensor.shape).to(tensor.dtype))

    @torch.no_grad()
    def copy_(self, values: torch.Tensor) -> None:
        for tensor, part in zip(self.tensors, values.split(self.sizes), strict=True):
            tensor.copy_(part.view(tensor.shape))

    def requires_grad_(self, flag: bool) -> None:
        for tensor in self.tensors:
            tensor.requires_grad_(flag)

    def detached_copy(self) -> FlatWeights:
        """Independent copies of the tensors (same values, dtypes and devices) that require
        grad: a module's perturbed weights held outside the model."""
        return FlatWeights([t.detach().clone().requires_grad_(True) for t in self.tensors])
