"""Whether a model's output can be differentiated the way every stage differentiates it.

PGD and MRC take gradients with ``torch.autograd.grad`` (with respect to the input, and to the
perturbed weights); fine-tuning calls ``loss.backward()`` with every parameter but the tuned
module's frozen. Activation checkpointing written with ``torch.utils.checkpoint(...,
use_reentrant=True)`` (timm's ``set_grad_checkpointing()``, older Hugging Face code, a builder's
own memory saving) breaks both:

* ``autograd.grad`` through it raises "When use_reentrant=True, torch.utils.checkpoint is
  incompatible with .grad()" (a traceback from the first model check);
* a checkpointed segment whose inputs need no gradient (every layer before it frozen, as during
  fine-tuning) gives none to the parameters inside it, so the loss may not depend on the tuned
  module at all ("element 0 of tensors does not require grad", after the MRC stage), or the tuned
  weights get no gradient and the optimiser silently leaves them as they were.

:func:`reentrant_checkpoints` finds the first kind in an output's autograd graph;
:func:`untrainable_message` names the second once the first training step shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The backward node ``torch.utils.checkpoint``'s reentrant implementation (an
#: ``autograd.Function`` named ``CheckpointFunction``) leaves in the graph.
_REENTRANT_NODE = "CheckpointFunctionBackward"

#: What to change, shared by both messages.
_FIX = ("turn activation checkpointing off in the builder (timm: set_grad_checkpointing(False); "
        "Hugging Face: gradient_checkpointing_disable(); it saves memory only when training "
        "large batches) or pass use_reentrant=False to torch.utils.checkpoint")


def reentrant_checkpoints(output: torch.Tensor) -> int:
    """How many reentrant ``torch.utils.checkpoint`` segments ``output``'s autograd graph holds
    (0 without a graph). Walks the graph once, each node once."""
    root = output.grad_fn
    if root is None:
        return 0
    seen: set[torch.autograd.graph.Node] = set()
    stack = [root]
    found = 0
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        found += node.name() == _REENTRANT_NODE
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return found


def reentrant_message(name: str, segments: int) -> str:
    """Why a model whose eval-mode output holds ``segments`` reentrant checkpoints is refused."""
    return (f"architecture {name!r} runs {segments} part(s) of its forward under "
            "torch.utils.checkpoint with use_reentrant=True (activation checkpointing): "
            "torch.autograd.grad, which PGD and MRC use, cannot differentiate through it, and a "
            "checkpointed part whose input needs no gradient gives none to the layers inside "
            f"it (fine-tuning one would not move it); {_FIX}")


def untrainable_message(module: str, parameters: Sequence[str]) -> str:
    """Why fine-tuning ``module`` is refused when a train-mode step gave none of its
    ``parameters`` (their names) a gradient."""
    return (f"in train mode the loss has no gradient with respect to {module!r} "
            f"({', '.join(parameters)}), so fine-tuning could not change it: the train-mode "
            "forward does not use those weights through autograd. A common cause is "
            "torch.utils.checkpoint with use_reentrant=True around the part holding it: with "
            "every layer before it frozen, the checkpointed part gets no gradient; "
            f"{_FIX}. Otherwise set finetune.module to a module the train-mode forward uses")
