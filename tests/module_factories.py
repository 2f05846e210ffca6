"""Small modules that behave like awkward real architectures, shared by the rift tests."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VersionedLinear(nn.Linear):
    """Like torchvision's MNASNet: loading needs the module's format version from the state
    dict's ``_metadata``, which safetensors files and plain dicts do not carry."""

    _version = 2

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any,
                              *args: Any, **kwargs: Any) -> None:
        if local_metadata.get("version") is None:
            raise ValueError("version should be set to 1 or 2 instead of None")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class TiedWeights(nn.Module):
    """Awkward ways to reuse one weight: ``b`` holds ``a``'s Parameter (tied) and runs after it,
    ``twice`` is one module called twice, and ``mix.weight`` is also read functionally before
    ``mix`` runs. Perturbing any of them must reach every use."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.b = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.twice = nn.Conv2d(6, 6, 1)
        self.mix = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.b(F.relu(self.a(x))))
        x = F.relu(self.twice(F.relu(self.twice(x))))
        features = F.relu(F.linear(x.mean((2, 3)), self.mix.weight.t()))
        return self.head(F.relu(self.mix(features)))


class OddLayers(nn.Module):
    """Conv3d, ConvTranspose2d, Conv1d and a bias-free Linear; no normalisation layer; a
    parameter-free layer with a buffer; an auxiliary head the eval forward never calls."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.volume = nn.Conv3d(1, 4, (3, 3, 3), padding=(0, 1, 1))
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.sequence = nn.Conv1d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, classes, bias=False)
        self.aux = nn.Linear(6, classes)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 6).view(1, 6, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.volume(x.unsqueeze(1))).squeeze(2)  # 3 channels = 3 depth slices
        x = F.relu(self.up(x))
        x = F.relu(self.sequence(x.flatten(2))) * self.gain
        return self.head(x.mean(2))


class AttentionNet(nn.Module):
    """Patch embedding, ``nn.MultiheadAttention`` (packed ``in_proj_weight``, a raw Parameter;
    ``out_proj``, a Linear the attention calls functionally), a class token and a LayerNorm."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0])
        return self.head(tokens[:, 0])


class TrainModeTuple(nn.Module):
    """Plain logits in eval mode, (logits, auxiliary logits) in train mode."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)
        self.aux = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = F.relu(self.stem(x)).mean((2, 3))
        if self.training:
            return self.head(features), self.aux(features)
        return self.head(features)


