"""Reading, checking and writing model checkpoints without ever executing code from the file.

Two formats are read, recognised by their content rather than their name: safetensors (an 8-byte
little-endian header length, a JSON header, then raw tensor bytes) and PyTorch files, which are
always opened with ``torch.load(..., weights_only=True)``: its restricted unpickler refuses any
object other than tensors and plain containers, so a ``__reduce__`` payload is never run. There is
deliberately no fallback to a full unpickler; ``rift.checkpoint_pickle`` widens the allow-list
only with numpy's constructors and inert placeholders for ordinary objects saved beside the
weights (training arguments, config objects, a whole pickled ``nn.Module``).

Checkpoints are normalised to a flat ``{key: CPU tensor}`` dict: common training-script containers
are unwrapped and the prefixes added by ``nn.DataParallel`` (``module.``) and ``torch.compile``
(``_orig_mod.``) are stripped, so a checkpoint's keys can be compared with ``model.state_dict()``.
Where several containers hold different weights (a model and its EMA, a student and its
teacher) each is a weights *entry*, named by its key path (``"ema"``, ``"model.state_dict"``):
the caller names the one to use (``entry``), and without one the file is refused listing them
(:class:`rift.errors.CheckpointEntryError`), since taking either silently could fine-tune the
weights the user did not mean.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rift.checkpoint_format import (
    WRAPPER_PREFIXES,
    CheckpointFormat,
    detect_checkpoint_format,
    read_safetensors_header,
    strip_wrapper_prefix,
)
from rift.checkpoint_pickle import (
    Placeholder,
    describe_value,
    is_pickled_module,
    load_torch_checkpoint,
    module_state_dict,
)
from rift.errors import CheckpointEntryError, CheckpointError, CheckpointMismatchError
from rift.safetensors_bytes import safetensors_bytes

__all__ = ["WRAPPER_PREFIXES", "CheckpointFormat", "detect_checkpoint_format",
           "strip_wrapper_prefix"]

# Keys under which training scripts commonly nest the state dict (or the pickled model). When
# several hold different weights (a model and its EMA) each is an entry the caller must choose
# from; the order decides the key named among equal copies, and the order entries are listed in.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module",
                  "state", "weights", "params", "ema", "model_ema", "state_dict_ema",
                  "ema_state_dict", "ema_model")
# Containers nested inside containers, e.g. {"model": {"state_dict": {...}}}.
_MAX_CONTAINER_DEPTH = 3
# Running-count buffers of BatchNorm: older checkpoints lack them and they do not affect outputs.
OPTIONAL_KEY_SUFFIX = "num_batches_tracked"
# BatchNorm's running statistics, which eval mode normalises with: never optional.
_RUNNING_STATISTICS = ("running_mean", "running_var")

_PREVIEW_ITEMS = 8
_MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class CheckpointSummary:
    """What :func:`validate_checkpoint_file` found. ``num_parameters`` counts tensor elements
    (parameters and buffers alike); ``keys_sample`` holds the first few normalised keys."""

    format: CheckpointFormat
    num_tensors: int
    num_parameters: int
    keys_sample: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    #: The file's weights entries (see :func:`weight_entries`).
    entries: list[str] = field(default_factory=list)


def _preview(items: list[str], limit: int = _PREVIEW_ITEMS) -> str:
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", … and {len(items) - limit} more"
    return shown


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "…"


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (empty when absent); header checked."""
    return read_safetensors_header(Path(path))[1]


# --------------------------------------------------------------------------------------------
# Loading and normalising
# --------------------------------------------------------------------------------------------


