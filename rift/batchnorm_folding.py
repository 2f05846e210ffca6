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

The graph comes from ``torch.fx`` (traced once per model; a model fx cannot trace, or one that
calls a convolution or BatchNorm module at more than one place, is evaluated unfolded), and the
first folded copy is checked against the model on a few inputs before any is used.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.optimization import fuse

from rift.model_state import frozen_except

# A folded copy's logits may differ from the model's by rounding only; a wrong graph (e.g. a
# traced branch that differs from the model's forward) differs by far more.
_CHECK_RTOL = 1e-3
#: Inputs the first folded copy is checked on (``BatchNormFolding``'s ``probe``).
FOLD_CHECK_EXAMPLES = 8
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def folds_on(device: torch.device, precision: str) -> bool:
    """Whether ``evaluation.fold_batchnorm: "auto"`` folds on ``device`` at ``precision``: on a
    CPU in fp32, where it was measured (under bf16 autocast the folded weights are rounded to
    bf16 after scaling, a larger change than fp32 rounding; on a GPU it is not measured)."""
    return device.type == "cpu" and precision == "fp32"


class BatchNormFolding:
    """Folded eval-mode copies of one model, made again for each new set of weights.

    ``model`` keeps its submodules: the traced graph shares them, so :meth:`current` reads the
    weights loaded into ``model`` at the time of the call. ``probe``: a few inputs of the data
    evaluated, for the one-time check that the folded graph computes the model's function.
    """

    def __init__(self, model: nn.Module, probe: Tensor) -> None:
        self.model = model
        self._probe = probe[:FOLD_CHECK_EXAMPLES]
        self._traced: fx.GraphModule | None = None
        self._usable: bool | None = None  # None: not yet tried

    @property
    def folding(self) -> bool | None:
        """True once a folded copy passed the check, False when folding was ruled out, None
        before the first :meth:`current`."""
        return self._usable

    def current(self) -> nn.Module:
        """An eval-mode copy of ``model`` with its present weights, BatchNorm folded (parameters
        frozen), or ``model`` itself when it cannot be folded."""
        if self._usable is False:
            return self.model
        with frozen_except(self.model):
            if self._usable is None:
                self._traced = _trace_once_called(self.model)
                if self._traced is None:
                    self._usable = False
                    return self.model
            assert self._traced is not None
            folded = fuse(self._traced, no_trace=True).eval()
            if self._usable is None:
                self._usable = _same_function(self.model, folded, self._probe)
                if not self._usable:
                    return self.model
        for parameter in folded.parameters():
            parameter.requires_grad_(False)
        return folded


def _trace_once_called(model: nn.Module) -> fx.GraphModule | None:
    """The model's fx graph, or None when fx cannot trace it or a convolution/BatchNorm module is
    called at more than one place (folding replaces a module at every call of it)."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception:
        return None
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    if any(count > 1 and isinstance(modules.get(str(target)), _FOLDABLE)
           for target, count in calls.items()):
        return None
    return traced


@torch.no_grad()
def _same_function(model: nn.Module, folded: nn.Module, probe: Tensor) -> bool:
    if probe.numel() == 0:
        return False
    expected, got = model(probe).float(), folded(probe).float()
    if expected.shape != got.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=_CHECK_RTOL, atol=_CHECK_RTOL * scale))
