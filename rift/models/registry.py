"""Name → architecture. The one entry point is :func:`build_model`.

Operators add architectures by installing a package that declares an entry point in the group
``rift.architectures``: ``name = package.module:builder``, where ``builder`` takes the keyword
arguments ``num_classes``, ``in_channels``, ``mean``, ``std`` like the built-in builders and
returns an ``nn.Module`` mapping (N, C, H, W) inputs to (N, num_classes) logits, or to a structure
holding them unambiguously (``rift.models.logits_output``: a dict's ``"logits"``, a tuple's
first element...). The library, the
CLI and the workers all resolve names here, so an installed architecture is usable everywhere;
uploads never carry code.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from types import MappingProxyType

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from rift.config import ArchitectureSpec
from rift.errors import ConfigError, RiftError, UnknownArchitectureError
from rift.model_state import eval_mode, frozen_except, functional_call_restoring
from rift.models.logits_output import return_logits, structure_note
from rift.models.mlp import mlp
from rift.models.preact_resnet import preact_resnet18
from rift.models.recurrent import differentiable_in_eval_mode
from rift.models.resnet import resnet18, resnet34
from rift.models.small_cnn import small_cnn
from rift.models.token_inputs import EmbeddingReads, token_input_message
from rift.models.torchvision_models import (
    PREFIX,
    build_torchvision_model,
    holds_auxiliary_heads,
    torchvision_classifier_names,
)
from rift.models.wide_resnet import wide_resnet28_10, wide_resnet34_10
from rift.setting_names import closest_choice

logger = logging.getLogger(__name__)

# A binary classifier with one output (a sigmoid and BCE in training) has no logit per class:
# cross-entropy on its one column is 0 whatever the input, so every attack and MRC would be 0.
SINGLE_LOGIT_HINT = (
    "a single-logit binary head (sigmoid with BCE loss) gives one score, not one logit per "
    "class: return torch.cat([torch.zeros_like(z), z], 1) from forward (a softmax over [0, z] "
    "is sigmoid(z), so the model is unchanged) and set architecture.num_classes to 2")

# Each builder takes keyword arguments num_classes, in_channels, mean, std.
ModelBuilder = Callable[..., nn.Module]
ENTRY_POINT_GROUP = "rift.architectures"
MLP = "mlp"

_BUILDERS: Mapping[str, ModelBuilder] = MappingProxyType(
    {
        "small_cnn": small_cnn,
        "resnet18": resnet18,
        "resnet34": resnet34,
        "preact_resnet18": preact_resnet18,
        "wide_resnet34_10": wide_resnet34_10,
        "wide_resnet28_10": wide_resnet28_10,
    }
)


def installed_architectures() -> dict[str, str]:
    """Entry points of the group ``rift.architectures``: name → ``module:attribute`` (not yet
    imported). Names of built-in architectures are not overridden."""
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _BUILDERS or point.name == MLP or point.name.startswith(PREFIX):
            logger.warning("ignoring installed architecture %r: a built-in has that name",
                           point.name)
            continue
        found[point.name] = point.value
    return found


def _installed_builder(name: str) -> ModelBuilder | None:
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        builder = point.load()
        if not callable(builder):
            raise UnknownArchitectureError(
                f"installed architecture {name!r} ({point.value}) is not callable",
                field="architecture.name")
        return builder  # type: ignore[no-any-return]
    return None


def builtin_architectures() -> list[str]:
    """The networks this package defines (``torchvision:`` and installed ones excluded)."""
    return [*_BUILDERS, MLP]


def list_architectures() -> list[str]:
    """Every name :func:`build_model` accepts: the built-in networks, ``mlp``, the installed
    ``rift.architectures`` entry points, then ``torchvision:<name>`` for each torchvision image
    classifier."""
    return ([*_BUILDERS, MLP, *installed_architectures()]
            + [PREFIX + name for name in torchvision_classifier_names()])


def build_model(spec: ArchitectureSpec, *, in_channels: int = 3, image_size: int = 32,
                checkpoint_keys: Iterable[str] = (), image_width: int | None = None) -> nn.Module:
    """Build the network ``spec`` names, with freshly initialised weights, in train mode.

    ``spec.in_channels`` / ``spec.image_size``, when set, win over the keyword defaults (which the
    pipeline fills from the dataset). The model takes (N, C, H, W) float images in [0, 1] and
    returns (N, num_classes) logits; ``spec.mean``/``spec.std`` are applied inside ``forward``
    through non-persistent buffers, so state-dict keys match public checkpoints. Tensors follow the
    ambient default device, so building under ``with torch.device("meta"):`` allocates nothing.
    Floating-point parameters and buffers are float32 whatever the builder made (an installed
    builder returning ``model.half()``): see :func:`float32_model`. ``checkpoint_keys``: the
    keys of the checkpoint the model will hold, where they decide its form (a torchvision
    GoogLeNet or Inception v3 trained with its auxiliary heads is built with them). Lazy layers
    (``nn.LazyLinear``, ``nn.LazyConv2d``...) are given their shapes by one eval-mode pass of a
    zero input of C × ``image_size`` × ``image_width`` (default: square) before it is returned.
    Recurrent layers run without cuDNN in eval mode with gradients enabled (cuDNN has no
    backward there): :mod:`rift.models.recurrent`.

    Raises:
        UnknownArchitectureError: the name is not known; the message lists the known names.
        ConfigError: mean/std do not fit the number of input channels, or the builder refused
            the options (e.g. a vision transformer for images smaller than its patches).
    """
    channels = spec.in_channels if spec.in_channels is not None else in_channels
    size = spec.image_size if spec.image_size is not None else image_size
    # architecture.image_size is a square side; otherwise the data's width where it is given.
    width = image_width if spec.image_size is None and image_width is not None else size
    try:
        model = _build(spec, channels, size, width, checkpoint_keys)
        model = float32_model(_materialize_lazy(model, spec, (channels, size, image_width or size)))
        refuse_non_tensor_state(model, spec)
        return differentiable_in_eval_mode(model)
    except RiftError:
        raise
    except Exception as exc:
        # Third-party builders (torchvision, installed entry points) check their options with
        # assert, ValueError, TypeError...: one typed error naming the spec instead.
        raise ConfigError(
            f"cannot build architecture {spec.name!r} with in_channels={channels}, "
            f"image_size={size}, num_classes={spec.num_classes}: {type(exc).__name__}: "
            f"{_one_line(exc)}", field="architecture") from exc


def _build(spec: ArchitectureSpec, channels: int, size: int, width: int,
           checkpoint_keys: Iterable[str]) -> nn.Module:
    mean: Sequence[float] | None = spec.mean
    std: Sequence[float] | None = spec.std
    if spec.name.startswith(PREFIX):
        name = spec.name[len(PREFIX):]
        return build_torchvision_model(
            name,
            num_classes=spec.num_classes,
            in_channels=channels,
            image_size=size,
            mean=mean,
            std=std,
            auxiliary_heads=holds_auxiliary_heads(name, checkpoint_keys),
        )
    if spec.name == MLP:
        # C·H·W of the data: with H × H, non-square images (8×12) were refused as "mat1 and
        # mat2 shapes cannot be multiplied (1x288 and 192x64)".
        features = spec.input_features if spec.input_features is not None \
            else channels * size * width
        return mlp(num_classes=spec.num_classes, in_channels=channels, input_features=features,
                   hidden=spec.hidden, mean=mean, std=std)
    if spec.input_features is not None or spec.hidden is not None:
        raise ConfigError("'input_features' and 'hidden' apply to the 'mlp' architecture only",
                          field="architecture.hidden")
    native = _BUILDERS.get(spec.name)
    if native is not None:
        return native(num_classes=spec.num_classes, in_channels=channels, mean=mean, std=std)
    builder = _installed_builder(spec.name)
    if builder is None:
        installed = list(installed_architectures())
        guess = closest_choice(spec.name, [*_BUILDERS, MLP, *installed])
        raise UnknownArchitectureError(
            f"unknown architecture {spec.name!r}"
            + (f"; did you mean {guess!r}?" if guess is not None else "")
            + f"; known: {', '.join([*_BUILDERS, MLP])}"
            + (f", installed: {', '.join(installed)}" if installed else "")
            + f", or '{PREFIX}<name>' for a torchvision image classifier (e.g. "
            f"'{PREFIX}resnet50'); operators add architectures through the "
            f"'{ENTRY_POINT_GROUP}' entry-point group",
            field="architecture.name",
        )
    # An operator's network may return its logits inside a dict or tuple (logits_output).
    return return_logits(_python_module(spec.name, unwrapped(
        builder(num_classes=spec.num_classes, in_channels=channels, mean=mean, std=std))))


def _python_module(name: str, built: object) -> nn.Module:
    """What an installed builder returned, when it is a Python ``nn.Module``. Before, a builder
    returning ``(model, transforms)``, ``None`` or ``torch.jit.script(net)`` was refused with
    "type object 'tuple' has no attribute 'forward'" or "'_CachedForward' object has no
    attribute '__getattr__'", naming neither the builder nor what it returned."""
    if not isinstance(built, nn.Module):
        raise ConfigError(
            f"the builder of installed architecture {name!r} returned "
            f"{type(built).__name__!r}, not an nn.Module: return the network itself (not a "
            "tuple of the network and its transforms)", field="architecture")
    if isinstance(built, torch.jit.ScriptModule):
        raise ConfigError(
            f"the builder of installed architecture {name!r} returned a TorchScript module "
            f"({type(built).__name__}, from torch.jit.script or torch.jit.trace): RiFT traces "
            "the Python module with torch.fx and swaps its weights with torch.func, which a "
            "TorchScript module does not allow; return the nn.Module before scripting it",
            field="architecture")
    return built


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside ``torch.compile``'s, ``nn.DataParallel``'s and
    ``DistributedDataParallel``'s wrappers (a builder returning ``torch.compile(net)``), any
    depth. Checkpoints are read without the wrappers' key prefixes (``_orig_mod.``,
    ``module.``), and modules are named as the network names them; before, such a builder's
    model refused every checkpoint (missing ``_orig_mod.*`` keys) and ``finetune.module`` failed
    with "DataParallel has no attribute" (a traceback). RiFT's stages trace and run it
    themselves, so the compiled form is not needed."""
    from torch.nn.parallel import DistributedDataParallel

    # torch.compile imports this module: where it is not imported, nothing was compiled (and
    # importing it here would cost every build 2.5-2.8 s, measured on this loaded 2-core CPU).
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    compiled: type | None = getattr(eval_frame, "OptimizedModule", None)
    while True:
        if compiled is not None and isinstance(model, compiled):
            inner = model._orig_mod
            assert isinstance(inner, nn.Module)  # typed Tensor | Module by nn.Module.__getattr__
            model = inner
        elif isinstance(model, nn.DataParallel | DistributedDataParallel):
            model = model.module
        else:
            break
    if compiled is not None and isinstance(model, nn.Module):  # else refused by the caller
        _uncompile_blocks(model, compiled)
    return model


def _uncompile_blocks(model: nn.Module, compiled: type) -> None:
    """Put each ``torch.compile``d block inside ``model`` (``self.backbone =
    torch.compile(backbone)``) back as the block itself. Before, its modules and keys held
    ``_orig_mod.`` (``finetune.module`` naming the block was "an OptimizedModule, which MRC does
    not score", and a checkpoint of the plain network was refused), and each stage's call of it
    compiled it. Checkpoint keys are read without ``_orig_mod.``
    (``rift.checkpoint_format.strip_wrapper_prefix``). A ``DataParallel`` block stays: a network
    may name a submodule ``module``, so ``module.`` inside a key cannot be read as a wrapper's."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            inner: nn.Module = child
            while isinstance(inner, compiled) and isinstance(inner._orig_mod, nn.Module):
                inner = inner._orig_mod
            if inner is not child:
                setattr(parent, name, inner)


def _materialize_lazy(model: nn.Module, spec: ArchitectureSpec,
                      shape: tuple[int, int, int]) -> nn.Module:
    """``model`` with its lazy layers' parameters made, by one eval-mode pass without gradients
    of a zero input of ``shape`` (BatchNorm statistics untouched). Before, reading their shapes
    to check a checkpoint raised torch's "Can't access the shape of an uninitialized parameter"
    (a traceback from ``python -m rift``); a lazy layer has no shape until its first pass."""
    if not any(isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
               for module in model.modules()):
        return model
    # Not frozen_except: an uninitialized parameter refuses requires_grad_.
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *shape))
    except Exception as exc:
        raise ConfigError(
            f"architecture {spec.name!r} has lazy layers, whose shapes its first forward pass "
            f"decides, and that pass failed on a zero input of shape {(1, *shape)}: "
            f"{type(exc).__name__}: {_one_line(exc)}", field="architecture") from exc
    return model