def _load_raw(path: Path, fmt: CheckpointFormat, mmap: bool = False) -> object:
    if fmt == "safetensors":
        read_safetensors_header(path)
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # the Rust reader raises SafetensorError and others
            raise CheckpointError(
                f"cannot read safetensors file {path.name}: {_short(exc)}"
            ) from exc
    def load() -> object:
        if mmap:
            # Tensors stay in the file (a private memory map) until read; zip files only.
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        # A file object, not the path: torch.load switches to safetensors on a ".safetensors"
        # name, and we have already decided the format from the content.
        with path.open("rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)

    try:
        return load_torch_checkpoint(path, load)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path.name}: {_unpickler_reason(exc)}, and code from a "
            "checkpoint is never run (only tensors, plain containers, numpy values and the "
            "attributes of ordinary objects are read). Re-save just the state dict "
            "(torch.save(model.state_dict(), ...)) or use safetensors"
        ) from exc
    except CheckpointError:
        raise  # already in our words (too many classes named)
    except Exception as exc:  # damaged zip, truncated pickle, bad magic number, …
        # torch's messages may advise retrying with weights_only=False (code execution), which
        # we never pass on (see _unpickler_reason): then only the error's type is shown.
        detail = _short(exc) if "weights_only" not in str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read PyTorch checkpoint {path.name} (corrupt or truncated?): {detail}"
        ) from exc


# torch's refusals (and rift.checkpoint_pickle's), in our words, with the global they name.
_REFUSALS = (
    # rift.data.pickled_arrays' own words (no advice of torch's in them).
    (r"(a pickled numpy [^\n]+)", "{}"),
    (r"refused call of GLOBAL ([\w.]+)",
     "it calls {} on loading, which runs code: no checkpoint needs that, so the file is taken "
     "for an attack"),
    (r"GLOBAL ([\w.]+) whose module", "it names {}, whose module is never loaded"),
    (r"Can only (?:SETITEM|append)\w* .*<class '([\w.]+)'>",
     "it holds a {}, a dict or list subclass that only its own code can rebuild"),
    (r"persistent_load of storage is allowed, but got <class 'str'>",
     "it is a whole model saved in the legacy (non-zip) format, which embeds the class's source"),
    (r"<class '([\w.]+)'>", "it holds a {} that weights-only loading cannot rebuild"),
    (r"GLOBAL\s+([\w.]+)", "it names the Python global {}"),
    (r"Unsupported operand (\d+)", "it uses pickle opcode {}, which weights-only loading refuses"),
)


def _unpickler_reason(exc: BaseException) -> str:
    """Why the weights-only unpickler refused the file, in our words. torch's own message
    advises retrying with ``weights_only=False`` (code execution), which we never offer, so no
    part of it is passed on except the refused global's full dotted name."""
    text = str(exc)
    for pattern, reason in _REFUSALS:
        match = re.search(pattern, text)
        if match:
            return reason.format(*match.groups())
    return "it holds a pickled object that weights-only loading refuses"


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, Tensor) for v in obj.values())


