"""Fine-tuning of the non-robust-critical module on clean data (docs/algorithm.md, step 2; the
paper's Algorithm 2, lines 6–14).

Only the chosen module's own parameters learn; everything else is frozen. The model is in train
mode, so BatchNorm running statistics (and those of an InstanceNorm that keeps them) follow the
clean data unless ``bn_stats == "freeze"``. After
every epoch the clean accuracy on the validation split is measured and the best epoch's weights are
kept (the reference code picks it on the test set; a held-out split keeps test numbers honest).

An epoch whose loss or tuned weights went NaN or infinite ends the training there: θ_FT is the
best of the finite epochs before it, and the result says where it diverged (:class:`Divergence`),
which the pipeline turns into a ``warning`` event. Only a first epoch that diverges leaves no
weights to keep: that is a :class:`FinetuneDiverged` error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.checkpoints import load_into
from rift.config import FinetuneSpec
from rift.data import DatasetSplits, iterate_batches
from rift.device import autocast
from rift.errors import ConfigError, FinetuneDiverged, ModuleWithoutEffect
from rift.evaluation import correct_predictions, evaluate_accuracy
from rift.finetune_resume import (
    EpochState,
    FinetuneResume,
    encode_epoch_state,
    load_epoch_state,
    resumable_on,
)
from rift.gradient_paths import untrainable_message
from rift.model_state import frozen_except
from rift.rate_text import rate_text
from rift.scored_weights import scored_parameters, scored_weights, second_names, unscored_reason

_BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
# Layers with running statistics that eval mode uses: BatchNorm, and InstanceNorm built with
# ``track_running_stats=True`` (a _NormBase too). ``bn_stats: "freeze"`` keeps all of them; before,
# only BatchNorm was kept and such an InstanceNorm's statistics moved with "freeze".
_RUNNING_STATISTICS_TYPES = (nn.modules.batchnorm._NormBase,)
_NAMES_SHOWN = 12


@dataclass(frozen=True)
class EpochMetrics:
    """One fine-tuning epoch. ``epoch`` counts from 1; accuracies are percent; ``lr`` is the
    learning rate the epoch ran with; ``train_loss`` is the mean clean cross-entropy over the epoch;
    ``seconds`` covers training and validation."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict with the fields above."""
        return asdict(self)


@dataclass(frozen=True)
class Divergence:
    """Where fine-tuning stopped because the loss or the tuned weights went NaN or infinite:
    the epoch (1-based) and the learning rate it ran with, and the epoch kept instead (the best
    finite one by validation accuracy). ``field`` is the setting to lower (``finetune.lr``, or
    ``finetune.lr_grid`` in a sweep over rates)."""

    epoch: int
    lr: float
    kept_epoch: int
    field: str

    def message(self) -> str:
        """The ``warning`` event's text."""
        return (f"fine-tuning diverged in epoch {self.epoch} at lr {rate_text(self.lr)}; kept epoch "
                f"{self.kept_epoch}, the best finite epoch by validation accuracy; consider a "
                f"smaller {self.field} (the training loss or the tuned weights went NaN or "
                "infinite, and training stopped there)")

    def to_json(self) -> dict[str, float | int | str]:
        return {"epoch": self.epoch, "lr": self.lr, "kept_epoch": self.kept_epoch,
                "field": self.field, "message": self.message()}


@dataclass
class FinetuneResult:
    """What fine-tuning returns: the module tuned, every finished (finite) epoch's metrics, the
    best epoch (1-based, by validation clean accuracy; ties go to the earlier epoch), a CPU copy
    of the whole model's state dict at that epoch (θ_FT of the interpolation step), and where
    training diverged if it did (its epochs stop before that one)."""

    module: str
    epochs: list[EpochMetrics]
    best_epoch: int
    state_dict: dict[str, Tensor] = field(repr=False)
    diverged: Divergence | None = None
    # Epochs taken from a stored state (``resume``) rather than trained by this call.
    resumed_epochs: int = 0

    @property
    def best_val_accuracy(self) -> float:
        return self.epochs[self.best_epoch - 1].val_accuracy


