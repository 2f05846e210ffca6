"""Checks of the arguments the client's helpers take, made before anything is sent, so that a
value the helper cannot use is a :class:`RiftUsageError` naming the argument, not a failure
later: an empty id (``GET /v1/jobs/`` was answered with a redirect, then "not the API's Job"),
a negative ``poll_interval`` (``ValueError: sleep length must be non-negative`` after the first
poll), a NaN ``timeout`` (every comparison with it false: the wait never ended), a NaN α (JSON
cannot carry it: "Out of range float values are not JSON compliant"), or a destination folder
that does not exist (found after the request, as a path the caller never gave)."""

from __future__ import annotations

import errno
import io
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from rift_client.errors import RiftUsageError


def checked_id(what: str, value: str) -> str:
    """``value`` if it is a non-empty string; else a :class:`RiftUsageError` naming ``what``.
    A resource the client returned, given in place of its id (``rift.wait(job)``,
    ``create_job(..., checkpoint_id=checkpoint)``), is told to pass its ``.id``: before, the
    message quoted the whole model (a job's config included, thousands of characters), and a
    ``checkpoint_id`` failed in json ("Object of type Checkpoint is not JSON serializable")."""
    if isinstance(value, str) and value:
        return value
    own_id = getattr(value, "id", None)
    if isinstance(own_id, str):
        raise RiftUsageError(f"{what} must be an id (a string), not a {type(value).__name__}: "
                             f"pass its .id ({own_id!r})", field=what)
    raise RiftUsageError(f"{what} must be a non-empty string, not {value!r:.100}", field=what)


def path_segment(what: str, value: str) -> str:
    """``value`` as one path segment, escaped so that an id cannot reach another route; an
    empty one (which would name the collection instead) is a :class:`RiftUsageError`."""
    return quote(checked_id(what, value), safe="")


def plain_scalar(value: object) -> object:
    """A numpy or torch scalar (``np.float32(0.5)``, ``np.int64(5)`` from ``argmax``,
    ``torch.tensor(0.35)``) as the Python number it holds (its own ``item()``); anything else
    as it is. The number checks below take their values through this: before, they refused
    such a value as "must be a finite number, not np.float32(0.5)", and a project limit of
    ``np.int64(4)`` failed in json ("Object of type int64 is not JSON serializable")."""
    item = getattr(value, "item", None)
    if callable(item) and hasattr(value, "dtype") and tuple(getattr(value, "shape", (1,))) == ():
        return item()
    return value


def wait_times(timeout: float | None, poll_interval: float, *,
               interval_name: str = "poll_interval") -> tuple[float | None, float]:
    """A wait's ``timeout`` (None, or a number: one not above 0 means no time left) and its
    ``poll_interval`` (or the interval called ``interval_name``: seconds, above 0 and finite;
    0 would poll the service without pause), checked, as Python numbers."""
    timeout, poll_interval = plain_scalar(timeout), plain_scalar(poll_interval)  # type: ignore[assignment]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or math.isnan(timeout)):
        raise RiftUsageError(f"timeout must be a number of seconds or None, not {timeout!r}",
                             field="timeout")
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float) \
            or not 0 < poll_interval < math.inf:
        raise RiftUsageError(f"{interval_name} must be a number of seconds above 0, not "
                             f"{poll_interval!r}", field=interval_name)
    return timeout, poll_interval


def positive_seconds(what: str, value: float) -> float:
    """``value`` if it is a number of seconds above 0 and finite (a client's ``timeout``): httpx
    took 0 as "give up at once", which read as "no service answers at <url>", and a negative or
    NaN one failed each request with its own ValueError."""
    value = plain_scalar(value)  # type: ignore[assignment]
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value < math.inf:
        raise RiftUsageError(f"{what} must be a number of seconds above 0, not {value!r}",
                             field=what)
    return float(value)


def finite_number(what: str, value: float) -> float:
    """``value`` if it is a finite number (JSON has no NaN or infinity); the service checks the
    range itself and names the field."""
    value = plain_scalar(value)  # type: ignore[assignment]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RiftUsageError(f"{what} must be a finite number, not {value!r}", field=what)
    return float(value)