def _as_mapping(value: object) -> Mapping[Any, Any] | None:
    """``value`` as a mapping to look for weights in: itself, or a placeholder's items (a dict
    subclass such as ``EasyDict``) or pickled attributes (a dataclass, a ``Namespace``)."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, Placeholder) and not is_pickled_module(value):
        if value.items:
            return value.items
        if isinstance(value.state, Mapping):
            return value.state
    return None


_KeyPath = tuple[str, ...]


def _found(obj: object, path: _KeyPath, source: str, depth: int) -> list[tuple[_KeyPath, object]]:
    """The distinct weights reachable from ``obj`` (at key ``path``) through the recognised
    container keys, with their paths, in :data:`CONTAINER_KEYS` order: ``obj`` itself (as a
    mapping) when it holds no container; a pickled module's weights. Equal copies count once.
    Where no container holds a state dict, the one holding some tensors (a state dict with a
    bad entry, which the caller names) or else ``obj`` is the only candidate."""
    if is_pickled_module(obj):
        assert isinstance(obj, Placeholder)
        return [(path, module_state_dict(obj, source))]
    mapping = _as_mapping(obj)
    if depth == 0 or mapping is None or _is_state_dict(mapping):
        return [(path, obj if mapping is None else mapping)]
    found = [candidate for key in CONTAINER_KEYS if key in mapping
             and (_as_mapping(mapping[key]) is not None or is_pickled_module(mapping[key]))
             for candidate in _found(mapping[key], (*path, key), source, depth - 1)]
    weights = [(where, value) for where, value in found if _is_state_dict(value)]
    if not weights:
        # A container holding some tensors is a state dict with a bad entry, which the caller
        # names; one holding none (a 'state' of counters) is not where the weights are, and the
        # caller's error lists this level's keys instead.
        partial: list[tuple[_KeyPath, object]] = [
            (where, value) for where, value in [*found, (path, mapping)]
            if isinstance(value, Mapping) and any(isinstance(v, Tensor) for v in value.values())]
        # An object holding no tensors is named as the object it is, not by its attributes.
        return partial[:1] or [(path, obj)]
    distinct: list[tuple[_KeyPath, object]] = []
    for where, value in weights:
        if not any(_same_weights(value, kept) for _, kept in distinct):
            distinct.append((where, value))
    return distinct


def _dotted(path: _KeyPath) -> str:
    return ".".join(path)


def weight_entries(obj: object, *, source: str = "checkpoint") -> list[str]:
    """The key paths (``"ema"``, ``"model.state_dict"``) of the distinct weights a loaded
    checkpoint object holds, in :data:`CONTAINER_KEYS` order; empty when its weights are at the
    top level (a plain state dict, a pickled model). Equal copies are listed once."""
    return [_dotted(where) for where, _ in _found(obj, (), source, _MAX_CONTAINER_DEPTH) if where]


def _entry_advice(entries: list[str]) -> str:
    shown = ", ".join(repr(entry) for entry in entries)
    return (f"set checkpoint_entry to one of {shown} (--checkpoint-entry on the command line), "
            "or save the one you mean on its own")


def _select_entry(obj: object, entry: str, source: str) -> object:
    """What the key path ``entry`` leads to in ``obj`` (a key may itself contain dots: the
    longest key that matches is taken at each level).

    Raises:
        CheckpointEntryError: no such path, listing the file's entries.
    """
    parts = entry.split(".")
    current, index = obj, 0
    while index < len(parts):
        mapping = _as_mapping(current)
        key = next((".".join(parts[index:stop]) for stop in range(len(parts), index, -1)
                    if mapping is not None and ".".join(parts[index:stop]) in mapping), None)
        if mapping is None or key is None:
            entries = weight_entries(obj, source=source)
            where = ".".join(parts[:index]) or "its top level"
            raise CheckpointEntryError(
                f"{source} has no entry {entry!r} (no key {parts[index]!r} at {where}); "
                + (f"its weights entries are {', '.join(map(repr, entries))}" if entries else
                   "its weights are at its top level: leave out checkpoint_entry"),
                entries=entries, field="checkpoint_entry")
        current, index = mapping[key], index + key.count(".") + 1
    return current


def _container(obj: object, source: str, entry: str | None) -> object:
    """The state dict inside ``obj``: the one entry it holds, or the one ``entry`` names.

    Raises:
        CheckpointEntryError: several entries hold different weights and ``entry`` is None, or
            ``entry`` names no entry (or one holding several).
    """
    root: object = obj
    path: _KeyPath = ()
    if entry is not None:
        obj, path = _select_entry(obj, entry, source), tuple(entry.split("."))
    found = _found(obj, path, source, _MAX_CONTAINER_DEPTH)
    if len(found) > 1:
        entries = [_dotted(where) for where, _ in found]
        shown = ", ".join(repr(name) for name in entries)
        inside = f" (inside entry {entry!r})" if entry is not None else ""
        raise CheckpointEntryError(
            f"{source} holds different weights under {shown}{inside}: which to use cannot be "
            "told from the file (a model and its EMA, a student and its teacher); "
            f"{_entry_advice(entries)}", entries=entries, field="checkpoint_entry")
    chosen = found[0][1]
    if entry is not None and not (isinstance(chosen, Mapping)
                                  and any(isinstance(v, Tensor) for v in chosen.values())):
        entries = weight_entries(root, source=source)
        advice = (_entry_advice(entries) if entries
                  else "its weights are at its top level: leave out checkpoint_entry")
        raise CheckpointEntryError(
            f"{source}: entry {entry!r} holds a {describe_value(chosen)}, not weights (a "
            f"mapping of tensors or a pickled model); {advice}", entries=entries, field="checkpoint_entry")
    return chosen


def _same_weights(a: object, b: object) -> bool:
    assert isinstance(a, Mapping) and isinstance(b, Mapping)
    if a is b:
        return True
    if [strip_wrapper_prefix(k) for k in a] != [strip_wrapper_prefix(k) for k in b]:
        return False
    return all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
               for x, y in zip(a.values(), b.values(), strict=True))


def normalize_state_dict(obj: object, *, source: str = "checkpoint", check_finite: bool = True,
                         entry: str | None = None) -> dict[str, Tensor]:
    """Turn a loaded checkpoint object into a flat ``{key: CPU tensor}`` state dict.

    Unwraps the :data:`CONTAINER_KEYS` containers (nested up to twice; placeholders of dict
    subclasses and ordinary objects are looked into too) and pickled modules (read as
    ``state_dict()`` would, see ``rift.checkpoint_pickle``), or takes the weights at the key
    path ``entry`` (``"ema"``, ``"model.state_dict"``); strips wrapper prefixes and checks that
    every value is a dense tensor and (with ``check_finite``) that floating-point tensors are
    finite. ``source`` names the checkpoint in error messages.

    Raises:
        CheckpointEntryError: several entries hold different weights and ``entry`` is None, or
            ``entry`` leads to no weights (the message and ``entries`` list the file's entries).
        CheckpointError: no state dict found, a non-tensor value, a key collision after prefix
            stripping, or NaN/Inf values (the message names the keys).
    """
    return _flatten(_container(obj, source, entry), source, check_finite)


def _flatten(obj: object, source: str, check_finite: bool) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {describe_value(obj)}, not a state dict (a mapping of tensors)"
        )
    if not obj:
        raise CheckpointError(f"{source} holds no tensors")
    result: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: key {key!r} is a {type(key).__name__}, not a str")
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {describe_value(value)} where a tensor is expected "
                f"(recognised containers: {', '.join(CONTAINER_KEYS)}; top-level keys: "
                f"{_preview([str(k) for k in obj])})"
            )
        if value.layout != torch.strided:
            raise CheckpointError(f"{source}: tensor {key!r} has unsupported layout {value.layout}")
        clean_key = strip_wrapper_prefix(key)
        if clean_key in result:
            raise CheckpointError(
                f"{source}: key {key!r} collides with another key once prefixes are removed"
            )
        result[clean_key] = value.detach().cpu()
    if check_finite:
        _check_finite(result, source)
    return result


def count_non_finite(tensor: Tensor) -> tuple[int, int]:
    """(NaN count, ±Inf count) of a floating-point or complex tensor, of any float type."""
    if tensor.is_floating_point() and tensor.element_size() == 1:
        # torch has no isfinite/isnan for the 8-bit float types; float32 holds them exactly.
        tensor = tensor.float()
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return 0, 0
    nan = int(torch.isnan(tensor).sum())
    return nan, int((~finite).sum()) - nan


def _check_finite(state_dict: Mapping[str, Tensor], source: str) -> None:
    bad: list[str] = []
    for key, tensor in state_dict.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
            continue
        nan, inf = count_non_finite(tensor)
        if nan or inf:
            bad.append(f"{key} ({nan} NaN, {inf} Inf)")
    if bad:
        raise CheckpointError(f"{source} holds non-finite values in {_preview(bad)}")


def load_state_dict(path: str | os.PathLike[str], *, mmap: bool = False, check_finite: bool = True,
                    entry: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors or PyTorch checkpoint into a flat ``{key: CPU tensor}`` dict: its
    weights, or those of its entry ``entry`` (a key path such as ``"ema"``).

    PyTorch files are read with ``weights_only=True`` only; see :func:`normalize_state_dict` for the
    unwrapping and checks applied. With ``mmap`` a PyTorch zip file's tensors are memory-mapped
    from the file instead of read (the caller may then check them piece by piece, with
    ``check_finite`` false).

    Raises:
        CheckpointEntryError: no ``entry`` for a file with several, or one it does not have.
        CheckpointError: missing, unreadable, unsafe, corrupt, truncated or non-finite checkpoint.
    """
    path = Path(path)
    fmt = detect_checkpoint_format(path)
    return normalize_state_dict(_load_raw(path, fmt, mmap), source=f"checkpoint {path.name}",
                                check_finite=check_finite, entry=entry)


# What a run's ``checkpoint`` argument may be: a file, or weights already in memory (a state dict,
# or what ``torch.load`` returned: a training script's dict holding one).
CheckpointSource = str | os.PathLike[str] | Mapping[str, Any]


def checkpoint_weights(checkpoint: CheckpointSource, *, entry: str | None = None,
                       check_finite: bool = True) -> dict[str, Tensor]:
    """The weights a run tunes: a file read by :func:`load_state_dict`, or an in-memory object
    given the same unwrapping, entry choice and checks (:func:`normalize_state_dict`). Before,
    a mapping was taken as it was: ``torch.load``'s ``{"state_dict": ..., "epoch": 3}`` was a
    mismatch, ``checkpoint_entry`` was ignored, and a model or numpy arrays failed inside with
    "object is not iterable" or "'numpy.ndarray' object has no attribute 'is_complex'".

    Raises:
        CheckpointError: as :func:`load_state_dict`; also an ``nn.Module`` or any other object
            that is neither a path nor a mapping, named with what to pass instead.
    """
    if isinstance(checkpoint, str | os.PathLike):
        return load_state_dict(checkpoint, entry=entry, check_finite=check_finite)
    if isinstance(checkpoint, nn.Module):
        raise CheckpointError(
            f"checkpoint is a model ({type(checkpoint).__name__}), not its weights: pass "
            "model.state_dict() or a checkpoint file (the network is built from "
            "config.architecture)")
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint is a {describe_value(checkpoint)}: pass a checkpoint file's path or a "
            "state dict (a mapping of names to tensors)")
    return normalize_state_dict(checkpoint, source="checkpoint", check_finite=check_finite,
                                entry=entry)