def trainable_module(model: nn.Module, module_name: str) -> nn.Module:
    """The submodule called ``module_name`` (a ``named_modules`` name, e.g. ``layer2.1.conv2``),
    which must be a module whose weights MRC scores (:func:`rift.scored_weights.
    scored_parameters`: a convolution, Linear, Bilinear or attention, subclasses included, as in
    ``mrc.modules``): RiFT fine-tunes a module the MRC table can rank. Its own parameters are
    the ones trained (the scored weights and their biases).

    Raises:
        ConfigError (field ``finetune.module``): no such module, or one MRC does not score (a
            BatchNorm, a container, a pruned layer: tuned without a row before); the message
            says what kind it is and names modules that may be given.
    """
    modules = dict(model.named_modules())
    module = modules.get(module_name) if module_name else None
    if module is not None and scored_parameters(module):
        return module
    scored = scored_weights(model)
    rows = scored.modules
    shown = ", ".join(rows[:_NAMES_SHOWN]) + (" …" if len(rows) > _NAMES_SHOWN else "")
    first = second_names(model).get(module_name) if module is None else None
    reason = (f"is the module {first!r} registered under a second name (its rows, events "
              f"and results use the first): name it {first!r}" if first is not None
              else "is not a module of the model" if module is None
              else unscored_reason(model, module_name, scored))
    raise ConfigError(
        f"finetune.module {module_name!r} {reason}; modules MRC scores (one of these may be "
        f"fine-tuned): {shown or 'none'}",
        field="finetune.module",
    )


def finetune_module(
    model: nn.Module,
    module_name: str,
    splits: DatasetSplits,
    spec: FinetuneSpec,
    *,
    device: torch.device,
    seed: int,
    precision: str = "fp32",
    eval_batch_size: int = 256,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_cancel: ShouldCancel | None = None,
    resume: FinetuneResume | None = None,
) -> FinetuneResult:
    """Fine-tune the own parameters (weight, bias) of ``module_name`` on clean training images.

    SGD with ``spec.momentum`` and ``spec.weight_decay`` over those parameters only; the learning
    rate starts at ``spec.lr`` and is multiplied by ``spec.lr_gamma`` after each epoch listed in
    ``spec.lr_milestones``. Training batches of ``spec.batch_size`` images (float in [0, 1], NCHW,
    augmented as ``splits.augment`` says) are shuffled by a generator seeded with ``seed``, and the
    global RNG (dropout) is seeded inside a forked RNG state, so the same seed on the same device
    gives the same weights without touching the caller's random state.

    The model is moved to ``device`` and trained in place; on return it holds the best epoch's
    weights, its train/eval mode and every ``requires_grad`` flag are as they were on entry (after
    an exception the flags and mode are restored too, but the weights are those reached so far).
    Buffers outside the state dict (non-persistent) are put back as they were on entry, so the
    model computes what its state dict says.
    ``on_epoch`` is called after each epoch; ``should_cancel`` is polled before every batch and
    makes this raise :class:`JobCancelled`. With ``precision="bf16"`` the forward pass runs under
    autocast and the loss is computed in fp32.

    A BatchNorm layer that sees one value per channel from a single example (its input is 1×1,
    e.g. a ResNet's last stage on 8×8 images) cannot train on a batch of one: with ``bn_stats ==
    "update"`` a final batch of one example is then left out of each (shuffled) epoch.

    With ``resume`` the state at the end of each epoch but the last is saved to its store
    (:mod:`rift.finetune_resume`), and a state stored there under the same inputs digest is
    continued from: the epochs it holds are not trained again, and the result equals a run
    never interrupted, tensor for tensor (``resumed_epochs`` says how many were taken).

    Raises:
        ConfigError: unknown module name (field ``finetune.module``); every batch would hold one
            example for such a BatchNorm layer (field ``finetune.batch_size``).
        FinetuneDiverged: (a NumericalError) the loss or the trained weights went NaN or
            infinite in the first epoch, so no epoch is left to keep (field ``finetune.lr``;
            ``finetune.lr_grid`` when the spec has one). A later epoch that diverges ends
            training instead; the result's ``diverged`` says where.
        JobCancelled: ``should_cancel()`` returned True.
    """
    module = trainable_module(model, module_name)
    model.to(device)
    parameters = list(module.parameters(recurse=False))
    # θ_FT is a state dict: a non-persistent buffer that training moved (a module's own running
    # statistic kept out of the state dict) would make the tuned model, and every θ_α measured
    # on it, differ from the weights that are saved. They are put back after training.
    persistent = set(model.state_dict())
    volatile = {name: buffer.detach().clone() for name, buffer in model.named_buffers()
                if name not in persistent}
    # The mode is set per epoch by _train; frozen_except puts the caller's back on exit.
    with frozen_except(model, parameters, eval_mode=False), _restored(model, volatile):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            epochs, best_epoch, best_state, diverged, resumed = _train(
                model, parameters, splits, spec, device=device, seed=seed, precision=precision,
                module_name=module_name,
                parameter_names=[f"{module_name}.{name}"
                                 for name, _ in module.named_parameters(recurse=False)],
                eval_batch_size=eval_batch_size, on_epoch=on_epoch, should_cancel=should_cancel,
                resume=resume,
            )
        load_into(model, best_state)  # with the model's module versions (see load_into)
    return FinetuneResult(module_name, epochs, best_epoch, best_state, diverged, resumed)