def float32_model(model: nn.Module) -> nn.Module:
    """``model`` with every floating-point parameter and buffer in float32 (in place; returned).

    Every stage feeds float32 inputs (images in [0, 1]) and chooses its own arithmetic
    (``precision``: fp32, or bf16 autocast); a model built in half, bfloat16 or float64 failed its
    first forward with a dtype error ("Input type (float) and bias type (c10::Half)"). Checkpoint
    values are cast to the model's dtype when no value changes (``rift.checkpoints``), so an fp16
    or bf16 checkpoint loads exactly into the float32 model."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        model.float()
    return model


def refuse_non_tensor_state(model: nn.Module, spec: ArchitectureSpec) -> None:
    """Refuse ``model`` when its state dict holds values that are not tensors: a module's
    ``get_extra_state`` returning a dict or another object (``<module>._extra_state``). RiFT
    reads, checks, interpolates and saves weights as tensors (safetensors), so such a model
    could never run: its own ``state_dict()`` was refused as "a dict where a tensor is
    expected" with the checkpoint containers RiFT knows, and a checkpoint without the entry as
    "1 missing key(s)" pointing at architecture.name, neither naming the module.

    Raises:
        ConfigError: (field ``architecture``) naming the entries and the modules' classes.
    """
    found = [f"{key} (a {type(value).__name__}, from "
             f"{type(model.get_submodule(key.rpartition('.')[0])).__name__}.get_extra_state)"
             if key.endswith("_extra_state") else f"{key} (a {type(value).__name__})"
             for key, value in model.state_dict().items() if not isinstance(value, torch.Tensor)]
    if found:
        raise ConfigError(
            f"architecture {spec.name!r} keeps state that is not a tensor in its state dict: "
            f"{', '.join(found[:4])}{' …' if len(found) > 4 else ''}. RiFT reads, checks, "
            "interpolates and saves weights as tensors only (safetensors), so it cannot carry "
            "that state from the checkpoint to the weights it writes; return a tensor from "
            "get_extra_state, or keep that state out of the state dict (a plain attribute set "
            "in __init__)", field="architecture")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def batch_statistics_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``model`` that have no running statistics: in eval mode
    PyTorch normalises with the batch's own statistics there, so one example's logits depend on
    the rest of its batch (measured: 6.7e-5 on random weights, and the cached and full MRC
    engines then disagree once batches are reshuffled). Every stage assumes examples are
    independent in eval mode."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and (module.running_mean is None or module.running_var is None)]


def refuse_batch_statistics(model: nn.Module, spec: ArchitectureSpec) -> None:
    """Refuse ``model`` when :func:`batch_statistics_layers` finds any (no forward pass, so the
    validator checks it whatever it knows of the data).

    Raises:
        ConfigError: (field ``architecture``) naming the layers.
    """
    coupled = batch_statistics_layers(model)
    if coupled:
        raise ConfigError(
            f"architecture {spec.name!r} has BatchNorm layer(s) without running statistics "
            f"(track_running_stats=False): {coupled[:8]}{' …' if len(coupled) > 8 else ''}. In "
            "eval mode they normalise each example with the statistics of the batch it comes "
            "in, so attacks, MRC and accuracies would depend on how examples are batched (the "
            "cached MRC engine, reshuffled MRC batches and the α selection's attack chunks "
            "group them differently) and would not be the model's. Build the architecture with "
            "running statistics (track_running_stats=True, estimated on training data) or a "
            "per-example normalisation (GroupNorm, LayerNorm, InstanceNorm)",
            field="architecture")


#: Square image sizes tried when a model refuses the data's (MNIST, CIFAR, STL/Tiny-ImageNet,
#: ImageNet crops and resizes, Inception's, ViT-384's), besides 2× and 4× the data's (and, for
#: non-square data, its height and width).
HINT_SIZES = (28, 32, 64, 96, 128, 224, 256, 299, 384)
#: Seconds the input-form hint may spend trying forms (each on the meta device where the model
#: runs there, else one real zero input): a hint is not worth a long wait for an error.
HINT_SECONDS = 5.0


def _takes(model: nn.Module, shape: tuple[int, ...], num_classes: int,
           device: torch.device) -> bool:
    """Whether ``model`` maps one zero input of ``shape`` to (1, ``num_classes``) logits. Tried
    on the meta device (shapes only: no memory, no arithmetic) through
    ``torch.func.functional_call`` with meta copies of the weights' shapes, and on ``device``
    with real zeros only where the meta run cannot tell (an op without a meta kernel, a tensor
    attribute outside the state)."""
    attempts: list[Callable[[], object]] = []
    if device.type != "meta":
        meta_state = {name: tensor.to("meta") for name, tensor in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False)]}
        attempts.append(lambda: functional_call_restoring(
            model, meta_state, (torch.zeros(shape, device="meta"),)))
    attempts.append(lambda: model(torch.zeros(shape, device=device)))
    for attempt in attempts:
        try:
            with frozen_except(model), torch.no_grad():
                logits = attempt()
        except Exception as exc:  # any refusal: this form is not the answer either
            if attempt is attempts[-1] or not _meta_cannot_tell(exc):
                return False
            continue
        return isinstance(logits, torch.Tensor) and tuple(logits.shape) == (1, num_classes)
    return False


def _meta_cannot_tell(exc: BaseException) -> bool:
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def _size_hint(model: nn.Module, spec: ArchitectureSpec, image_shape: tuple[int, int, int],
               device: torch.device, deadline: float) -> str:
    """The square sizes (of :data:`HINT_SIZES`, 2× and 4× the data's) at which ``model`` runs,
    with the data's channels or else the other of 1 and 3, as the end of the error message."""
    channels, height, width = image_shape
    # Non-square data: also its own sides as squares. A model built for the data's height (a
    # torchvision ViT is built for image_size = the height) refused 16×12 images with no hint,
    # since neither 16×16 nor 12×12 was among the sizes tried.
    sides = {height, width} if height != width else set()
    sizes = sorted({*HINT_SIZES, 2 * height, 4 * height, *sides} - {0})
    for option in (channels, {1: 3, 3: 1}.get(channels)):
        if option is None:
            continue
        runs = []
        for size in sizes:
            if time.monotonic() > deadline:
                break
            if (option, size, size) != image_shape and _takes(
                    model, (1, option, size, size), spec.num_classes, device):
                runs.append(size)
        if not runs:
            continue
        shown = ", ".join(f"{size}×{size}" for size in runs[:6]) + (" …" if len(runs) > 6
                                                                     else "")
        channel_words = "" if option == channels else (
            f" with {option} channel(s) (the data has {channels})")
        built_for = (f"; architecture.image_size {spec.image_size} builds it for "
                     f"{spec.image_size}×{spec.image_size}: leave it out to build it for the "
                     "data's size" if spec.image_size is not None and spec.image_size != height
                     else "")
        why = (f"the model was built for {runs[0]}×{runs[0]} inputs" if len(runs) == 1 else
               f"the model needs other sizes than {height}×{width}")
        return (f"; it runs on {shown} inputs{channel_words} (sizes tried: "
                f"{', '.join(str(size) for size in sizes)}), and the dataset's images are "
                f"{height}×{width}: {why}. Resize the dataset's images to a size it takes "
                "(dataset.image_size for an ImageFolder; an npz is used at its stored size, so "
                f"store it resized) or use a model built for {height}×{width}{built_for}")
    return ""


def _input_form_hint(model: nn.Module, spec: ArchitectureSpec, image_shape: tuple[int, int, int],
                     device: torch.device) -> str:
    """When ``model`` refused the (1, C, H, W) probe: the input form it does take, found by
    trying the usual others (flat vectors of C·H·W features, the other of 1 and 3 channels,
    (1, C·H, W) signals, channel-last (1, H, W, C) images, other square sizes:
    :func:`_size_hint`), as the end of the
    error message; "" when none of them gives (1, ``spec.num_classes``) either. Bounded by
    :data:`HINT_SECONDS`."""
    deadline = time.monotonic() + HINT_SECONDS
    channels, height, width = image_shape
    features = channels * height * width
    form = "feature vectors as (N, F, 1, 1)" if (height, width) == (1, 1) else "images"
    tries: list[tuple[tuple[int, ...], str]] = [((1, features), (
        f"; it does take flat vectors of {features} features, (N, {features}): RiFT passes "
        f"every input as (N, C, H, W) ({form}), "
        "so flatten at the start of forward (x = x.flatten(1))"))]
    other = {1: 3, 3: 1}.get(channels)
    if other is not None:
        tries.append(((1, other, height, width), (
            f"; it does take {other}-channel images: the data has {channels} channel(s) "
            f"({'grey' if channels == 1 else 'colour'}), so either the model was built for "
            f"{other} (architecture.in_channels, or a builder that ignores in_channels) or the "
            f"data should be given with {other}")))
    images = (height, width) != (1, 1)
    if images:
        # Signals for a Conv1d or a sequence model, (N, C, T): a 3-D npz array is read as
        # N×H×W one-channel images, so (N, C, T) arrives as (N, 1, C, T).
        tries.append(((1, channels * height, width), (
            f"; it does take (N, {channels * height}, {width}) inputs (channels, steps: a 1-D "
            f"signal's form): RiFT passes every input as (N, C, H, W) = (N, {channels}, "
            f"{height}, {width}) (a 3-D npz array is read as N×H×W images of one channel), so "
            "merge C and H at the start of forward (x = x.flatten(1, 2))")))
    if images and (height, width, channels) != image_shape:
        tries.append(((1, height, width, channels), (
            f"; it does take channel-last images, (N, {height}, {width}, {channels}) (N, H, W, "
            f"C): RiFT passes images channel-first, (N, C, H, W) = (N, {channels}, {height}, "
            f"{width}), so remove the permute/transposition at the start of forward")))
    for shape, hint in tries:
        if time.monotonic() > deadline:
            return ""
        if _takes(model, shape, spec.num_classes, device):
            return hint
    return _size_hint(model, spec, image_shape, device, deadline) if images else ""


def _refuse_token_inputs(tables: EmbeddingReads, spec: ArchitectureSpec) -> None:
    given_floats = tables.given_floats()
    if given_floats:
        # No cause chained: the validator's fit check leaves errors caused by the meta device
        # to the job, and this one is decided by the hooks, not by the failed operation.
        raise ConfigError(token_input_message(spec.name, given_floats), field="architecture")


def check_model_accepts(model: nn.Module, spec: ArchitectureSpec,
                        image_shape: tuple[int, int, int], *, device: torch.device) -> None:
    """Run one all-zero input of ``image_shape`` (C, H, W) through ``model`` (eval mode, no
    gradients, mode and flags restored) and require (1, ``spec.num_classes``) logits.

    A network that cannot take the data's shape (an Inception for 8×8 images, a transformer for
    non-square ones, ``in_channels`` unlike the data's) otherwise fails deep inside the first
    stage with a framework error; here it is one error naming the architecture and the shape.

    Also refuses a model whose eval-mode output for one example depends on the other examples
    of its batch (:func:`batch_statistics_layers`).

    Raises:
        ConfigError: (field ``architecture``) the forward pass fails or its output has another
            shape, or a layer normalises with batch statistics in eval mode.
    """
    refuse_batch_statistics(model, spec)
    channels, height, width = image_shape
    shape = f"{channels}×{height}×{width} (C×H×W) inputs"
    probe = torch.zeros(1, channels, height, width, device=device)
    tables = EmbeddingReads(model)
    try:
        with frozen_except(model), torch.no_grad(), tables:
            logits = model(probe)
    except RiftError:
        raise
    except Exception as exc:
        _refuse_token_inputs(tables, spec)
        raise ConfigError(
            f"architecture {spec.name!r} cannot take the dataset's {shape}: "
            f"{type(exc).__name__}: {_one_line(exc)}"
            + _input_form_hint(model, spec, image_shape, device),
            field="architecture") from exc
    # On the meta device a float lookup may run (shapes only): the job would fail it.
    _refuse_token_inputs(tables, spec)
    expected = (1, spec.num_classes)
    got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if got != expected:
        with frozen_except(model), torch.no_grad():
            read_from = structure_note(model, probe)
        raise ConfigError(
            f"architecture {spec.name!r} returns {got} for one of the dataset's {shape}; RiFT "
            f"needs logits of shape {expected} (batch, architecture.num_classes)" + read_from
            + (f"; {SINGLE_LOGIT_HINT}" if got == (1, 1) else _output_shape_hint(got, expected)),
            field="architecture")


def _output_shape_hint(got: tuple[int, ...] | str, expected: tuple[int, int]) -> str:
    """What to change in forward when its output holds the logits in another shape. Before, a
    fully convolutional head's (1, C, 1, 1) and a ``.squeeze()`` that drops the batch
    dimension of a batch of one, (C,), were told the expected shape alone (the latter runs on
    larger batches, so the cause was not to be seen)."""
    if not isinstance(got, tuple):
        return ""
    if got == expected[1:]:
        return ("; forward drops the batch dimension for a batch of one (x.squeeze() removes "
                "every dimension of size 1): use x.flatten(1), since stages also give batches "
                "of one example")
    if len(got) > 2 and got[:2] == expected and all(side == 1 for side in got[2:]):
        return ("; the logits keep their spatial dimensions of size 1 (a 1×1 convolution as "
                "the head): return x.flatten(1)")
    return ""