@dataclass(frozen=True)
class CheckpointEntries:
    """A checkpoint's weights entries (key paths, :func:`weight_entries`; empty when its weights
    are at its top level) and the normalised weights read: the chosen entry's, or with none
    chosen every entry's, by key path (``""`` for top-level weights)."""

    entries: list[str]
    weights: dict[str, dict[str, Tensor]]


def load_checkpoint_entries(path: str | Path, *, entry: str | None = None, mmap: bool = False,
                            check_finite: bool = True) -> CheckpointEntries:
    """Read a checkpoint as :func:`load_state_dict` does, but without ``entry`` a file holding
    several weights entries gives them all instead of being refused (an upload is checked
    whole, and the job that uses it names the entry).

    Raises:
        CheckpointEntryError: ``entry`` leads to no weights (or to several).
        CheckpointError: as :func:`load_state_dict`, for any entry.
    """
    path = Path(path)
    source = f"checkpoint {path.name}"
    raw = _load_raw(path, detect_checkpoint_format(path), mmap)
    entries = weight_entries(raw, source=source)
    if entry is not None:
        return CheckpointEntries(entries, {entry: normalize_state_dict(
            raw, source=source, check_finite=check_finite, entry=entry)})
    if len(entries) <= 1:
        return CheckpointEntries(entries, {entries[0] if entries else "": normalize_state_dict(
            raw, source=source, check_finite=check_finite)})
    return CheckpointEntries(entries, {name: normalize_state_dict(
        raw, source=f"{source} (entry {name!r})", check_finite=check_finite, entry=name)
        for name in entries})


