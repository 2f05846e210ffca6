"""What a checkpoint file is, from its bytes alone: safetensors or PyTorch (TorchScript and
``torch.export`` archives, programs rather than weights, are refused), and the safetensors header
(every tensor's name, dtype, shape and byte range, checked against the file's size).

Imports no torch, so the API can read a stored checkpoint's shapes from its header and the
sandboxed validator can check a safetensors file without importing torch; ``rift.checkpoints``
builds on it.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rift.errors import CheckpointError

CheckpointFormat = Literal["safetensors", "torch"]

# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: ``torch.compile``'s attribute inside a key, where a block of the network was compiled.
COMPILED_COMPONENT = "._orig_mod."
# The safetensors format caps its header at 100 MB; a larger claimed length means a corrupt file.
MAX_SAFETENSORS_HEADER = 100_000_000
# Bits per element of every safetensors dtype (sub-byte float formats included).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# torch's name (``torch.<name>``) of each safetensors dtype that has one element per value, so
# that a checkpoint's dtypes can be compared with a model's without loading it; F4 and F6 (packed
# below a byte) have none and go unchecked.
SAFETENSORS_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
    "I32": "int32", "U32": "uint32", "F32": "float32", "C64": "complex64",
    "I64": "int64", "U64": "uint64", "F64": "float64",
}


#: Leaf names of an input normaliser's two buffers, as AT code bases name them: robustness's
#: InputNormalize (``new_mean``/``new_std``), RobustBench's ImageNormalizer (``mean``/``std``)
#: and models holding ``mu``/``sigma``; RiFT's own buffer names too (``rift.checkpoint_layouts``).
NORMALIZER_PAIRS = (("new_mean", "new_std"), ("mean", "std"), ("mu", "sigma"),
                    ("input_mean", "input_std"))
#: A tensor under a normaliser's name with at most this many values has them recorded on
#: inspection (``normalizer_values``), so that job creation can compare them with the job's
#: normalisation without the file: one per input channel or feature.
MAX_NORMALIZER_VALUES = 64
_NORMALIZER_NAMES = frozenset(name for pair in NORMALIZER_PAIRS for name in pair)
# struct formats of the float types whose values are recorded; BF16 is float32's upper half.
_FLOAT_FORMATS = {"F16": ("e", 2), "F32": ("f", 4), "F64": ("d", 8), "BF16": ("bf16", 2)}


def is_normalizer_candidate(key: str, dtype: str, numel: int) -> bool:
    """Whether the tensor ``key`` (safetensors ``dtype`` name) could be an input normaliser's
    buffer, whose values inspection records."""
    return (key.rpartition(".")[2] in _NORMALIZER_NAMES and dtype in _FLOAT_FORMATS
            and 0 < numel <= MAX_NORMALIZER_VALUES)


#: At most this many tensors have their values recorded on inspection: a file holding thousands
#: of small tensors under normalisers' names would otherwise cost a read each (a range request
#: to the object store, at every job creation from a stored checkpoint) and carry them all to
#: the fit check. A normaliser is two tensors; the rest are compared by the job itself, which
#: loads every value (``rift.pipeline``), and the fit check leaves them uncompared.
MAX_NORMALIZER_TENSORS = 16
_PARTNER = {**{mean: std for mean, std in NORMALIZER_PAIRS},
            **{std: mean for mean, std in NORMALIZER_PAIRS}}


def normalizer_keys(tensors: Iterable[tuple[str, str, int]]) -> list[str]:
    """The keys, among ``tensors`` ((key, safetensors dtype name, number of values), in file
    order), whose values inspection records: candidates (:func:`is_normalizer_candidate`) whose
    partner in a normaliser pair (``mean`` beside ``std``, ...) is one too, at most
    :data:`MAX_NORMALIZER_TENSORS` of them, pairs kept whole."""
    candidates = [key for key, dtype, numel in tensors
                  if is_normalizer_candidate(key, dtype, numel)]
    present = set(candidates)
    chosen: list[str] = []
    for key in candidates:
        module, dot, leaf = key.rpartition(".")
        partner = f"{module}{dot}{_PARTNER[leaf]}"
        if partner not in present or key in chosen:
            continue
        if len(chosen) + 2 > MAX_NORMALIZER_TENSORS:
            break
        chosen += [key, partner]
    return chosen


def decode_floats(raw: bytes, dtype: str) -> list[float]:
    """The little-endian values of safetensors ``dtype`` (F16, BF16, F32, F64) in ``raw``."""
    code, size = _FLOAT_FORMATS[dtype]
    count = len(raw) // size
    if code == "bf16":
        halves = struct.unpack(f"<{count}H", raw[: count * size])
        return [struct.unpack("<f", struct.pack("<I", half << 16))[0] for half in halves]
    return list(struct.unpack(f"<{count}{code}", raw[: count * size]))


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a safetensors header: its byte range [begin, end) in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int





def detect_checkpoint_format(path: str | Path) -> CheckpointFormat:
    """Tell safetensors from PyTorch files by their first bytes (the extension is only a hint).

    Raises:
        CheckpointError: the file is missing, empty, neither format, or a TorchScript or
            ``torch.export`` archive (a program, not weights).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(9)
    if not head:
        raise CheckpointError(f"checkpoint file {path.name} is empty")
    if head.startswith(b"PK\x03\x04"):  # torch.save's default zip container
        _refuse_program_archive(path)
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then a JSON object
        return "safetensors"
    if path.suffix == ".safetensors":
        # Claimed by its name: let the header check say precisely what is wrong.
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol marker of torch's legacy (non-zip) format
        return "torch"
    raise CheckpointError(
        f"checkpoint file {path.name} is neither safetensors nor a PyTorch file "
        f"(first bytes {head[:8].hex()})"
    )