class HiddenRunningScale(nn.Module):
    """A layer that updates a *non-persistent* buffer in train mode (outside the state dict)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)
        self.register_buffer("scale", torch.ones(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.stem(x)).mean((2, 3))
        if self.training:
            with torch.no_grad():
                self.scale.mul_(0.9).add_(0.1 * features.abs().mean())
        return self.head(features / self.scale)


class CrossAttentionNet(nn.Module):
    """``nn.MultiheadAttention`` whose keys and values are narrower than its queries (``kdim``,
    ``vdim`` != ``embed_dim``): separate ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``
    instead of one packed ``in_proj_weight``."""

    def __init__(self, classes: int = 4, width: int = 8, context: int = 6) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.context = nn.Conv2d(3, context, 4, stride=4)
        self.attn = nn.MultiheadAttention(width, 2, kdim=context, vdim=context, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        queries = self.embed(x).flatten(2).transpose(1, 2)
        keys = F.relu(self.context(x)).flatten(2).transpose(1, 2)
        mixed = self.attn(queries, keys, keys, need_weights=False)[0]
        return self.head((queries + mixed).mean(1))


class BilinearEmbeddingNet(nn.Module):
    """An ``nn.Bilinear`` layer, an ``nn.Embedding`` position table read by index, and a
    frozen stem (``requires_grad=False`` from the builder)."""

    def __init__(self, classes: int = 4, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem.requires_grad_(False)
        self.positions = nn.Embedding(4, width)
        self.pair = nn.Bilinear(width, width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        features = F.adaptive_avg_pool2d(F.relu(self.stem(x)), 2).flatten(2).transpose(1, 2)
        index = torch.arange(4, device=x.device)
        features = features + self.positions(index)
        pooled = features.mean(1)
        return self.head(F.relu(self.pair(pooled, features.amax(1))))


class NormalizedNet(nn.Module):
    """GroupNorm, InstanceNorm (per-example statistics) and LayerNorm: none depends on the
    batch. ``batch_statistics=True`` adds a BatchNorm without running statistics, which in eval
    mode normalises with the statistics of the batch it is given."""

    def __init__(self, classes: int = 4, *, batch_statistics: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.instance = nn.InstanceNorm2d(8, affine=True)
        self.batch = (nn.BatchNorm2d(8, track_running_stats=False) if batch_statistics
                      else nn.Identity())
        self.layer = nn.LayerNorm(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.group(self.conv1(x)))
        x = F.relu(self.batch(self.instance(self.conv2(x))))
        return self.head(self.layer(x.mean((2, 3))))


def batch_statistics_net(classes: int = 4) -> NormalizedNet:
    return NormalizedNet(classes, batch_statistics=True)


def half_precision_net(classes: int = 4) -> NormalizedNet:
    """A builder returning its model in float16 (``model.half()``), as some export scripts do."""
    return NormalizedNet(classes).half()


class StructuredOutputNet(nn.Module):
    """An installed architecture whose forward returns its logits inside a structure:
    ``"dict"`` {"logits", "features"}, ``"namedtuple"`` (logits, features), ``"tuple"``
    (logits, features), ``"object"`` (an object with ``logits`` and ``features`` attributes, as
    a dataclass or Hugging Face's outputs), the ambiguous ``"two_logits"`` (logits, auxiliary
    logits), or ``"features_first_in_training"``: logits in eval mode, (features, logits) in
    train mode."""

    Output = namedtuple("Output", ["logits", "features"])

    @dataclasses.dataclass
    class Result:
        features: Tensor
        logits: Tensor

    def __init__(self, classes: int = 4, form: str = "dict") -> None:
        super().__init__()
        self.form = form
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)
        self.aux = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> object:
        features = F.relu(self.stem(x)).mean((2, 3))
        logits = self.head(features)
        if self.form == "dict":
            return {"features": features, "logits": logits}
        if self.form == "namedtuple":
            return self.Output(logits, features)
        if self.form == "tuple":
            return logits, features
        if self.form == "object":
            return self.Result(features, logits)
        if self.form == "two_logits":
            return logits, self.aux(features)
        return (features, logits) if self.training else logits


def structured_output_net(form: str) -> Callable[[int], StructuredOutputNet]:
    """A builder of ``StructuredOutputNet(classes, form)`` (for ``tests.entry_point_dist``)."""
    return lambda classes=4: StructuredOutputNet(classes, form)


dict_output_net = structured_output_net("dict")
namedtuple_output_net = structured_output_net("namedtuple")
tuple_output_net = structured_output_net("tuple")
object_output_net = structured_output_net("object")
two_logits_net = structured_output_net("two_logits")
features_first_in_training_net = structured_output_net("features_first_in_training")


class InPlaceActivations(nn.Module):
    """In-place operations on activations that eager PyTorch (and its autograd) runs correctly
    but a split at a weight can get wrong: ``relu_()`` whose result is not used (to torch.fx a
    dead node, dropped from a prefix), and ``+=`` into an activation made before the weight
    (cached, so every pass would add into the cache again)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(x)
        b = self.conv2(F.relu(a))
        b.relu_()  # only the mutation matters: conv3 reads the rectified b
        c = self.conv3(b)
        a += c
        return self.head(a.mean((2, 3)))


class ReLUInPlaceNet(nn.Module):
    """torchvision's style: ``nn.ReLU(inplace=True)`` whose result is used, and ``out +=
    identity`` into a fresh activation. Every cached split reproduces it."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.relu(self.stem(x))
        out = self.relu(self.conv1(identity))
        out = self.conv2(out)
        out += identity
        out = self.relu(out)
        return self.head(out.mean((2, 3)))


class DropoutLeftOn(nn.Module):
    """``F.dropout(x, p)`` in forward: its ``training`` defaults to True, so it drops units in
    eval mode too (a common slip), and every output is random."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.dropout(F.relu(self.stem(x)).mean((2, 3)), 0.5))