def _train(
    model: nn.Module,
    parameters: list[nn.Parameter],
    splits: DatasetSplits,
    spec: FinetuneSpec,
    *,
    device: torch.device,
    seed: int,
    precision: str,
    module_name: str,
    parameter_names: list[str],
    eval_batch_size: int,
    on_epoch: Callable[[EpochMetrics], None] | None,
    should_cancel: ShouldCancel | None,
    resume: FinetuneResume | None = None,
) -> tuple[list[EpochMetrics], int, dict[str, Tensor], Divergence | None, int]:
    optimizer = torch.optim.SGD(
        parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    # Milestones are epoch numbers: the scheduler steps once per epoch (reference: ×0.1 at epoch 5).
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(spec.lr_milestones), gamma=spec.lr_gamma
    )
    # A CPU generator: the batch order and crops are the same whichever device trains.
    generator = torch.Generator()
    generator.manual_seed(seed)
    classes = _eval_mode_classes(model, splits.image_shape, device)
    drop_single = False
    if spec.bn_stats == "update":
        # Training-mode BatchNorm raises on one value per channel. Only a final batch of one is
        # left out, and only where it would raise: a config that ran before runs the same batches.
        needs_two = _batchnorm_needing_two_examples(model, splits.image_shape, device)
        if needs_two is not None and (spec.batch_size == 1 or len(splits.train) == 1):
            raise ConfigError(
                f"BatchNorm layer {needs_two!r} gets one value per channel from a single example "
                f"of this data, so it cannot train on batches of one (finetune.batch_size is "
                f"{spec.batch_size}, the training split has {len(splits.train)} example(s)); use "
                "finetune.batch_size >= 2 with more data, or finetune.bn_stats 'freeze'",
                field="finetune.batch_size")
        drop_single = needs_two is not None and len(splits.train) % spec.batch_size == 1
    history: list[EpochMetrics] = []
    best_epoch = 0
    best_accuracy = -1.0
    best_state: dict[str, Tensor] = {}
    moving = _moving_state_keys(model, parameters)
    if resume is not None and not resumable_on(device):
        resume = None  # its RNG is not in the state: an exact resume is not possible there
    stored = load_epoch_state(resume) if resume is not None else None
    if stored is not None and stored.epoch <= spec.epochs:
        _restore(stored, model, optimizer, scheduler, generator, device)
        history = [EpochMetrics(**metrics) for metrics in stored.history]
        best_epoch, best_accuracy = stored.best_epoch, stored.best_accuracy
        # The frozen weights are θ_AT's, as in the best epoch: only the moving ones were kept.
        best_state = {**_cpu_copy(model.state_dict()), **stored.best}
        if resume is not None and resume.on_resumed is not None:
            resume.on_resumed(len(history))
    resumed = len(history)
    for epoch in range(resumed + 1, spec.epochs + 1):
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        _set_train_mode(model, freeze_bn=spec.bn_stats == "freeze")
        # Sums stay on the device (no per-batch sync); fp64 so long epochs do not lose precision.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for images, labels in iterate_batches(
            splits.train, spec.batch_size, device=device, shuffle=True, generator=generator,
            augment=splits.augment, drop_last=drop_single,
        ):
            raise_if_cancelled(should_cancel)
            with autocast(device, precision):
                logits = _logits(model(images), len(labels), classes)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            first_step = not history and seen == 0
            if first_step and not loss.requires_grad:
                _refuse_untrainable(module_name, parameter_names)
            loss.backward()
            if first_step and all(p.grad is None for p in parameters):
                _refuse_untrainable(module_name, parameter_names)
            if first_step and not any(bool(p.grad.any()) for p in parameters
                                      if p.grad is not None):
                _refuse_dead_module(module_name, parameter_names, labels.numel())
            optimizer.step()
            loss_sum += loss.detach().double() * labels.numel()
            correct += correct_predictions(logits.detach(), labels).sum()
            seen += labels.numel()
        scheduler.step()
        if not _finite(loss_sum, parameters):
            field = "finetune.lr_grid" if spec.lr_grid is not None else "finetune.lr"
            if not history:  # nothing finite to keep
                raise FinetuneDiverged(
                    f"fine-tuning diverged in epoch {epoch} at learning rate {rate_text(lr)}: the "
                    f"training loss or the tuned weights are no longer finite (momentum "
                    f"{spec.momentum:g}, weight_decay {spec.weight_decay:g}); use a smaller "
                    f"{field}", field=field)
            # The reference protocol keeps the best validation epoch; a later epoch's NaN does
            # not undo the finite ones before it. Their best state was copied when measured.
            return (history, best_epoch, best_state, Divergence(epoch, lr, best_epoch, field),
                    resumed)
        report = evaluate_accuracy(
            model, splits.validation, attack=None, batch_size=eval_batch_size, device=device,
            seed=seed, precision=precision, should_cancel=should_cancel,
        )
        metrics = EpochMetrics(
            epoch=epoch,
            lr=lr,
            train_loss=float(loss_sum) / max(seen, 1),
            train_accuracy=100.0 * int(correct) / max(seen, 1),
            val_accuracy=report.clean_accuracy,
            seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        # Strictly greater: on ties the earlier (less moved) epoch is kept.
        if metrics.val_accuracy > best_accuracy:
            best_accuracy = metrics.val_accuracy
            best_epoch = epoch
            best_state = _cpu_copy(model.state_dict())
        if resume is not None and epoch < spec.epochs:  # after the last, the outputs follow
            resume.store.save(encode_epoch_state(EpochState(
                resume.inputs, epoch, [m.as_dict() for m in history], best_epoch, best_accuracy,
                _moving_tensors(model, parameters), {key: best_state[key] for key in moving},
                optimizer.state_dict(), scheduler.state_dict(), generator.get_state(),
                torch.get_rng_state(),
                torch.cuda.get_rng_state(device) if device.type == "cuda" else None)))
        if on_epoch is not None:
            on_epoch(metrics)
    return history, best_epoch, best_state, None, resumed


def _moving_tensors(model: nn.Module, parameters: list[nn.Parameter]) -> dict[str, Tensor]:
    """What training changes, by name: the tuned parameters and every buffer (non-persistent
    ones too: a running statistic kept out of the state dict still shapes the next epoch)."""
    tuned = {id(parameter) for parameter in parameters}
    moving: dict[str, Tensor] = {f"parameter:{name}": value
                                 for name, value in model.named_parameters()
                                 if id(value) in tuned}
    moving.update({f"buffer:{name}": value for name, value in model.named_buffers()})
    return moving


def _moving_state_keys(model: nn.Module, parameters: list[nn.Parameter]) -> list[str]:
    """The state-dict keys of the tuned parameters (under every name a tied one has) and of
    the persistent buffers: the part of the best epoch's state that differs from θ_AT."""
    tuned = {id(parameter) for parameter in parameters}
    names = {name for name, value in model.named_parameters(remove_duplicate=False)
             if id(value) in tuned}
    names.update(name for name, _ in model.named_buffers(remove_duplicate=False))
    return [key for key in model.state_dict() if key in names]


def _restore(state: EpochState, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
             device: torch.device) -> None:
    """Put training back where ``state`` left it (the model holds θ_AT before)."""
    with torch.no_grad():
        for key, value in state.model.items():
            kind, _, name = key.partition(":")
            target = model.get_parameter(name) if kind == "parameter" else model.get_buffer(name)
            target.copy_(value)
    optimizer.load_state_dict(state.optimizer)
    # The milestones are the spec's (left out of the stored state): only the position moves.
    scheduler.load_state_dict({**scheduler.state_dict(), **state.scheduler})
    generator.set_state(state.generator)
    torch.set_rng_state(state.rng)
    if device.type == "cuda" and state.cuda_rng is not None:
        torch.cuda.set_rng_state(state.cuda_rng, device)


def _refuse_untrainable(module_name: str, parameter_names: list[str]) -> None:
    """The tuned module got no gradient on the first training step (the optimiser would skip
    its weights every step: θ_FT = θ_AT, reported as fine-tuned, or a crash in backward)."""
    raise ConfigError(untrainable_message(module_name, parameter_names), field="architecture")


def _refuse_dead_module(module_name: str, parameter_names: list[str], examples: int) -> None:
    """The tuned module's weights got a gradient of exactly zero on the whole first batch: the
    loss does not depend on them there (a branch gated or pruned to zero, a ReLU after it dead on
    every input). Measured: the digits θ_AT with a 1×1 convolution added behind a zero gate
    scored MRC exactly 0 there, was chosen and "fine-tuned" with no word, and the run reported
    clean 90.6 → 91.1 % and robust 65.9 → 67.5 % for it, the BatchNorm statistics' change alone."""
    raise ModuleWithoutEffect(
        f"fine-tuning {module_name!r} would change nothing: the loss's gradient with respect to "
        f"its weights ({', '.join(parameter_names)}) is exactly zero on all {examples} examples "
        "of the first training batch, so the model's output does not depend on them (a branch "
        "gated or pruned to zero, a ReLU after it that no input activates). Its MRC is 0 for "
        "the same reason, not because robustness does not need it, and θ_FT would differ from "
        "θ_AT only where other layers' running statistics moved. Set finetune.module to another "
        "module, or leave this one out of MRC with mrc.exclude", field="finetune.module")


def _finite(loss_sum: Tensor, parameters: list[nn.Parameter]) -> bool:
    """Whether the epoch's loss and the trained weights are finite. A fine-tune that went NaN or
    infinite (too high a rate, or momentum and weight decay that amplify it) used to go on: its
    epochs recorded a NaN loss, θ_FT was saved with NaN weights (which no reader accepts back),
    and every α > 0 of the curve measured a model answering one class. One check per epoch: the
    loss sum is read then anyway, and NaN stays NaN in a sum."""
    with torch.no_grad():
        return bool(torch.isfinite(loss_sum)) and all(
            bool(torch.isfinite(parameter).all()) for parameter in parameters)


@contextmanager
def _restored(model: nn.Module, buffers: dict[str, Tensor]) -> Iterator[None]:
    """Copy ``buffers`` (name → saved value) back into ``model`` on exit."""
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in buffers.items():
                model.get_buffer(name).copy_(value)


def _logits(output: object, batch: int, classes: int) -> Tensor:
    """``output`` when it is a (batch, classes) tensor, ``classes`` being the eval-mode width.
    The pipeline checks the model's output in eval mode only (``check_model_accepts``); some
    models answer differently in train mode (auxiliary heads returning a tuple, as torchvision's
    Inception does with ``aux_logits``; an installed model whose structure holds another 2-D
    tensor first, which ``rift.models.logits_output`` would take for the logits)."""
    if isinstance(output, Tensor) and tuple(output.shape) == (batch, classes):
        return output
    got = (f"a tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor)
           else f"a {type(output).__name__}")
    raise ConfigError(
        f"in train mode (fine-tuning) the model returns {got} for a batch of {batch}; RiFT needs "
        f"({batch}, {classes}) logits in train mode as in eval mode: build the architecture "
        "without auxiliary outputs (e.g. aux_logits=False)", field="architecture")


def _eval_mode_classes(model: nn.Module, image_shape: tuple[int, int, int],
                       device: torch.device) -> int:
    """The width of the eval-mode logits for one all-zero example (checked before fine-tuning
    by ``check_model_accepts``), against which the train-mode output is checked."""
    with frozen_except(model), torch.no_grad():
        output = model(torch.zeros(1, *image_shape, device=device))
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ConfigError(f"in eval mode the model returns a {type(output).__name__} for one "
                          "example; RiFT needs (batch, num_classes) logits",
                          field="architecture")
    return int(output.shape[1])


def _batchnorm_needing_two_examples(model: nn.Module, image_shape: tuple[int, int, int],
                                    device: torch.device) -> str | None:
    """The name of the first BatchNorm layer whose input, for one example of ``image_shape``,
    holds one value per channel (training mode refuses such a batch), or None. One eval-mode
    forward pass without gradients: running statistics are untouched."""
    names: dict[nn.Module, str] = {module: name for name, module in model.named_modules()
                                   if isinstance(module, _BATCHNORM_TYPES)}
    found: list[str] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if inputs[0].numel() == inputs[0].shape[1]:  # batch 1 × 1 value per channel
            found.append(names[module])

    hooks = [module.register_forward_pre_hook(record) for module in names]
    try:
        with frozen_except(model), torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


def _set_train_mode(model: nn.Module, *, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        # An eval-mode normalisation layer with running statistics normalises with them and
        # leaves them untouched.
        for submodule in model.modules():
            if isinstance(submodule, _RUNNING_STATISTICS_TYPES) and submodule.track_running_stats:
                submodule.eval()


def tied_elsewhere(model: nn.Module, module_name: str) -> dict[str, list[str]]:
    """The parameters of ``module_name`` (its own, as fine-tuning trains them) that other
    modules of ``model`` hold too (tied weights): parameter name → the other modules' names.
    Fine-tuning the module moves those modules as well.

    Raises:
        ConfigError: (field ``finetune.module``) as :func:`trainable_module`.
    """
    module = trainable_module(model, module_name)
    owners: dict[int, list[str]] = {}
    for name, other in model.named_modules(remove_duplicate=False):
        if other is not module:
            for parameter in other.parameters(recurse=False):
                owners.setdefault(id(parameter), []).append(name)
    prefix = f"{module_name}." if module_name else ""
    return {prefix + name: sorted(set(owners[id(parameter)]))
            for name, parameter in module.named_parameters(recurse=False)
            if id(parameter) in owners}


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # ``.cpu()`` of a CPU tensor returns the same storage, which later steps would overwrite.
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