def validate_checkpoint_file(path: str | Path, *, sample_size: int = 10,
                             entry: str | None = None) -> CheckpointSummary:
    """Check an uploaded checkpoint completely and summarise it (its entry ``entry``, if given).

    For safetensors the header (JSON, dtypes, byte ranges against the file size) is checked before
    any tensor is read; then the file is loaded as :func:`load_state_dict` does.

    Raises:
        CheckpointError: as :func:`load_state_dict`.
    """
    path = Path(path)
    fmt = detect_checkpoint_format(path)
    metadata = read_safetensors_header(path)[1] if fmt == "safetensors" else {}
    raw = _load_raw(path, fmt)
    source = f"checkpoint {path.name}"
    state_dict = normalize_state_dict(raw, source=source, entry=entry)
    return CheckpointSummary(
        format=fmt,
        num_tensors=len(state_dict),
        num_parameters=sum(t.numel() for t in state_dict.values()),
        keys_sample=list(state_dict)[:sample_size],
        metadata=metadata,
        entries=weight_entries(raw, source=source),
    )


# --------------------------------------------------------------------------------------------
# Fitting a state dict to a model
# --------------------------------------------------------------------------------------------


def check_compatible(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Require the checkpoint's keys and shapes to equal ``model.state_dict()``'s exactly, except
    that BatchNorm ``num_batches_tracked`` entries may be missing, and so may a key the model
    ties to another key the checkpoint holds (:func:`tied_keys`). Works on meta-device models.

    Raises:
        CheckpointMismatchError: with the complete ``missing``, ``unexpected`` and ``mismatched``
            (key, checkpoint shape, model shape) lists; the message shows the first few of each.
    """
    expected = model.state_dict()
    tied = tied_keys(model)
    # A key the model ties to one the checkpoint holds may be absent: its value is that key's
    # (safetensors' save_model, and Hugging Face's files, keep one name per shared tensor).
    missing = [
        k for k in expected if k not in state_dict and not k.endswith(OPTIONAL_KEY_SUFFIX)
        and not any(other in state_dict for other in tied.get(k, ()))
    ]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        shapes = [f"{k} (checkpoint {list(got)} vs model {list(want)})" for k, got, want in mismatched]
        parts.append(f"{len(mismatched)} shape mismatch(es): {_preview(shapes)}")
    if missing and not (unexpected or mismatched) and all(
            key.rpartition(".")[2] in _RUNNING_STATISTICS for key in missing):
        # Told only as missing keys, this sent users to architecture.name, not the cause.
        parts.append("these are BatchNorm running statistics, which the checkpoint lacks: "
                     "RiFT attacks, scores and evaluates the model in eval mode, where BatchNorm "
                     "normalises with them, so they cannot be left at their initial values; "
                     "save the whole model.state_dict() (buffers included) after training")
    pruned = _pruned_keys(missing, unexpected)
    if pruned:
        # Told only as missing and unexpected keys, this sent users to architecture.name.
        parts.append(f"{_preview(pruned)} {'was' if len(pruned) == 1 else 'were'} saved from "
                     "layers pruned with torch.nn.utils.prune (the checkpoint holds "
                     "<name>_orig and <name>_mask, whose product the layer applied): call "
                     "torch.nn.utils.prune.remove(module, name) on each pruned layer before "
                     "saving its state_dict, which stores the pruned weight under its own key")
    prefix = _extra_prefix(unexpected, set(expected)) if missing else None
    if prefix is not None:
        parts.append(f"every unexpected key is a model key with the extra prefix {prefix!r} "
                     "(e.g. a PyTorch Lightning checkpoint, which names the network by its "
                     "attribute); re-save the state dict with that prefix removed")
    raise CheckpointMismatchError(
        "the checkpoint does not fit the architecture (check 'architecture.name', "
        "'num_classes' and 'in_channels'): " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def _dtype_kind(tensor: Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "floating-point"
    return "bool" if tensor.dtype == torch.bool else "integer"


def check_dtypes(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Require every checkpoint tensor to survive the cast to the model's dtype: the same kind
    (floating-point, integer, complex, bool) and, for floats, finite once cast (a float64 of
    1e300 is inf in float32). Precision may change (fp16, bf16, fp64 → the model's float type).
    BatchNorm ``num_batches_tracked`` counters are exempt: they do not affect outputs. Checks
    only the keys both hold; pair with :func:`check_compatible`.

    Raises:
        CheckpointMismatchError: naming the keys, their dtypes and the model's.
    """
    problems: list[str] = []
    for key, want in model.state_dict().items():
        got = state_dict.get(key)
        if got is None or got.dtype == want.dtype or key.endswith(OPTIONAL_KEY_SUFFIX):
            continue
        if _dtype_kind(got) != _dtype_kind(want):
            # load_state_dict would cast silently: integer weights of a float model are not
            # weights (quantised?), and complex → real drops the imaginary part.
            problems.append(f"{key} ({_dtype_kind(got)} {got.dtype}; the model's is {want.dtype})")
        elif (want.is_floating_point() and not got.is_meta
              and not bool(torch.isfinite(got.to(want.dtype)).all())):
            problems.append(f"{key} ({got.dtype} values beyond the range of the model's "
                            f"{want.dtype})")
    if problems:
        raise CheckpointMismatchError(
            f"{len(problems)} checkpoint tensor(s) cannot be cast to the model's dtype: "
            f"{_preview(problems)}")


def tied_keys(model: nn.Module) -> dict[str, list[str]]:
    """State-dict keys of ``model`` naming one tensor (a tied weight, a module registered under
    two names): each such key → the other keys of its tensor."""
    keys_of: dict[int, list[str]] = {}
    for key, tensor in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
        keys_of.setdefault(id(tensor), []).append(key)
    return {key: [other for other in keys if other != key]
            for keys in keys_of.values() if len(keys) > 1 for key in keys}


def check_tied(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Require equal values under keys that name one tensor of ``model`` (a tied weight, or a
    module registered under two names): loading writes each key in turn into the same tensor,
    so the last one would silently win.

    Raises:
        CheckpointMismatchError: naming the keys whose values differ.
    """
    keys_of: dict[int, list[str]] = {}
    for key, tensor in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
        if key in state_dict:
            keys_of.setdefault(id(tensor), []).append(key)
    differing = [keys for keys in keys_of.values()
                 if not state_dict[keys[0]].is_meta
                 and any(not torch.equal(state_dict[keys[0]], state_dict[key]) for key in keys[1:])]
    if differing:
        shown = [" = ".join(keys) for keys in differing]
        raise CheckpointMismatchError(
            f"the architecture ties {len(differing)} group(s) of keys to one tensor, but the "
            f"checkpoint holds different values under them: {_preview(shown)}; it was saved "
            "from a model without these ties (check 'architecture.name')")


def _pruned_keys(missing: Sequence[str], unexpected: Sequence[str]) -> list[str]:
    """The missing keys the checkpoint holds as ``torch.nn.utils.prune``'s pair
    (``<key>_orig`` and ``<key>_mask``)."""
    held = set(unexpected)
    return [key for key in missing if f"{key}_orig" in held and f"{key}_mask" in held]


def _extra_prefix(unexpected: list[str], model_keys: set[str]) -> str | None:
    """The prefix ``p`` such that every unexpected key is ``p + k`` for a key ``k`` of the model,
    or None. Only ``module.`` and ``_orig_mod.`` are stripped on reading a file; a run takes
    the keys under another prefix (Lightning's ``model.``, ``net.``) only where they are all of
    the model's (``rift.checkpoint_layouts``), so here, with some missing, it is pointed out."""
    if not unexpected:
        return None
    first = unexpected[0]
    for key in model_keys:
        if first.endswith("." + key):
            prefix = first[: len(first) - len(key)]
            if all(k.startswith(prefix) and k[len(prefix):] in model_keys for k in unexpected):
                return prefix
    return None


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Copy ``state_dict``'s values into ``model`` in place (any device; dtypes are cast to the
    model's) after :func:`check_compatible`, :func:`check_dtypes` and :func:`check_tied`. Missing
    ``num_batches_tracked`` keep the model's values. Returns ``model``.
    """
    check_compatible(model, state_dict)
    check_dtypes(model, state_dict)
    check_tied(model, state_dict)
    source = OrderedDict(state_dict)
    # Safetensors files and normalised dicts carry no per-module format versions (torch's
    # ``_metadata``), and some modules refuse to load without one (torchvision's MNASNet raises
    # ValueError). The keys and shapes were just checked against this very model, so its own
    # versions describe them.
    versions = getattr(state_dict, "_metadata", None) or getattr(model.state_dict(), "_metadata",
                                                                  None)
    if versions is not None:
        setattr(source, "_metadata", versions)  # noqa: B010 (the attribute torch reads)
    try:
        with torch.no_grad():
            # strict=False only so that the optional BatchNorm counters may be absent;
            # everything else was just checked to match exactly.
            model.load_state_dict(source, strict=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        # A module's own loading code (_load_from_state_dict) refused the values.
        raise CheckpointMismatchError(
            f"the architecture refused the checkpoint while loading it: {_short(exc)}") from exc
    return model


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _cpu_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses shared ones)."""
    result: dict[str, Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"cannot save entry {key!r}: keys must be str and values tensors, "
                f"got {type(key).__name__} → {type(value).__name__}"
            )
        if value.is_meta:
            raise CheckpointError(f"cannot save tensor {key!r}: it is on the meta device (no data)")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() > 0 and pointer in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def check_save_target(path: str | Path) -> None:
    """Refuse a target the save would fail on, so that callers may check it before long work.

    Raises:
        CheckpointError: ``path`` is a folder (else the final rename fails naming the temporary
            file, which the user never chose).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"cannot write the checkpoint to {path}: it is a folder; give a "
                              f"file name, e.g. {path / 'model.safetensors'}")


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    # Write beside the target and rename, so a reader never sees a half-written checkpoint.
    check_save_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_safetensors(
    path: str | Path, state_dict: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``state_dict`` as safetensors (CPU, contiguous copies), with optional str→str
    ``metadata`` stored in the header.

    Raises:
        CheckpointError: non-str metadata, non-tensor values or meta-device tensors.
    """
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError("safetensors metadata must map str to str")
    tensors = _cpu_tensors(state_dict)
    data = safetensors_bytes(tensors, metadata)

    def write(target: str) -> None:
        Path(target).write_bytes(data)

    _atomic_write(Path(path), write)


def save_torch(path: str | Path, state_dict: Mapping[str, Tensor]) -> None:
    """Write ``state_dict`` with ``torch.save`` as a plain dict of CPU tensors (loadable with
    ``weights_only=True``).

    Raises:
        CheckpointError: non-tensor values or meta-device tensors.
    """
    tensors = _cpu_tensors(state_dict)
    _atomic_write(Path(path), lambda target: torch.save(tensors, target))