def with_running_statistics(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random BatchNorm running statistics (fresh ones are 0 and 1,
    which would hide a statistics mix-up), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


class CalibratedConv(nn.Conv2d):
    """A layer keeping calibration metadata as extra state (``get_extra_state``), as
    quantisation and FP8 libraries' layers do: its state dict holds a dict, not a tensor."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"calibrated": True}

    def set_extra_state(self, state: Any) -> None:
        self.calibration = state


class ExtraStateNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = CalibratedConv(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


class ViewFlattenNet(nn.Module):
    """A hand-written CNN flattening with ``.view``, as many CIFAR code bases do: fine in the
    default memory format, an error on a channels-last activation."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(out.view(out.size(0), -1))


class TokenClassifier(nn.Module):
    """A sequence classifier: an ``nn.Embedding`` looks up its input as token ids, mean-pooled
    into a linear head. ``cast=False`` looks up the float input as given (the lookup fails);
    ``cast=True`` casts it first (``x.long()``: runs, but the input has no gradient)."""

    def __init__(self, classes: int = 4, vocabulary: int = 16, *, cast: bool = False) -> None:
        super().__init__()
        self.cast = cast
        self.tokens = nn.Embedding(vocabulary, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        ids = x.flatten(1)
        return self.head(self.tokens(ids.long() if self.cast else ids).mean(1))


class FixedInputSizeNet(nn.Module):
    """A network whose ``fc`` expects the flattened features of ``size``×``size`` inputs (as
    hand-written ImageNet or MNIST models do): any other size fails in ``fc``."""

    def __init__(self, classes: int = 4, channels: int = 3, size: int = 224) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(4))
        self.fc = nn.Linear(4 * (size // 4) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class ChannelLastNet(nn.Module):
    """A network that takes (N, H, W, C) images and permutes them itself."""

    def __init__(self, classes: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).mean((2, 3))


class PlainConvNet(nn.Module):
    """Two convolutions and a linear head, no parametrization: the reference for the nets below
    once their parametrized weights are folded."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def _parametrized(apply: Callable[[nn.Module], object]) -> Callable[[int], PlainConvNet]:
    def build(classes: int = 4) -> PlainConvNet:
        model = PlainConvNet(classes)
        apply(model.conv2)
        apply(model.head)
        return model
    return build


# conv2's and head's weights computed by a parametrization: torch.nn.utils.parametrizations'
# (keys ``parametrizations.weight.original0``...) and the older hooks (``weight_g``/``weight_v``,
# ``weight_orig``/``weight_u``/``weight_v``).
weight_norm_net = _parametrized(nn.utils.parametrizations.weight_norm)
spectral_norm_net = _parametrized(nn.utils.parametrizations.spectral_norm)
hook_weight_norm_net = _parametrized(nn.utils.weight_norm)
hook_spectral_norm_net = _parametrized(nn.utils.spectral_norm)


class LazyNet(nn.Module):
    """Lazy layers: their weights have no shape until the first forward pass."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(6, 3, padding=1)
        self.head = nn.LazyLinear(classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


def compiled_net(classes: int = 4) -> nn.Module:
    """What a builder written for training returns: ``torch.compile`` of the network (compiled
    lazily, at its first call), keys and module names under ``_orig_mod.``."""
    return torch.compile(PlainConvNet(classes))


def data_parallel_net(classes: int = 4) -> nn.Module:
    """The network inside ``nn.DataParallel``: keys and module names under ``module.``."""
    return nn.DataParallel(PlainConvNet(classes))


def compiled_block_net(classes: int = 4) -> nn.Module:
    """A network with one block compiled (``self.conv2 = torch.compile(self.conv2)``, as
    training code compiles a backbone): its keys and module names hold ``_orig_mod.`` inside
    (``conv2._orig_mod.weight``)."""
    model = PlainConvNet(classes)
    model.conv2 = torch.compile(model.conv2)  # type: ignore[assignment]
    return model


class SignalNet(nn.Module):
    """A Conv1d network for (N, C, T) signals (audio), as a 3-D npz array holds them."""

    def __init__(self, classes: int = 4, channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, 4, 5, padding=2)
        self.head = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x)).mean(2))


class BatchNormLayoutsNet(nn.Module):
    """BatchNorm where users put it besides after a plain convolution: after a bias-free conv
    with reflect padding, after a grouped dilated conv (no affine, large eps, cumulative
    momentum), after a conv whose output also feeds a skip branch, before a conv
    (pre-activation), after a Linear (BatchNorm1d without affine parameters)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.grouped_bn = nn.BatchNorm2d(8, affine=False, eps=0.1, momentum=None)
        self.branch = nn.Conv2d(8, 8, 1)
        self.branch_bn = nn.BatchNorm2d(8)
        self.pre_bn = nn.BatchNorm2d(8)
        self.pre = nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular")
        self.proj = nn.Linear(8, 16)
        self.proj_bn = nn.BatchNorm1d(16, affine=False)
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.grouped_bn(self.grouped(x)))
        skip = self.branch(x)
        x = F.relu(self.branch_bn(skip)) + skip
        x = self.pre(F.relu(self.pre_bn(x)))
        return self.head(F.relu(self.proj_bn(self.proj(x.mean((2, 3))))))


class RefusesPerturbation(nn.Linear):
    """A Linear whose forward fails once its weight differs from the one it was loaded with (a
    model's own consistency check): MRC's ascent on this module fails, on every attempt."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("loaded", self.weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if not torch.equal(self.weight, self.loaded):
            raise RuntimeError("the weight differs from the checkpoint's")
        return super().forward(x)


class BadModuleNet(nn.Module):
    """A digits-shaped (1×8×8) network whose ``bad`` module cannot be scored."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bad = RefusesPerturbation(4 * 8 * 8, 16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.bad(F.relu(self.stem(x)).flatten(1))))


class CheckpointedNet(nn.Module):
    """A residual block under activation checkpointing (``torch.utils.checkpoint``), as timm's
    ``set_grad_checkpointing()`` or Hugging Face's ``gradient_checkpointing_enable()`` leave a
    model: reentrant or not, in every mode or (as Hugging Face does) in train mode only."""

    def __init__(self, classes: int = 4, reentrant: bool = True,
                 train_only: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, classes)
        self.reentrant, self.train_only = reentrant, train_only

    def forward(self, x: Tensor) -> Tensor:
        from torch.utils.checkpoint import checkpoint

        x = F.relu(self.stem(x))
        if self.training or not self.train_only:
            x = x + checkpoint(self.block, x, use_reentrant=self.reentrant)
        else:
            x = x + self.block(x)
        return self.head(F.relu(x).mean((2, 3)))


def reentrant_checkpoint_net(classes: int = 4) -> CheckpointedNet:
    return CheckpointedNet(classes)


def train_mode_checkpoint_net(classes: int = 4) -> CheckpointedNet:
    return CheckpointedNet(classes, train_only=True)


def checkpoint_net(classes: int = 4) -> CheckpointedNet:
    return CheckpointedNet(classes, reentrant=False)


class RecurrentNet(nn.Module):
    """Image rows read as a sequence by a two-layer LSTM with dropout between its layers (a
    recurrent layer's weights are no MRC row: named in a warning)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(24, 12)
        self.rnn = nn.LSTM(12, 8, num_layers=2, batch_first=True, dropout=0.5)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (N, 3, 8, 8) -> (N, 8 rows, 24)
        out, _ = self.rnn(F.relu(self.embed(rows)))
        return self.head(out[:, -1])


def scripted_net(classes: int = 4) -> nn.Module:
    """A builder that returns its network compiled to TorchScript."""
    return torch.jit.script(PlainConvNet(classes))


def network_and_transforms_net(classes: int = 4) -> tuple[nn.Module, str]:
    """A builder that returns the network with its preprocessing, as some model zoos do."""
    return PlainConvNet(classes), "transforms"


class CheckpointedPositions(nn.Module):
    """A position table a Linear makes from fixed coordinates (a buffer) under reentrant
    checkpointing: the input check sees no checkpoint (the input's path has none), and no
    gradient reaches ``positions``, though the output depends on it."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("coords", torch.linspace(-1, 1, 16).view(1, 16))
        self.positions = nn.Linear(16, 8 * 8 * 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        from torch.utils.checkpoint import checkpoint

        table = checkpoint(self.positions, self.coords, use_reentrant=True).view(1, 8, 8, 8)
        return self.head(F.relu(self.stem(x) + table).mean((2, 3)))


class GatedBranch(nn.Module):
    """A residual branch behind a gate buffer (a block pruned by a zero gate): with ``gate`` 0
    the output does not depend on ``branch``, which autograd still reaches (zero gradients,
    not none)."""

    def __init__(self, classes: int = 10, gate: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.register_buffer("gate", torch.tensor(gate))
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = x + self.gate * self.branch(x)
        return self.head(x.mean((2, 3)))


class TrainDroppedBranch(nn.Module):
    """A branch dropped in train mode (stochastic depth at rate 1): the eval-mode output, which
    MRC scores, depends on it, so the MRC table does not flag it; the train-mode loss does not,
    so fine-tuning it is refused (zero gradients, not none)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = x + (0.0 if self.training else 1.0) * self.branch(x)
        return self.head(x.mean((2, 3)))


def drops_normalization_net(classes: int = 4) -> nn.Module:
    """A builder's network that reuses the built-in small CNN without passing the ``mean``/
    ``std`` it was given on: RiFT's input buffers stay unset, so it applies no normalisation."""
    from rift.models.small_cnn import SmallCNN

    return SmallCNN(num_classes=classes, in_channels=3)