def _refuse_program_archive(path: Path) -> None:
    """Refuse zip archives that hold a program rather than ``torch.save``'s state dict: a
    TorchScript module (``torch.jit.save``: ``constants.pkl`` and ``code/``) or a
    ``torch.export`` program (``.pt2``: ``archive_format``). Loading either can run code
    (docs/algorithm.md); left to ``torch.load``, the first failed with torch's advice to retry
    with ``weights_only=False`` and the second as a "corrupt" file.

    Raises:
        CheckpointError: naming the kind of archive and what to save instead; or the archive
            cannot be opened (torch's reader says only "[Errno 22] Invalid argument" when the
            end of the file, where a zip keeps its table of contents, is missing).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"cannot read PyTorch checkpoint {path.name}: its zip archive is damaged or "
            f"truncated (an interrupted copy or upload?): {exc}") from exc
    # Every member sits in one top folder named by the archive: "<name>/constants.pkl".
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "data.pkl" in inner and "constants.pkl" not in inner:
        return
    if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
        kind = "a TorchScript module (torch.jit.save)"
    elif "archive_format" in inner:
        kind = "a torch.export program (.pt2)"
    else:
        return
    raise CheckpointError(
        f"checkpoint file {path.name} is {kind}, not a state dict: programs are refused because "
        "loading them can run code. Save the weights instead: torch.save(model.state_dict(), "
        "...) or safetensors")


def read_safetensors_header(path: Path) -> tuple[list[TensorRecord], dict[str, str]]:
    """Parse and check the header: JSON well formed, dtypes known, every tensor's byte range
    inside the data section, matching dtype×shape, and the ranges tiling it without overlap."""
    size = path.stat().st_size
    name = path.name
    if size < 8:
        raise CheckpointError(f"safetensors file {name} is truncated: {size} bytes, no header")
    with path.open("rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        if header_length > MAX_SAFETENSORS_HEADER or 8 + header_length > size:
            raise CheckpointError(
                f"safetensors file {name} is truncated or corrupt: its header claims "
                f"{header_length} bytes but the file has {size} bytes"
            )
        raw_header = handle.read(header_length)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"safetensors file {name} has a corrupt JSON header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"safetensors file {name}: header is not a JSON object")

    data_size = size - 8 - header_length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"safetensors file {name}: '__metadata__' must map str to str")

    records = [_tensor_record(name, key, info, data_size) for key, info in header.items()]
    position = 0
    for record in sorted(records, key=lambda r: (r.begin, r.end)):
        if record.begin != position:
            problem = "overlaps another tensor" if record.begin < position else "leaves a gap"
            raise CheckpointError(
                f"safetensors file {name}: tensor {record.name!r} at bytes "
                f"[{record.begin}, {record.end}) {problem} in the data section"
            )
        position = record.end
    if position != data_size:
        raise CheckpointError(
            f"safetensors file {name}: tensors cover {position} of {data_size} data bytes"
        )
    return records, metadata


#: The largest size (and running product of sizes) a tensor's shape may hold: torch's int64.
_MAX_DIMENSION = 2**63 - 1


def _tensor_record(file_name: str, key: str, info: object, data_size: int) -> TensorRecord:
    where = f"safetensors file {file_name}, tensor {key!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"{where}: entry needs 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise CheckpointError(f"{where}: data_offsets must be two ints, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise CheckpointError(
            f"{where}: data_offsets [{begin}, {end}] lie outside the {data_size}-byte data "
            "section (truncated or corrupt file)"
        )
    numel = 1
    for dim in shape:
        numel *= dim
        # Left to right, as the safetensors reader multiplies (in 64 bits): a zero dimension
        # after [2**32, 2**32] made the product 0 here, and torch's sizes are int64.
        if dim > _MAX_DIMENSION or numel > _MAX_DIMENSION:
            raise CheckpointError(f"{where}: shape {shape} has more than {_MAX_DIMENSION} "
                                  "elements along a dimension or before one (int64)")
    if numel * SAFETENSORS_DTYPE_BITS[dtype] != 8 * (end - begin):
        raise CheckpointError(
            f"{where}: {end - begin} bytes stored but dtype {dtype} × shape {shape} needs "
            f"{numel * SAFETENSORS_DTYPE_BITS[dtype] / 8:g}"
        )
    return TensorRecord(key, dtype, tuple(shape), begin, end)



def strip_wrapper_prefix(key: str) -> str:
    """Remove leading ``module.`` / ``_orig_mod.`` prefixes, however many and in any order, and
    ``torch.compile``'s ``_orig_mod.`` anywhere: a block compiled inside the network
    (``self.backbone = torch.compile(self.backbone)``) saves ``backbone._orig_mod.*``, and the
    built model holds the block itself (``rift.models.registry.unwrapped``). ``module.`` inside
    a key is left: a network may name a submodule ``module``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                stripped = True
    while COMPILED_COMPONENT in key:
        key = key.replace(COMPILED_COMPONENT, ".")
    return key