def item_limit(limit: int | None) -> int | None:
    """``limit`` of an iterating list: None (all) or a count of at least 0."""
    limit = plain_scalar(limit)  # type: ignore[assignment]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise RiftUsageError(f"limit must be None or a whole number of at least 0, not {limit!r}",
                             field="limit")
    return limit


def json_document(what: str, value: object) -> object:
    """``value`` as JSON can carry it, checked before anything is sent: numpy and torch numbers
    and arrays (a notebook's ``np.float32`` rate, an ``np.int64`` from ``argmax``, a tensor's
    ``.max()``) become the Python numbers and lists they hold (their own ``tolist()``); NaN,
    infinity and any other object are a :class:`RiftUsageError` naming where they stand
    (``spec.config.finetune.lr``). Before, json's "Object of type int64 is not JSON
    serializable" or "Out of range float values are not JSON compliant", naming neither."""
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RiftUsageError(f"{what} is {value!r}, which JSON cannot carry: give a finite "
                                 "number", field=what)
        return value
    if isinstance(value, Mapping):  # its keys are strings: JobSpec checked them
        return {key: json_document(f"{what}.{key}", item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_document(f"{what}[{index}]", item) for index, item in enumerate(value)]
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and hasattr(value, "dtype"):  # numpy's and torch's, of any shape
        return json_document(what, tolist())
    raise RiftUsageError(f"{what} is a {type(value).__name__} ({value!r:.60}), which JSON cannot "
                         "carry: give a number, string, bool, None, list or dict", field=what)


def local_path_text(path: str | os.PathLike[str]) -> str:
    """``path`` with a leading ``~`` or ``~user`` made the home folder, as a shell would have:
    a notebook's ``"~/weights/"`` (and riftctl's ``--out=~/weights``, which no shell expands)
    made a folder literally called ``~`` in the working directory, and ``"~/model.pt"`` was
    "no such file". Anything else, a trailing separator included, is kept as written."""
    return os.path.expanduser(os.fspath(path))


def save_target(path: str | os.PathLike[str], name_in_folder: str) -> Path:
    """Where a download goes: ``path``, or ``path / name_in_folder`` when ``path`` is an existing
    folder or is written as one (``"weights/"``, a trailing separator: the folder is then made
    when missing, as ``riftctl jobs download --out`` makes it); a missing parent folder of a
    file is a :class:`FileNotFoundError` naming the caller's path, raised before anything is
    asked of the service."""
    text = local_path_text(path)
    # Path("weights/") is Path("weights"): without this look at the text, "weights/" named a
    # file called weights when the folder did not exist yet.
    separators = tuple(sep for sep in (os.sep, os.altsep, "/") if sep)
    if isinstance(text, str) and text.endswith(separators):
        folder = Path(text)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{text!r} names a folder, but a file of "
                                     "that name is in the way", text)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name_in_folder
    given = Path(text)
    target = given / name_in_folder if given.is_dir() else given
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no folder {str(target.parent)!r} to save the "
                                "download in", str(target))
    return target


#: What an upload sends: a file's path (streamed from disk), the bytes themselves, or a binary
#: file object (an open file, ``io.BytesIO``) read from its current position to its end.
UploadSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

#: The name an upload of bytes or of a nameless stream is sent under (the service's own default).
UNNAMED_UPLOAD = "upload"


@dataclass(frozen=True)
class Sendable:
    """An upload's source, checked: the regular file ``path``, or the seekable binary
    ``stream`` from position ``start``; ``size`` bytes, sent under ``name``."""

    name: str
    size: int
    path: Path | None = None
    stream: IO[bytes] | None = None
    start: int = 0

    @property
    def label(self) -> str:
        """The source in messages: the file's path, or the stream's name."""
        return str(self.path) if self.path is not None else self.name


def sendable(what: str, source: UploadSource, filename: str | None = None) -> Sendable:
    """``source`` checked before anything is sent: a path to a regular file (a missing one is
    the ``FileNotFoundError`` naming it; a folder, pipe or device a :class:`RiftUsageError`),
    bytes, or a seekable binary file object (each retry rewinds it to where it was). A text-mode
    file is a ``TypeError`` (its bytes are not the file's); a stream that cannot be rewound (a
    pipe, a socket) a :class:`RiftUsageError`: its size is unknown and a retry could not send
    it again. ``filename`` (else the file's or stream's own name) is what the service keeps."""
    if isinstance(source, str | os.PathLike):
        path, size = _regular_file(what, source)
        return Sendable(filename or path.name, size, path=path)
    if isinstance(source, bytes | bytearray | memoryview):
        content = bytes(source)
        return Sendable(filename or UNNAMED_UPLOAD, len(content), stream=io.BytesIO(content))
    kind = type(source).__name__
    if isinstance(source, io.TextIOBase) or (
            callable(getattr(source, "read", None)) and isinstance(source.read(0), str)):
        raise TypeError(f"{what} is a file opened in text mode ({kind}); open it in binary mode "
                        "('rb'): an upload sends the file's bytes")
    if not callable(getattr(source, "read", None)):
        raise TypeError(f"{what} must be a file's path (str or os.PathLike), bytes or a binary "
                        f"file object, not {kind}{_save_first_hint(source)}")
    seekable = getattr(source, "seekable", None)
    if not (callable(seekable) and seekable()):
        raise RiftUsageError(
            f"{what} is a stream that cannot be rewound ({kind}: a pipe, a socket, an HTTP "
            "body): its size is unknown and a retry could not send it again; read it into "
            "bytes or save it to a file first", field=what)
    start = source.tell()
    end = source.seek(0, io.SEEK_END)
    source.seek(start)
    if start >= end > 0:
        # Read already (hashed first, say): the empty rest would be sent, and refused as an
        # empty file, with no word of where the bytes went.
        raise RiftUsageError(f"{what} is at its end (position {start} of {end} bytes): nothing "
                             "is left to send; seek(0) first to send it whole", field=what)
    own_name = getattr(source, "name", None)
    name = filename or (os.path.basename(own_name) if isinstance(own_name, str) else "") \
        or UNNAMED_UPLOAD
    return Sendable(name, end - start, stream=source, start=start)


def _save_first_hint(source: object) -> str:
    """What to do with an object a notebook holds in place of a file: a model, a state dict, a
    tensor or an array is sent as a file saved from it (the client has no torch to save it
    with). Before, only "not OrderedDict", which says what is wrong but not what to pass."""
    if callable(getattr(source, "state_dict", None)):
        return ("; save its weights to a file or buffer first: buffer = io.BytesIO(); "
                "torch.save(model.state_dict(), buffer); buffer.seek(0), then pass buffer (or "
                "the path of safetensors.torch.save_file(model.state_dict(), path))")
    if isinstance(source, Mapping):
        return ("; a state dict is sent as a file saved from it: buffer = io.BytesIO(); "
                "torch.save(state_dict, buffer); buffer.seek(0), then pass buffer (or the "
                "bytes of safetensors.torch.save(state_dict))")
    if callable(getattr(source, "__array__", None)):
        return ("; save it to a file or buffer first (torch.save or numpy.savez to an "
                "io.BytesIO, seek(0), then pass the buffer)")
    return ""


def _regular_file(what: str, path: str | os.PathLike[str]) -> tuple[Path, int]:
    """``path`` and its size when it is a regular file; else a :class:`RiftUsageError` naming
    ``what``. A pipe (``/dev/stdin`` fed by ``cat``, a ``<(...)`` substitution) or a device has
    no size to announce and cannot be read a second time for a retry: its size read as 0, so
    an empty body was sent, and the service refused a file that "is empty"."""
    file = Path(local_path_text(path))
    info = file.stat()  # a missing file: the OSError naming it
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a pipe or device"
        raise RiftUsageError(
            f"{what} {str(file)[:200]!r} is {kind}, not a regular file: its size is unknown "
            "and a retry could not read it again; save it to a file first (riftctl "
            "checkpoints/datasets upload - does that for standard input)", field=what)
    return file, info.st_size
