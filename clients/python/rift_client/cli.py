"""``riftctl``: the RiFT service from the command line.

    riftctl checkpoints upload model.safetensors
    riftctl checkpoints list --format safetensors
    riftctl jobs create --checkpoint ck_123 --config config.json --label team=vision --wait
    riftctl jobs events JOB_ID
    riftctl jobs download JOB_ID --out weights/
    riftctl jobs materialize JOB_ID --alpha 0.35 --evaluate --download weights/
    riftctl webhooks create https://hooks.example.com/rift --event job.succeeded
    riftctl --output json jobs list --status running

Exit codes (for CI jobs and scripts):

    0  success (for wait/events/create --wait: the job succeeded; for materialize --wait:
       the weights were made)
    1  the job failed or was cancelled (materialize --wait: the materialization failed;
       export-mlflow --wait: the export failed)
    2  usage error (bad option, missing file, invalid config file or JSON, a URL or key that
       cannot be used, a TLS certificate not trusted here, a local file that cannot be read or
       written)
    3  the service refused the request (an error answer not listed below: 409, 422, 429,
       ...), or a checksum mismatch
    4  ``wait`` gave up: the job was still running when --timeout passed
    5  authentication or permission: the key is missing, unknown, revoked (401) or lacks the
       scope (403)
    6  not found (404): no such job, upload, webhook or artifact (in the key's project)
    7  the service cannot be used: unreachable, a server error (5xx, 503 once the retries are
       spent), or an answer that is not the API's (the URL names another server)
    130  interrupted (Ctrl-C): a download keeps its ``.part``, which the next one resumes

Progress bars and messages go to stderr, results to stdout; ``--output json`` prints results as
JSON (``jobs events``: one JSON object per line) so that scripts can parse them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from rift_client import __version__
from rift_client.arguments import local_path_text
from rift_client.cli_help import RiftTyper
from rift_client.cli_input import STDIN, as_regular_file, is_stream
from rift_client.client import RiftClient
from rift_client.config import ConfigError, resolve_config
from rift_client.core import header_token
from rift_client.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    FileChangedError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RiftAPIError,
    RiftClientError,
    RiftConnectionError,
    RiftUsageError,
    ServerError,
    UnexpectedResponseError,
    UntrustedCertificateError,
    WaitTimeoutError,
)
from rift_client.models import (
    KEY_SCOPES,
    MIN_TIME_LIMIT_SECONDS,
    PROJECT_LIMITS,
    SUCCEEDED,
    WEBHOOK_EVENT_TYPES,
    ApiKey,
    CandidateCurve,
    Event,
    InterpolationPoint,
    Job,
    Materialization,
    MlflowExportOutcome,
    MRCRow,
    MRCTable,
    Project,
    Usage,
    Webhook,
    WebhookDelivery,
    _Resource,
)
from rift_client.retry import RetryPolicy
from rift_client.terminal_text import TerminalConsole, terminal_safe

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_API_ERROR, EXIT_WAIT_TIMEOUT = 0, 1, 2, 3, 4
# A script tells "fix the key", "wrong id" and "try again later" apart by these; all three were
# exit 3 with every other refusal, so a CI step could not retry an outage without also
# retrying a typo.
EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 5, 6, 7
STAGES = ("mrc", "finetune", "interpolate")
#: What the service accepts as a resource id (api/schemas.py RESOURCE_ID_PATTERN): a
#: ``--checkpoint`` that is neither a file nor this is a mistyped file name.
CHECKPOINT_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


class StdoutConsole(TerminalConsole):
    """The console of results: a reader that closes the pipe raises ``BrokenPipeError``, which
    every command ends on quietly (``cli_help.RiftCommand``); rich's own answer is exit 1,
    the code of a failed job."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


@dataclass
class State:
    """What every command needs: how to build the client, how to print, and where."""

    make_client: Callable[[], RiftClient]
    output: OutputFormat
    quiet: bool
    out: Console
    err: Console
    #: Where the URL and the key were read (``CliConfig``), named by the errors they cause.
    url_origin: str = "--url"
    key_origin: str | None = None

    @property
    def json(self) -> bool:
        return self.output is OutputFormat.json

    @property
    def progress_shown(self) -> bool:
        return not self.quiet and self.err.is_terminal

    def emit(self, value: Any) -> None:
        """Print a result as JSON (one line) on stdout."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        print(json.dumps(value), flush=True)

    def note(self, message: str) -> None:
        """A progress message on stderr ("job ... queued; waiting"): text output only, and not
        with --quiet, which the README promised turns them off (it only hid the bars)."""
        if not self.json and not self.quiet:
            self.err.print(message, highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        """A human-readable line on stdout (text output only)."""
        if not self.json:
            self.out.print(message, highlight=False, soft_wrap=True)


app = RiftTyper(help="Command line of the RiFT service (Robust Critical Fine-Tuning).",
                  epilog="Exit codes: 0 success, 1 job failed or cancelled, 2 usage error "
                  "(or a TLS certificate not trusted: SSL_CERT_FILE names a CA bundle), "
                  "3 refused by the service (or checksum mismatch), 4 wait timed out, "
                  "5 key missing, invalid or without the scope (401/403), 6 not found (404), "
                  "7 service unreachable or failing (5xx, not the API), 130 interrupted "
                  "(a download keeps its .part to resume). Config file: "
                  "RIFTCTL_CONFIG or ~/.config/riftctl/config.toml (api_url, "
                  "api_key, timeout, upload_timeout). Proxies: HTTP_PROXY, HTTPS_PROXY, "
                  "NO_PROXY.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
checkpoints_app = RiftTyper(help="Upload, list, show and delete checkpoints.",
                              no_args_is_help=True)
datasets_app = RiftTyper(help="Upload, list, show and delete datasets.", no_args_is_help=True)
jobs_app = RiftTyper(help="Create, follow and collect RiFT jobs.", no_args_is_help=True)
webhooks_app = RiftTyper(help="Register, show and delete webhooks; show their deliveries.",
                           no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
audit_app = RiftTyper(help="The project's audit trail: which key changed what, and when.",
                      no_args_is_help=True)
app.add_typer(audit_app, name="audit")
admin_app = RiftTyper(help="Operator commands (a key with the admin scope): projects, their "
                      "limits and keys, the live workers.", no_args_is_help=True)
admin_projects_app = RiftTyper(help="Create, list, show, limit and delete projects.",
                               no_args_is_help=True)
admin_keys_app = RiftTyper(help="Create, list, show and revoke a project's API keys.",
                           no_args_is_help=True)
admin_app.add_typer(admin_projects_app, name="projects")
admin_app.add_typer(admin_keys_app, name="keys")
app.add_typer(admin_app, name="admin")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"riftctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(
        "--url", help="The service's base URL (else RIFT_API_URL, the config file's api_url, "
        "http://127.0.0.1:8000).")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="API key (else RIFT_API_KEY, the config file's api_key). Prefer those: a "
        "flag shows in the process list.")] = None,
    output: Annotated[OutputFormat, typer.Option(
        "--output", "-o", help="Result format on stdout.")] = OutputFormat.text,
    timeout: Annotated[float | None, typer.Option(
        "--timeout-http", min=0.1, help="Seconds to connect and between reads (default 60).")] = None,
    upload_timeout: Annotated[float | None, typer.Option(
        "--upload-timeout", min=0.1, help="Seconds an upload waits for its answer once sent: the "
        "service checks the file first (default 900).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress "
                                        "messages on stderr (errors still).")] = False,
    retries: Annotated[int | None, typer.Option(
        "--retries", min=0, help="Retries of a request the service refused, or answered 429/503 "
        f"(default {RetryPolicy().max_retries}, with backoff; 0: fail at the first).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the client's release and exit (the service's: GET /openapi.json).")] = False,
) -> None:
    """Command line of the RiFT service. Exit codes: 0 success, 1 job failed or cancelled,
    2 usage error, 3 refused by the service, 4 wait timed out, 5 auth, 6 not found,
    7 service unreachable or failing."""
    try:
        config = resolve_config(url=url, api_key=api_key, timeout=timeout,
                                upload_timeout=upload_timeout)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="config file") from exc
    ctx.obj = State(
        make_client=lambda: RiftClient(config.api_url, api_key=config.api_key or "",
                                       timeout=config.timeout,
                                       upload_timeout=config.upload_timeout,
                                       retry=None if retries is None
                                       else RetryPolicy(max_retries=retries)),
        # No console markup: what is printed holds the service's and the user's text (a URL's
        # "[/prefix]", a field "labels.x.[key]", a label value), which rich would otherwise read
        # as style tags, and crash on.
        output=output, quiet=quiet, out=StdoutConsole(markup=False),
        err=TerminalConsole(stderr=True, markup=False),
        url_origin=config.api_url_origin, key_origin=config.api_key_origin)


def _state(ctx: typer.Context) -> State:
    state = ctx.find_root().obj
    assert isinstance(state, State)
    return state


@contextlib.contextmanager
def _client(state: State) -> Iterator[RiftClient]:
    """The client, with every error turned into its message on stderr and its exit code: the
    client's own errors, and a local file that cannot be read or written (an ``--out`` folder
    that cannot be made, a full disk), so that no command ends in a traceback."""
    try:
        with state.make_client() as client:
            yield client
    except RiftUsageError as exc:
        _fail(state, EXIT_USAGE, str(exc), {"code": "usage_error", "message": str(exc),
                                            "field": exc.field})
    except FileChangedError as exc:
        _fail(state, EXIT_USAGE, str(exc), {"code": "file_changed", "message": str(exc),
                                            "path": exc.filename})
    except BrokenPipeError:
        raise  # stdout closed by its reader, not a local file: RiftCommand.invoke ends quietly
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        _fail(state, EXIT_USAGE, message, {"code": "local_file_error", "message": message,
                                           "path": exc.filename})
    except UnexpectedResponseError as exc:
        _fail(state, EXIT_UNAVAILABLE, str(exc), {
            "status": exc.status_code, "code": "unexpected_response", "message": str(exc)})
    except PreconditionFailedError as exc:
        # Only --if-match sends the header: named as the option the user typed, with the tag
        # to give instead once the resource's `get` shows it is still to be changed.
        hint = (f"its current ETag is {exc.current_etag}: `get` it again, and give --if-match "
                f"{_shell_word(exc.current_etag)} to act on it as it is now"
                if exc.current_etag else None)
        _fail(state, EXIT_API_ERROR, f"{exc.summary()}; {hint}" if hint else str(exc), {
            "status": exc.status_code, "code": exc.code, "message": exc.message,
            **exc.details, "field": "--if-match" if exc.field == "If-Match" else exc.field,
            **({"hint": hint} if hint else {})})
    except RiftAPIError as exc:
        hint = _key_hint(state) if exc.status_code == 401 else None
        # summary(): the answer without the client's own hint for a 401, which names
        # api_key= (a Python argument) where riftctl's names its own places.
        _fail(state, api_error_exit_code(exc), f"{exc.summary()}; {hint}" if hint else str(exc), {
            **_renamed_details(exc.details), "status": exc.status_code, "code": exc.code,
            "message": exc.message, "field": exc.field, **({"hint": hint} if hint else {})})
    except UntrustedCertificateError as exc:
        # This machine's trust, not the service's health: exit 2 (fix the setup), not 7 (a
        # CI step's "try again later", which no retry would end).
        _fail(state, EXIT_USAGE, str(exc), {"code": "untrusted_certificate", "message": str(exc),
                                            "reason": exc.reason})
    except RiftConnectionError as exc:
        # Nothing answers at the URL: say which of the four places gave it (a stale
        # RIFT_API_URL in the shell, a config file's api_url the user forgot about).
        hint = f"the URL came from {state.url_origin}" if exc.unreachable_url else None
        _fail(state, EXIT_UNAVAILABLE, f"{exc}; {hint}" if hint else str(exc), {
            "code": "connection_error", "message": str(exc), **({"hint": hint} if hint else {})})
    except ChecksumMismatchError as exc:
        _fail(state, EXIT_API_ERROR, str(exc), {"code": "checksum_mismatch", "message": str(exc)})
    except WaitTimeoutError as exc:
        _fail(state, EXIT_WAIT_TIMEOUT, str(exc), {
            "code": "wait_timeout", "message": str(exc), "field": "--timeout",
            "job_id": exc.job_id,
            "status": exc.last_status, "job_status": exc.last_status,
            **({"materialization_id": exc.materialization_id} if exc.materialization_id else {})})


def _renamed_details(details: dict[str, Any]) -> dict[str, Any]:
    """An error answer's extra keys for the JSON error line, the job's ``status`` (of a 409
    ``job_finished``, ``job_active``, ``job_not_succeeded``) as ``job_status``: spread as they
    were, it overwrote the HTTP status, so ``error["status"]`` read 409 for one 409 and
    ``"failed"`` for the next."""
    return {("job_status" if key == "status" else key): value for key, value in details.items()}


def api_error_exit_code(exc: RiftAPIError) -> int:
    """The exit code of an error answer: auth (401/403), not found (404) and the service's own
    failures (5xx) each have theirs; any other refusal is ``EXIT_API_ERROR``."""
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ServerError):
        return EXIT_UNAVAILABLE
    return EXIT_API_ERROR


def _key_hint(state: State) -> str:
    """For a 401: which key was sent, or that none was, and where to give one."""
    if state.key_origin is None:
        return ("riftctl sent no API key: set RIFT_API_KEY, give --api-key or put api_key in "
                "the config file")
    return f"the key sent came from {state.key_origin}"


def _fail(state: State, exit_code: int, message: str, error: dict[str, Any]) -> None:
    if state.json:
        # Every error object has "field" (None when nothing the caller typed is at fault: a
        # connection refused), so that a script reads error["field"] without a KeyError.
        print(json.dumps({"error": {"field": None, **error}}), file=sys.stderr, flush=True)
    else:
        state.err.print(Text("error:", style="bold red"), message, highlight=False,
                        soft_wrap=True)
    raise typer.Exit(exit_code)


def _transfer_progress(state: State) -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=state.err,
                    disable=not state.progress_shown, transient=True)


def _with_etag(record: _Resource) -> dict[str, Any]:
    """A record as JSON, a fetched one with the ETag it was read with (``etag``: what
    ``--if-match`` takes; not a field of the service's body, which is its header's; the
    answer to a write has none)."""
    fields = record.model_dump(mode="json")
    return fields if record.etag is None else {**fields, "etag": record.etag}


def _show_record(state: State, record: _Resource, title: str) -> None:
    if state.json:
        state.emit(_with_etag(record))
        return
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # a SHA-256 whole on a narrow terminal, not "8f39…"
    for key, value in _with_etag(record).items():
        if value is None or value == {} or value == []:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(key, text)
    _print_table(state, table)


def _print_table(state: State, table: Table) -> None:
    """A table on stdout: fitted to a terminal's width, at its natural width elsewhere. Piped
    or redirected, rich laid tables out in 80 columns, so that `checkpoints list | grep` lost
    the columns past the 80th and a cut value ended in "…"."""
    if state.out.is_terminal:
        state.out.print(table)
        return
    unbounded = state.out.options.update_width(1_000_000)
    width = state.out.measure(table, options=unbounded).maximum
    # Console.print clamps its width= to the console's, hence a console of the table's width.
    StdoutConsole(file=state.out.file, width=width, markup=False).print(table)


def _show_fetched(ctx: typer.Context, fetch: Callable[[RiftClient], _Resource],
                  title: str) -> None:
    """The body of every ``get`` command: fetch one record and show it."""
    state = _state(ctx)
    with _client(state) as client:
        record = fetch(client)
    _show_record(state, record, title)


def _shell_word(etag: str) -> str:
    """``etag`` as typed in a shell: single-quoted, so that its double quotes reach riftctl."""
    return f"'{etag}'"


def _if_match(value: str | None) -> str | None:
    """``--if-match``'s value as the header sends it: an ETag as ``get`` shows it (``"…"``),
    also when the shell dropped its double quotes (``--if-match "ab12…"`` arrives as ``ab12…``:
    quoted again here, else it could never match), or ``*``."""
    if value is None:
        return None
    tag = value.strip()
    if not tag:
        raise typer.BadParameter("must be an ETag (as `get` shows it) or '*', not empty",
                                 param_hint="--if-match")
    try:
        header_token("--if-match", tag, field="--if-match")
    except RiftUsageError as exc:
        raise typer.BadParameter(str(exc), param_hint="--if-match") from None
    return tag if tag == "*" or '"' in tag else f'"{tag}"'


def _if_match_option(kind: str, get: str | None = None) -> Any:
    return typer.Option(
        "--if-match", metavar="ETAG", callback=_if_match,
        help=f"Only if the {kind} is unchanged since `{get or kind + 's get'}` showed this "
        "ETag (else exit 3 with the current one, and nothing is changed); '*': any.")


def _delete(ctx: typer.Context, delete: Callable[[RiftClient], None], kind: str,
            resource_id: str) -> None:
    """The body of every ``delete`` command: delete one resource and say so."""
    state = _state(ctx)
    with _client(state) as client:
        delete(client)
    if state.json:
        state.emit({"deleted": resource_id})
    else:
        state.say(f"deleted {kind} {resource_id}")


Record = TypeVar("Record", bound=BaseModel)
#: How list tables print a time: to the second, never wrapped.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class _Column(Generic[Record]):
    """A column of a list table: its header, the cell of a record, how it may be laid out."""

    header: str
    cell: Callable[[Record], str]
    no_wrap: bool = False
    min_width: int | None = None
    overflow: Literal["fold", "crop", "ellipsis", "ignore"] | None = None


def _id_column(records: Sequence[Any]) -> _Column[Any]:
    # Ids whole (never wrapped nor cut): they are copied into other commands.
    return _Column("id", lambda record: str(record.id), no_wrap=True,
                   min_width=max((len(r.id) for r in records), default=2))


def _created_column() -> _Column[Any]:
    return _Column("created", lambda record: record.created_at.strftime(TIME_FORMAT),
                   no_wrap=True, min_width=19)


def _show_list(state: State, records: Sequence[Record], columns: Sequence[_Column[Record]],
               empty: str = "") -> None:
    """The body's end of every ``list`` command: the records as JSON, or as a table; with no
    records, the line ``empty`` instead of a table of headers alone (which read as a fault)."""
    if state.json:
        state.emit(list(records))
        return
    if not records and empty:
        state.say(empty)
        return
    table = Table()
    for column in columns:
        table.add_column(column.header, no_wrap=column.no_wrap, min_width=column.min_width,
                         overflow=column.overflow or "ellipsis")
    for record in records:
        table.add_row(*(column.cell(record) for column in columns))
    _print_table(state, table)


def _existing_file(path: Path, param_hint: str) -> Path:
    """``path`` if it is a file; else a usage error naming the option or argument it came from
    (without it click printed "Invalid value: x is not a file", naming nothing)."""
    if not path.is_file():
        why = "a folder, not a file" if path.is_dir() else "no such file"
        raise typer.BadParameter(f"{path}: {why}", param_hint=param_hint)
    return path


# ------------------------------------------------------------------------------------- usage


def _share(used: int, limit: int) -> str:
    return f"{used} of {limit} ({100 * used / limit:.1f}%)" if limit else f"{used} of {limit}"


def _size(count: int) -> str:
    """Bytes as a reader takes them in: "1.4 MiB" (binary units, as the service's limits are
    set: 50 GiB is 53687091200)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@app.command("usage")
def usage(ctx: typer.Context) -> None:
    """Show the project's stored bytes and active jobs against its limits (the numbers its
    413 and 429 answers use)."""
    state = _state(ctx)
    with _client(state) as client:
        record = client.usage()
    _show_usage(state, record)


def _show_usage(state: State, record: Usage) -> None:
    """A project's usage (``riftctl usage``, ``riftctl admin projects usage``)."""
    if state.json:
        state.emit(record)
        return
    stored = record.stored_bytes
    state.say(f"project {record.project}")
    # Before: bare byte counts only ("1508892 of 53687091200").
    state.say(f"stored bytes: {_share(stored.used, stored.limit)} (max_stored_bytes; "
              f"{_size(stored.used)} of {_size(stored.limit)})")
    state.say(f"  checkpoints {stored.checkpoints}, datasets {stored.datasets}, artifacts "
              f"{stored.artifacts}, reserved by active jobs {stored.reserved_by_active_jobs}, "
              f"by materializations {stored.reserved_by_materializations}")
    state.say(f"active jobs: {_share(record.active_jobs.used, record.active_jobs.limit)} "
              "(max_active_jobs)")
    pending = record.pending_materializations
    if pending is not None:  # None: a server older than the count
        state.say(f"materializations queued or running: {_share(pending.used, pending.limit)} "
                  "(max_pending_materializations)")
    state.say(f"max_job_cost: {record.max_job_cost} example-passes")
    if record.max_job_gflop is not None:
        state.say(f"max_job_gflop: {record.max_job_gflop} GFLOP")
    window = record.requests_this_minute
    if window is None:  # a server older than the live counts
        state.say(f"max_requests_per_minute: {record.max_requests_per_minute}")
    else:
        used = "unknown" if window.used is None else _share(window.used, window.limit)
        state.say(f"requests this minute: {used} (max_requests_per_minute; counted in "
                  f"{'Redis, all API processes' if window.counted_in == 'shared' else 'this API process'}"
                  f", resets in {window.resets_in_seconds:.0f} s)")
    streams = record.event_streams
    if streams is None:
        state.say(f"max_streams_per_key: {record.max_streams_per_key}")
    else:
        mine = ("" if streams.open_by_this_key is None
                else f"{streams.open_by_this_key} of {streams.limit_per_key} by this key, ")
        state.say(f"event streams open: {mine}{streams.open_by_project} by the project "
                  f"(max_streams_per_key; counted in the API process that answered)")


# ------------------------------------------------------------------------------- checkpoints


_Sent = TypeVar("_Sent", bound=BaseModel)


def _upload(state: State, path: Path, filename: str | None,
            send: Callable[[Path, str, Callable[[int, int], None]], _Sent]) -> _Sent:
    """``send(file, name, progress)`` with a progress bar on stderr: ``path`` itself, or for
    standard input (``-``) and a pipe a temporary copy of what it holds (see
    :mod:`rift_client.cli_input`), stored under ``filename``, else the path's own name."""
    if not is_stream(path):
        _existing_file(path, "PATH")
    name = filename or ("stdin" if path == STDIN else path.name)
    if not name:
        raise typer.BadParameter("a name is needed", param_hint="--filename")
    if is_stream(path):
        state.note(f"reading {'standard input' if path == STDIN else path} into a temporary file")
    with as_regular_file(path) as file, _transfer_progress(state) as progress:
        task = progress.add_task(f"uploading {name}", total=file.stat().st_size)
        return send(file, name,
                    lambda done, total: progress.update(task, completed=done, total=total))


def _filename_option(kind: str) -> Any:
    return typer.Option("--filename", help=f"The name the {kind} is stored under (default: the "
                        "file's name; 'stdin' for -).")


@checkpoints_app.command("upload")
def checkpoints_upload(ctx: typer.Context, path: Annotated[Path, typer.Argument(
        help="A .safetensors or PyTorch checkpoint file; - reads standard input.")],
        filename: Annotated[str | None, _filename_option("checkpoint")] = None) -> None:
    """Upload a checkpoint (its SHA-256 checked against the service's)."""
    state = _state(ctx)
    with _client(state) as client:
        record = _upload(state, path, filename,
                         lambda p, name, cb: client.upload_checkpoint(p, filename=name, progress=cb))
    if state.json:
        state.emit(record)
    else:
        data = record.model_dump()
        state.say(f"checkpoint {data['id']}: {data['filename']}, {data['format']}, "
                  f"{data['num_tensors']} tensors, {data['num_parameters']} parameters, "
                  f"sha256 {data['sha256']} (verified)")
        if len(data.get("entries") or []) > 1:
            shown = ", ".join(data["entries"])
            state.say(f"it holds several sets of weights ({shown}): a job on it names one "
                      "with --checkpoint-entry")


@checkpoints_app.command("list")
def checkpoints_list(
    ctx: typer.Context,
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="safetensors or torch: only checkpoints of this format.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Checkpoints to show.")] = 20,
) -> None:
    """List the project's checkpoints, newest first (following the pages as needed)."""
    state = _state(ctx)
    with _client(state) as client:
        records = list(client.list_checkpoints(format=format, page_size=min(limit, 100),
                                               limit=limit))
    _show_list(state, records, [
        _id_column(records),
        _Column("format", lambda c: c.format, no_wrap=True),
        _Column("size", lambda c: str(c.size), no_wrap=True),
        _Column("tensors", lambda c: str(c.num_tensors), no_wrap=True),
        _created_column(),
        _Column("filename", lambda c: c.filename, overflow="fold"),
    ], empty="no checkpoints" + (f" of format {format}" if format else ""))


@checkpoints_app.command("get")
def checkpoints_get(ctx: typer.Context, checkpoint_id: str) -> None:
    """Show a checkpoint's record."""
    _show_fetched(ctx, lambda client: client.get_checkpoint(checkpoint_id), f"checkpoint {checkpoint_id}")


@checkpoints_app.command("delete")
def checkpoints_delete(ctx: typer.Context, checkpoint_id: str, if_match: Annotated[
        str | None, _if_match_option("checkpoint")] = None) -> None:
    """Delete a checkpoint."""
    _delete(ctx, lambda client: client.delete_checkpoint(checkpoint_id, if_match=if_match),
            "checkpoint", checkpoint_id)


# ---------------------------------------------------------------------------------- datasets


@datasets_app.command("upload")
def datasets_upload(ctx: typer.Context, path: Annotated[Path, typer.Argument(
        help="An .npz file or a tar of an ImageFolder tree; - reads standard input.")],
        filename: Annotated[str | None, _filename_option("dataset")] = None) -> None:
    """Upload a dataset (its SHA-256 checked against the service's)."""
    state = _state(ctx)
    with _client(state) as client:
        record = _upload(state, path, filename,
                         lambda p, name, cb: client.upload_dataset(p, filename=name, progress=cb))
    if state.json:
        state.emit(record)
    else:
        data = record.model_dump()
        state.say(f"dataset {data['id']}: {data['filename']}, {data['kind']}, "
                  f"{data['num_examples']} examples, {data['num_classes']} classes, "
                  f"sha256 {data['sha256']} (verified)")


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(
        "--kind", "-k", help="npz or imagefolder: only uploads of this kind.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Datasets to show.")] = 20,
) -> None:
    """List the project's uploaded datasets, newest first (following the pages as needed;
    built-in datasets are not uploads: `datasets get NAME` shows them)."""
    state = _state(ctx)
    with _client(state) as client:
        records = list(client.list_datasets(kind=kind, page_size=min(limit, 100), limit=limit))

    def known(value: int | None) -> str:
        return "-" if value is None else str(value)

    _show_list(state, records, [
        _id_column(records),
        _Column("kind", lambda d: d.kind, no_wrap=True),
        _Column("content", lambda d: d.content or "-", no_wrap=True),
        _Column("examples", lambda d: known(d.num_examples), no_wrap=True),
        _Column("classes", lambda d: known(d.num_classes), no_wrap=True),
        _Column("size", lambda d: known(d.size), no_wrap=True),
        _created_column(),
        _Column("filename", lambda d: d.filename or "-", overflow="fold"),
    ], empty="no uploaded datasets" + (f" of kind {kind}" if kind else "")
       + " (built-in ones are not uploads: `riftctl datasets get NAME` shows them)")


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    action: Annotated[str | None, typer.Option(
        "--action", "-a", help="Only this action, e.g. job.deleted or key.revoked.")] = None,
    resource: Annotated[str | None, typer.Option(
        "--resource", "-r", help="Only events about this resource id (a job's, ...).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Events to show.")] = 20,
) -> None:
    """List who changed what in the project (jobs created, cancelled, deleted; uploads;
    keys; limits), newest first, with the acting key's prefix and the request id."""
    state = _state(ctx)
    with _client(state) as client:
        records = list(client.list_audit_events(action=action, resource_id=resource,
                                                page_size=min(limit, 100), limit=limit))
    _show_list(state, records, [
        _Column("when", lambda e: e.occurred_at.strftime(TIME_FORMAT), no_wrap=True,
                min_width=19),
        _Column("action", lambda e: e.action, no_wrap=True),
        _Column("resource", lambda e: e.resource_id or "-", no_wrap=True),
        _Column("by", lambda e: f"rift_{e.actor_key_prefix}_…" if e.actor_key_prefix
                else e.actor, no_wrap=True),
        _Column("request", lambda e: e.request_id or "-", overflow="fold"),
    ], empty="no audit events" + (f" of action {action}" if action else "")
       + (f" about {resource}" if resource else ""))


@datasets_app.command("get")
def datasets_get(ctx: typer.Context, dataset_id: str) -> None:
    """Show an uploaded dataset, or a built-in one by name."""
    _show_fetched(ctx, lambda client: client.get_dataset(dataset_id), f"dataset {dataset_id}")


@datasets_app.command("delete")
def datasets_delete(ctx: typer.Context, dataset_id: str, if_match: Annotated[
        str | None, _if_match_option("dataset")] = None) -> None:
    """Delete an uploaded dataset."""
    _delete(ctx, lambda client: client.delete_dataset(dataset_id, if_match=if_match),
            "dataset", dataset_id)


# -------------------------------------------------------------------------------------- jobs


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{value}' is not KEY=VALUE", param_hint="--label")
        if key in labels and labels[key] != label:  # the last one silently won
            raise typer.BadParameter(f"'{key}' is given twice ({labels[key]!r} and {label!r}); "
                                     "a label has one value", param_hint="--label")
        labels[key] = label
    return labels


class _RepeatedKeyError(ValueError):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of a key given twice ({"lr": 0.1, "lr": 0.2} sent 0.2), and the
    # service, which refuses it, never sees the file.
    # Counted once: a count per key was quadratic in the keys of a --config file.
    counts = Counter(key for key, _ in pairs)
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise _RepeatedKeyError(f"the key {repeated[0]!r} is given more than once in one object; "
                                "give it once")
    return dict(pairs)


#: Keys that make a JSON object with a ``config`` a run's record: ``manifest.json``'s version,
#: ``result.json``'s chosen α.
_RUN_RECORD_KEYS = frozenset({"manifest_version", "chosen_alpha"})


def _read_config(path: Path) -> dict[str, Any]:
    _existing_file(path, "--config")
    try:
        config = json.loads(path.read_text(), object_pairs_hook=_refuse_repeated_keys)
    except _RepeatedKeyError as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        kind = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}.get(path.suffix.lower())
        also = f"; {kind} is not read, convert it to JSON" if kind else ""
        raise typer.BadParameter(f"{path} is not valid JSON: {exc}{also}",
                                 param_hint="--config") from exc
    if not isinstance(config, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object (the job's RiftConfig)",
                                 param_hint="--config")
    if isinstance(config.get("config"), dict) and _RUN_RECORD_KEYS & set(config):
        # A job's manifest.json or result.json (or a library run folder's): its 'config' is the
        # full config the job ran, what a rerun submits (the riftctl twin of `rift run
        # --config`, rift/cli.py; this client imports no rift).
        return dict(config["config"])
    if isinstance(config.get("config"), dict) and "architecture" not in config:
        # A POST /v1/jobs body saved from curl or the docs: sent as the config, every key of it
        # came back "unknown setting".
        raise typer.BadParameter(
            f"{path} holds a whole job request (a 'config' key): put only its 'config' object in "
            "the file, and give the checkpoint, dataset and labels as --checkpoint, --dataset "
            "and --label", param_hint="--config")
    return config


def _describe(job: Job) -> str:
    text = job.status
    if job.stage and not job.finished:
        text += f", stage {job.stage} {job.progress * 100:.0f}%"
    if job.queue_position:
        text += f", queue position {job.queue_position}"
    if job.progress_message and not job.finished:
        text += f": {job.progress_message}"
    return text


def _rate(lr: float) -> str:
    """A learning rate as ``:g`` writes it where that is the rate itself, else whole: ``:g``
    keeps 6 significant digits, and two rates of a grid could read alike."""
    text = f"{lr:g}"
    return text if float(text) == lr else repr(float(lr))


def _chosen_lr(metrics: dict[str, Any] | None) -> float | None:
    """A sweep's chosen learning rate (``metrics["sweep"]["lr"]``, recorded by its pick); None
    for a one-candidate job, whose rate is its config's ``finetune.lr``."""
    sweep = (metrics or {}).get("sweep")
    lr = sweep.get("lr") if isinstance(sweep, dict) else None
    return float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None


def _chosen_candidate(job: Job) -> str:
    """``module fc, lr 0.05`` for a sweep (which of its candidates the result is), else
    ``module fc``."""
    lr = _chosen_lr(job.metrics)
    return f"module {job.selected_module}" + (f", lr {_rate(lr)}" if lr is not None else "")


def _warning_lines(job: Job) -> list[str]:
    """The job's warnings, ``warning (stage): message`` each, and a line saying how many more
    the job has when the API's list stopped short of them."""
    shown = job.warnings or []
    lines = [warning.line() for warning in shown]
    more = (job.warnings_total or 0) - len(shown)
    if more > 0:
        lines.append(f"warning: {more} more not shown (riftctl jobs events {job.id})")
    return lines


def _finish(state: State, job: Job) -> None:
    """Print the final job and exit 1 unless it succeeded. Its warnings go to stderr first, one
    line each, in text output (also with --quiet: they are about the result, not progress; JSON
    carries them in the job)."""
    if state.json:
        state.emit(job)
    else:
        for line in _warning_lines(job):
            state.err.print(line, highlight=False, soft_wrap=True)
        state.say(f"job {job.id} {job.status}" + (
            f": {job.error.code}: {job.error.message}" if job.error else "") + (
            f" (field: {job.error.field})" if job.error and job.error.field else "") + (
            f" ({_chosen_candidate(job)}, α = {job.chosen_alpha:g})"
            if job.status == SUCCEEDED and job.chosen_alpha is not None else ""))
    if job.status != SUCCEEDED:
        raise typer.Exit(EXIT_JOB_FAILED)


def _wait(state: State, client: RiftClient, job_id: str, timeout: float | None,
          poll_interval: float) -> Job:
    """Wait for the job with a progress bar over its three stages."""
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                  console=state.err, disable=not state.progress_shown, transient=True) as bar:
        task = bar.add_task(f"job {job_id}", total=len(STAGES))

        def update(job: Job) -> None:
            done = STAGES.index(job.stage) + job.progress if job.stage in STAGES else 0.0
            bar.update(task, completed=len(STAGES) if job.finished else done,
                       description=terminal_safe(f"job {job_id}: {_describe(job)}"))

        def outage(error: RiftClientError | None) -> None:
            # The wait goes on through an outage (up to RetryPolicy.max_outage_s) in silence
            # otherwise: the user could not tell a stalled job from an unreachable service.
            if error is not None:
                state.note(f"the service is not answering ({error}); still waiting for job "
                           f"{job_id}, for up to {client.retry.max_outage_s:g} s")
            else:
                state.note(f"the service answers again; waiting for job {job_id}")

        return client.wait(job_id, timeout, poll_interval=poll_interval, on_update=update,
                           on_outage=outage)


def _home_expanded(value: Path | None) -> Path | None:
    """A path option's value with ``~`` made the home folder: no shell expands it in
    ``--out=~/weights`` or in a quoted value (see ``local_path_text``)."""
    return None if value is None else Path(local_path_text(value))


def _file_or_id(value: str, noun: str, option: str) -> Path:
    """``value`` as a path; a usage error naming ``option`` when it is neither a file nor an id
    (sent as an id, a mistyped file name came back as a 422 on the id's pattern, exit 3)."""
    path = Path(local_path_text(value))
    if not path.is_file() and not CHECKPOINT_ID.fullmatch(value):
        why = "a folder" if path.is_dir() else "no such file"
        raise typer.BadParameter(f"{value}: {why}, and not a {noun} id (ids are letters, digits, "
                                 f"'_' and '-'; `riftctl {noun}s list` shows them)",
                                 param_hint=option)
    return path


# The datasets a job reads from an upload (``dataset_id``); the others are built in.
_UPLOADED_DATASET_KINDS = ("npz", "imagefolder")


def _check_dataset_given(job_config: dict[str, Any], dataset: str | None) -> None:
    """A config naming an uploaded kind of dataset with no ``--dataset``: a usage error saying
    what to give (the service's 422 says "pass its id as 'dataset_id'", a field of the request
    riftctl builds, not an option of this command)."""
    section = job_config.get("dataset")
    name = section.get("name") if isinstance(section, dict) else None
    if dataset is None and name in _UPLOADED_DATASET_KINDS:
        local = section.get("path") if isinstance(section, dict) else None
        given = (f"--dataset {local} (the config's dataset.path)" if isinstance(local, str)
                 and Path(local).exists() else "--dataset FILE")
        raise typer.BadParameter(
            f"the config's dataset.name is {name!r}, which is read from an uploaded dataset: give "
            f"--dataset ID (`riftctl datasets upload FILE` prints it) or {given} to upload "
            "it with the job", param_hint="--dataset")


def _drop_local_dataset_path(state: State, job_config: dict[str, Any], dataset: str) -> None:
    """A config written for the library (``python -m rift run``, the tabular demo's) names its
    data file in ``dataset.path``; the service reads the uploaded dataset instead and refused
    the job (422 "leave out 'path'") after ``--dataset FILE`` had been uploaded. With
    ``--dataset`` given, the path is left out of the request, saying so."""
    section = job_config.get("dataset")
    if isinstance(section, dict) and "path" in section:
        path = section.pop("path")
        state.note(f"left out the config's dataset.path ({path}): the job reads --dataset "
                    f"{dataset}")


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    checkpoint: Annotated[str, typer.Option(
        "--checkpoint", "-c", help="A checkpoint id, or a checkpoint file to send with the job "
        "(in the same request).")],
    config: Annotated[Path, typer.Option(
        "--config", help="JSON file with the job's RiftConfig, or a job's manifest.json or "
        "result.json (its config: the job again).", callback=_home_expanded)],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="An uploaded dataset's id, or an .npz / ImageFolder tar to upload "
        "first (for config.dataset.name npz or imagefolder).")] = None,
    checkpoint_entry: Annotated[str | None, typer.Option(
        "--checkpoint-entry", help="The weights to tune when the checkpoint holds several (a "
        "model and its EMA): an entry its upload lists, e.g. state_dict_ema (sets "
        "config.checkpoint_entry).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", help="KEY=VALUE; repeat for several.")] = None,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", min=MIN_TIME_LIMIT_SECONDS, help="The job's wall-clock limit in seconds "
        f"(at least {MIN_TIME_LIMIT_SECONDS:g}, at most the service's JOB_TIME_LIMIT_SECONDS; "
        "default: that).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Makes re-running this command return the same job "
        "(default: a random key).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job; exit 1 unless it "
                                       "succeeds.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="With --wait: seconds before giving up (exit 4).")] = None,
) -> None:
    """Create a job on a checkpoint."""
    state = _state(ctx)
    job_config = _read_config(config)
    if checkpoint_entry is not None:
        job_config["checkpoint_entry"] = checkpoint_entry
    spec = {"config": job_config, "labels": _labels(label or []),
            "dataset_id": dataset, "time_limit_seconds": time_limit}
    checkpoint_file = _file_or_id(checkpoint, "checkpoint", "--checkpoint")
    dataset_file = _file_or_id(dataset, "dataset", "--dataset") if dataset is not None else None
    _check_dataset_given(job_config, dataset)
    if dataset is not None:
        _drop_local_dataset_path(state, job_config, dataset)
    with _client(state) as client:
        if dataset_file is not None and dataset_file.is_file():
            # Uploaded on its own (a dataset serves many jobs): kept if the job is refused, and
            # under the job's Idempotency-Key (a key per kind of resource) a re-run reuses it.
            stored = _upload(state, dataset_file, None, lambda p, name, cb: client.upload_dataset(
                p, filename=name, progress=cb, idempotency_key=idempotency_key))
            spec["dataset_id"] = stored.id
            state.note(f"uploaded {dataset_file.name} as dataset {stored.id}")
        if checkpoint_file.is_file():
            # The file goes in the job's own request (one multipart POST under one
            # Idempotency-Key): a re-run, or a job refused, leaves no stray checkpoint behind.
            job = _upload(state, checkpoint_file, None, lambda p, _name, cb: client.create_job(
                spec, checkpoint_file=p, idempotency_key=idempotency_key, progress=cb))
            state.note(f"uploaded {checkpoint_file.name} as checkpoint {job.checkpoint_id}")
        else:
            job = client.create_job(spec, checkpoint_id=checkpoint,
                                    idempotency_key=idempotency_key)
        if not wait:
            if state.json:
                state.emit(job)
            else:
                state.say(f"job {job.id} {job.status}")
            return
        state.note(f"job {job.id} {job.status}; waiting")
        job = _wait(state, client, job.id, timeout, 1.0)
    _finish(state, job)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[list[str] | None, typer.Option(
        "--status", "-s", help="queued, running, succeeded, failed, cancelled; repeatable.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", help="KEY=VALUE the jobs must have; repeatable.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Jobs to show.")] = 20,
) -> None:
    """List jobs, newest first (following the pages as needed)."""
    state = _state(ctx)
    labels = _labels(label or [])
    with _client(state) as client:
        # With their warnings (one query more per page on the service), so a result that
        # "succeeded" with something to say stands out in the list as it does in `jobs get`.
        jobs = list(client.list_jobs(status=status or None, labels=labels or None,
                                     page_size=min(limit, 100), limit=limit, expand="warnings"))
    _show_list(state, jobs, [
        _id_column(jobs),
        _Column("status", lambda j: j.status, no_wrap=True, min_width=9),
        _Column("stage", lambda j: j.stage or "-"),
        _Column("progress", lambda j: f"{j.progress * 100:.0f}%" if not j.finished else "-"),
        _Column("warnings", lambda j: str(j.warnings_total or "")),
        _created_column(),
        _Column("labels", lambda j: ", ".join(f"{k}={v}" for k, v in j.labels.items())),
    ], empty="no jobs" + (" match" if status or labels else ""))


@jobs_app.command("get")
def jobs_get(ctx: typer.Context, job_id: str) -> None:
    """Show a job, with its warnings."""
    state = _state(ctx)
    with _client(state) as client:
        job = client.get_job(job_id)
    if state.json:
        state.emit(_with_etag(job))
        return
    state.say(f"job {job.id}: {_describe(job)}")
    fields = {"checkpoint": job.checkpoint_id, "dataset": job.dataset_id, "device": job.device,
              "selected module": job.selected_module,
              # A sweep's: which of its lr_grid's rates the result was tuned with.
              "chosen lr": _chosen_lr(job.metrics), "chosen α": job.chosen_alpha,
              "cost estimate": _cost(job),
              "labels": ", ".join(f"{k}={v}" for k, v in job.labels.items()) or None,
              "error": f"{job.error.code}: {job.error.message}" if job.error else None,
              # The config setting the error blames, as the report page's failure line says it.
              "field": job.error.field if job.error else None,
              # To the second, as the list tables print times (not "17:49:25.801126+00:00").
              "created": job.created_at.strftime(TIME_FORMAT),
              "finished": job.finished_at.strftime(TIME_FORMAT) if job.finished_at else None,
              "etag": job.etag}
    for key, value in fields.items():
        if value is not None:
            state.say(f"  {key}: {value}")
    for stage in job.stages or []:
        state.say(f"  stage {stage.stage}: {stage.status} (attempts {stage.attempts})")
    metrics = job.metrics or {}
    for moment in ("before", "after"):
        values = metrics.get(moment)
        if isinstance(values, dict):
            # The test split's, whichever split α was chosen on (the curve's, `jobs curves`).
            state.say(f"  {moment} (test split): clean "
                      f"{_percent(values.get('clean_accuracy'))}, robust "
                      f"{_percent(values.get('robust_accuracy'))}")
    for line in _warning_lines(job):
        state.say(f"  {line}")


@jobs_app.command("wait")
def jobs_wait(
    ctx: typer.Context,
    job_id: str,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="Seconds before giving up (exit 4; default: no limit).")] = None,
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", min=0.1,
        help="Seconds between two looks when the event stream cannot be followed.")] = 2.0,
) -> None:
    """Wait for a job to finish (its warnings then on stderr); exit 0 if it succeeded, 1 if it
    failed or was cancelled."""
    state = _state(ctx)
    with _client(state) as client:
        job = _wait(state, client, job_id, timeout, poll_interval)
    _finish(state, job)


def _event_line(event: Event) -> str:
    payload = json.dumps(event.payload, separators=(", ", ": "))
    return f"{event.created_at:%H:%M:%S} #{event.id} {event.kind} {payload}"


@jobs_app.command("events")
def jobs_events(
    ctx: typer.Context,
    job_id: str,
    after: Annotated[int, typer.Option("--after", min=0, help="Start after this event id.")] = 0,
    follow: Annotated[bool, typer.Option(
        "--follow/--no-follow", help="Stream live until the job ends (SSE), or print the events "
        "so far.")] = True,
) -> None:
    """Print the job's events (JSON lines with --output json). Following, exit 0 if the job
    succeeded, 1 otherwise."""
    state = _state(ctx)
    with _client(state) as client:
        if follow:
            events: Iterator[Event] = client.stream_events(job_id, after=after)
        else:
            events = _events_so_far(client, job_id, after)
        for event in events:
            if state.json:
                state.emit(event)
            else:
                state.say(_event_line(event))
        job = client.get_job(job_id) if follow else None
    if job is not None and job.status != SUCCEEDED:
        raise typer.Exit(EXIT_JOB_FAILED)


def _events_so_far(client: RiftClient, job_id: str, after: int) -> Iterator[Event]:
    while True:
        page = client.list_events(job_id, after=after, limit=1000)
        yield from page.items
        if not page.items:
            return
        after = page.next_after


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (a running one stops at its next batch)."""
    state = _state(ctx)
    with _client(state) as client:
        job = client.cancel(job_id)
    if state.json:
        state.emit(job)
    else:
        requested = " (cancel requested)" if job.cancel_requested and not job.finished else ""
        state.say(f"job {job.id} {job.status}{requested}")


@jobs_app.command("delete")
def jobs_delete(ctx: typer.Context, job_id: str, if_match: Annotated[
        str | None, _if_match_option("job")] = None) -> None:
    """Delete a finished job with its records and artifacts (cancel a running one first)."""
    _delete(ctx, lambda client: client.delete_job(job_id, if_match=if_match), "job", job_id)


@jobs_app.command("download")
def jobs_download(
    ctx: typer.Context,
    job_id: str,
    names: Annotated[list[str] | None, typer.Argument(
        help="Artifacts to download (default: all).", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-d", help="Folder to save them in.",
                                      callback=_home_expanded)] = Path("."),
) -> None:
    """Download a job's artifacts (tuned weights, MRC table, ...), checking each SHA-256."""
    state = _state(ctx)
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is not a folder", param_hint="--out")
    saved = []
    with _client(state) as client:
        out.mkdir(parents=True, exist_ok=True)
        artifacts = client.list_artifacts(job_id)
        by_name = {a.name: a for a in artifacts}
        if not names and not artifacts:
            # Before: nothing printed and exit 0, as if a cancelled job's weights had been saved.
            job = client.get_job(job_id)
            if job.status != SUCCEEDED:
                message = (f"job {job_id} is {job.status}: it has no artifacts to download "
                           "(they are made when it succeeds)")
                _fail(state, EXIT_API_ERROR, message, {
                    "code": "job_not_succeeded", "message": message, "field": "job_id",
                    "status": job.status, "job_status": job.status})
        with _transfer_progress(state) as progress:
            for name in names or list(by_name):
                artifact = by_name.get(name) or client.get_artifact(job_id, name)
                task = progress.add_task(f"downloading {name}", total=artifact.size)

                def advance(done: int, size: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=size)

                path = client.download(job_id, name, out, progress=advance)
                saved.append({"name": name, "path": str(path), "size": artifact.size,
                              "sha256": artifact.sha256})
                if not state.json:
                    state.say(f"{path} ({artifact.size} bytes, sha256 verified)")
    if state.json:
        state.emit(saved)


def _describe_materialization(record: Materialization) -> str:
    text = (f"materialization {record.id} of job {record.job_id}: α = {record.alpha:g} "
            f"{record.status}, {record.artifact}")
    if record.clean_accuracy is not None:
        text += f", clean {_percent(record.clean_accuracy)}"  # 2 decimals, as `jobs get`
    if record.robust_accuracy is not None:
        text += f", robust {_percent(record.robust_accuracy)}"
    if record.error:
        text += f": {record.error}"
    return text


@jobs_app.command("materialize")
def jobs_materialize(
    ctx: typer.Context,
    job_id: str,
    alpha: Annotated[float, typer.Option(
        "--alpha", "-a", min=0.0, max=1.0, help="Interpolation weight: 0 is θ_AT (the uploaded "
        "checkpoint), 1 is θ_FT (the fine-tuned weights).")],
    evaluate: Annotated[bool, typer.Option(
        "--evaluate", help="Also measure clean and robust accuracy on the test split.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the weights are made; exit 1 if that failed.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="With --wait or --download: seconds before giving up "
        "(exit 4).")] = None,
    download: Annotated[Path | None, typer.Option(
        "--download", "-d", help="Folder to save tuned@<α>.safetensors in once made, its "
        "SHA-256 checked (implies --wait).", callback=_home_expanded)] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.1,
                                                 help="Seconds between two looks.")] = 1.0,
) -> None:
    """Make the weights at another α of a succeeded job, without retraining (the artifact
    tuned@<α>.safetensors); asking again for an α returns the record made the first time."""
    state = _state(ctx)
    if download is not None:
        if download.exists() and not download.is_dir():
            raise typer.BadParameter(f"{download} is not a folder", param_hint="--download")
        wait = True
    saved: dict[str, Any] | None = None
    with _client(state) as client:
        record = client.materialize(job_id, alpha, evaluate=evaluate)
        if wait and not record.finished:
            state.note(f"materialization {record.id} {record.status}; waiting")
            record = client.wait_materialization(job_id, record.id, timeout,
                                                 poll_interval=poll_interval)
        if download is not None and record.status == SUCCEEDED:
            download.mkdir(parents=True, exist_ok=True)
            artifact = client.get_artifact(job_id, record.artifact)
            with _transfer_progress(state) as progress:
                task = progress.add_task(f"downloading {record.artifact}", total=artifact.size)
                path = client.download(job_id, record.artifact, download, progress=lambda d, t:
                                       progress.update(task, completed=d, total=t))
            saved = {"path": str(path), "size": artifact.size, "sha256": artifact.sha256}
    if state.json:
        state.emit({**record.model_dump(mode="json"),
                    **({"downloaded": saved} if saved is not None else {})})
    else:
        state.say(_describe_materialization(record))
        if saved is not None:
            state.say(f"{saved['path']} ({saved['size']} bytes, sha256 verified)")
    if wait and record.status != SUCCEEDED:
        raise typer.Exit(EXIT_JOB_FAILED)


@jobs_app.command("export-mlflow")
def jobs_export_mlflow(
    ctx: typer.Context,
    job_id: str,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for the export's outcome; exit 1 if the export failed.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="With --wait: seconds before giving up (exit 4).")] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.1,
                                                 help="Seconds between two looks.")] = 1.0,
) -> None:
    """Export a succeeded job to MLflow again (after a tracking server that was down, or a worker
    lost during the export); a job exported before gets its run and version back, no second one.
    A worker does it: the outcome is the job's next mlflow_exported or warning event naming the
    request (riftctl jobs events JOB_ID), or what --wait prints."""
    state = _state(ctx)
    outcome: MlflowExportOutcome | None = None
    with _client(state) as client:
        queued = client.export_to_mlflow(job_id)
        if wait:
            state.note(f"export of job {queued.job_id} to MLflow queued; waiting")
            outcome = client.wait_mlflow_export(queued.job_id, queued.event_id, timeout,
                                                poll_interval=poll_interval)
    if state.json:
        state.emit(queued.model_dump(mode="json") if outcome is None
                   else {**queued.model_dump(mode="json"),
                         "outcome": outcome.model_dump(mode="json")})
    elif outcome is None:
        state.say(f"export of job {queued.job_id} to MLflow {queued.status}; its outcome is the "
                  f"next mlflow_exported or warning event after event {queued.event_id}")
    elif outcome.exported:
        state.say(f"job {outcome.job_id} exported to MLflow: run {outcome.run_id}, model "
                  f"{outcome.model} version {outcome.version}")
    else:
        state.say(f"job {outcome.job_id} was not exported to MLflow: {outcome.message}")
    if outcome is not None and not outcome.exported:
        raise typer.Exit(EXIT_JOB_FAILED)


def _percent(value: Any) -> str:
    """An accuracy from a job's metrics, to 2 decimals ("90.42%", not "90.42316258351893%");
    what is not a number is shown as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2f}%"
    return "–" if value is None else str(value)


def _cost(job: Job) -> str | None:
    """The job's cost estimate as `jobs get` prints it: example-passes, and GFLOP when the
    service counted the model's FLOPs; None when the job has no estimate."""
    if job.cost_estimate is None:
        return None
    text = f"{job.cost_estimate} example-passes"
    return text if job.cost_gflop is None else f"{text}, {job.cost_gflop:.4g} GFLOP"


def _number(value: float | None) -> str:
    """A measured value for a table: 4 significant digits, "–" where there is none."""
    return "–" if value is None else f"{value:.4g}"


def _robust(point: InterpolationPoint) -> str:
    """A point's robust accuracy, "≤ bound" where its attack stopped early, "–" if never run."""
    if point.robust_accuracy is None and point.robust_accuracy_at_most is not None:
        return f"≤ {_number(point.robust_accuracy_at_most)}"
    return _number(point.robust_accuracy)


def _chosen(flag: bool) -> str:
    return "*" if flag else ""


@jobs_app.command("mrc")
def jobs_mrc(ctx: typer.Context, job_id: str) -> None:
    """Show the job's MRC table: one row per module, the one selected for fine-tuning marked *.
    While the MRC stage runs (or after the job failed or was cancelled in it): the rows scored
    so far, said partial. --output json prints the API's table as it is."""
    state = _state(ctx)
    with _client(state) as client:
        table = client.get_mrc(job_id)
    if state.json:
        state.emit(table)
        return
    state.say(f"job {table.job_id}: {table.status}, selected module "
              f"{table.selected_module or '–'}")
    if table.complete is False and table.rows:  # none: the empty line below says so
        state.say(_partial(table))
    _show_list(state, table.rows, [
        _Column("", lambda r: _chosen(r.selected), no_wrap=True),
        _Column("module", lambda r: r.module + _no_effect(r), overflow="fold"),
        _Column("parameters", lambda r: str(r.parameters), no_wrap=True),
        # ≥: a lower bound, the module stopped early (mrc.table = "selection").
        _Column("MRC", lambda r: _at_least(r) + _number(r.mrc), no_wrap=True),
        _Column("worst robust loss", lambda r: _at_least(r) + _number(r.worst_robust_loss)),
        _Column("robust acc. at worst (%)", lambda r: _number(r.robust_accuracy_at_worst)),
        _Column("drop (points)", lambda r: _number(r.robust_accuracy_drop))],
        # A job that failed or was cancelled before MRC scored a module printed a table of
        # headers alone, which read as a fault of riftctl.
        empty="no MRC rows" + (" yet: each module's row appears here as it is scored"
                               if table.status in ("queued", "running") else ""))
    if any(row.zero_gradient for row in table.rows):
        state.say(f"{NO_EFFECT.strip()}: the module's weight gradient was exactly zero on every "
                  "MRC batch (the output does not depend on it); its MRC is 0 by construction "
                  "and the selection never chooses it.")


#: The words after a module flagged zero_gradient: its MRC 0 reads as the best candidate.
NO_EFFECT = " (no effect: not chosen)"


def _no_effect(row: MRCRow) -> str:
    return NO_EFFECT if row.zero_gradient else ""


def _partial(table: MRCTable) -> str:
    """The line over a table of the rows scored so far: how many, of how many, and why."""
    scored = len(table.rows)
    count = f"{scored} of {table.modules_total}" if table.modules_total is not None else str(scored)
    ended = "was cancelled" if table.status == "cancelled" else table.status
    why = ("the MRC stage is running" if table.status in ("queued", "running")
           else f"the job {ended} before the MRC stage ended")
    return f"partial: {count} scored ({why})"


def _at_least(row: MRCRow) -> str:
    return "≥ " if row.exact is False else ""


@jobs_app.command("curves")
def jobs_curves(ctx: typer.Context, job_id: str) -> None:
    """Show the job's fine-tuning epochs and interpolation curve, the chosen α marked *; a
    sweep's candidates side by side. --output json prints the API's curves as they are."""
    state = _state(ctx)
    with _client(state) as client:
        curves = client.get_curves(job_id)
    if state.json:
        state.emit(curves)
        return
    chosen = "–" if curves.chosen_alpha is None else f"{curves.chosen_alpha:g}"
    picked = (curves.candidates[curves.chosen_candidate]
              if curves.chosen_candidate is not None
              and 0 <= curves.chosen_candidate < len(curves.candidates) else None)
    # A sweep's result is one candidate's: its rate too (the module alone may be several).
    rate = f", lr {_rate(picked.lr)}" if picked is not None else ""
    state.say(f"job {curves.job_id}: {curves.status}, module {curves.selected_module or '–'}"
              f"{rate}, chosen α {chosen}")
    if curves.epochs:
        _show_list(state, curves.epochs, [
            _Column("epoch", lambda e: str(e.epoch), no_wrap=True),
            _Column("lr", lambda e: _number(e.lr)),
            _Column("train loss", lambda e: _number(e.train_loss)),
            _Column("train acc. (%)", lambda e: _number(e.train_accuracy)),
            _Column("val acc. (%)", lambda e: _number(e.val_accuracy))])
    if curves.interpolation:
        split = (curves.metrics or {}).get("selection_split")
        if isinstance(split, str) and split != "test":
            # Its α = 0 row is then not the before of `jobs get` (the test split's).
            state.say(f"interpolation curve on the {split} split, where α is chosen; the job's "
                      "before/after are the test split's")
        _show_list(state, curves.interpolation, [
            _Column("", lambda p: _chosen(p.chosen), no_wrap=True),
            _Column("α", lambda p: f"{p.alpha:g}", no_wrap=True),
            _Column("clean (%)", lambda p: _number(p.clean_accuracy)),
            _Column("robust (%)", _robust)])
        unmeasured = [p for p in curves.interpolation if p.robust_accuracy is None]
        if unmeasured:
            # As on the report page: a column of "–" read as a fault.
            state.say("– not attacked: only the α points that could be chosen are (the default "
                      "interpolation.curve \"selection\"; \"full\" measures every α)"
                      + ("; ≤ x: attack stopped early, x an upper bound"
                         if any(p.robust_accuracy_at_most is not None for p in unmeasured)
                         else ""))
    if curves.candidates:
        _show_list(state, curves.candidates, [
            _Column("", lambda c: _chosen(c.chosen), no_wrap=True),
            _Column("#", lambda c: str(c.index), no_wrap=True),
            _Column("module", lambda c: c.module, overflow="fold"),
            _Column("lr", lambda c: _rate(c.lr)),
            _Column("status", lambda c: c.status),
            # α as the curves show it (4 significant digits showed 0.13095 as 0.131).
            _Column("α", lambda c: "–" if c.chosen_alpha is None else f"{c.chosen_alpha:g}"),
            _Column("clean (%)", lambda c: _number(c.clean_accuracy)),
            _Column("robust (%)", lambda c: _number(c.robust_accuracy)),
            _Column("θ_FT", _candidate_weights)])
        for candidate in curves.candidates:
            if candidate.reason:
                state.say(f"candidate {candidate.index} excluded: {candidate.reason}")
    if not (curves.epochs or curves.interpolation or curves.candidates):
        state.say("no curves yet")


def _candidate_weights(candidate: CandidateCurve) -> str:
    """Where a sweep candidate's θ_FT is: the job's artifact, deleted, or not (yet) kept."""
    weights = candidate.finetuned
    if weights is None:
        return "–"
    if weights.available:
        return weights.artifact or "kept"
    return "deleted" if weights.deleted else "not kept"


@jobs_app.command("report")
def jobs_report(
    ctx: typer.Context,
    job_id: str,
    # Text, not a Path: Path("reports/") drops the slash that says "a folder".
    out: Annotated[str, typer.Option(
        "--out", "-d", help="File, or folder to save <job id>.html in (a missing one made when "
        "written with a trailing /).")] = ".",
) -> None:
    """Save the job's HTML report page (MRC table, curves, manifest)."""
    state = _state(ctx)
    with _client(state) as client:
        path = client.download_report(job_id, out)
    if state.json:
        state.emit({"path": str(path)})
    else:
        state.say(f"saved {path}")


# ---------------------------------------------------------------------------------- webhooks


def _describe_webhook(hook: Webhook) -> str:
    text = f"webhook {hook.id}: {hook.url} ({', '.join(hook.events)})"
    return text + (f" {hook.description}" if hook.description else "")


@webhooks_app.command("create")
def webhooks_create(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL (public addresses "
                                       "only, unless the service's WEBHOOK_ALLOW_LIST allows "
                                       "it).")],
    event: Annotated[list[str] | None, typer.Option(
        "--event", "-e", help=f"{', '.join(WEBHOOK_EVENT_TYPES)}; repeatable (default: all).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Makes re-running this command return the same webhook and "
        "secret (default: a random key).")] = None,
) -> None:
    """Register a webhook; prints its signing secret, shown this once."""
    state = _state(ctx)
    unknown = [e for e in event or [] if e not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: not one of "
                                 f"{', '.join(WEBHOOK_EVENT_TYPES)}", param_hint="--event")
    with _client(state) as client:
        hook = client.create_webhook(url, events=event or None, description=description,
                                     idempotency_key=idempotency_key)
    if state.json:
        state.emit(hook)
    else:
        state.say(_describe_webhook(hook))
        state.say(f"secret {hook.secret} (shown once: keep it to verify the signatures)")


@webhooks_app.command("list")
def webhooks_list(ctx: typer.Context) -> None:
    """List the project's webhooks (without their secrets)."""
    state = _state(ctx)
    with _client(state) as client:
        hooks = client.list_webhooks()
    _show_list(state, hooks, [
        _id_column(hooks),
        _Column("url", lambda h: h.url, overflow="fold"),
        _Column("events", lambda h: ", ".join(h.events)),
        _created_column(),
        _Column("description", lambda h: h.description or ""),
    ], empty="no webhooks")


@webhooks_app.command("get")
def webhooks_get(ctx: typer.Context, webhook_id: str) -> None:
    """Show a webhook."""
    _show_fetched(ctx, lambda client: client.get_webhook(webhook_id), f"webhook {webhook_id}")


@webhooks_app.command("delete")
def webhooks_delete(ctx: typer.Context, webhook_id: str, if_match: Annotated[
        str | None, _if_match_option("webhook")] = None) -> None:
    """Delete a webhook and its delivery log (messages not yet sent are dropped)."""
    _delete(ctx, lambda client: client.delete_webhook(webhook_id, if_match=if_match), "webhook", webhook_id)


def _delivery_line(delivery: WebhookDelivery) -> str:
    text = (f"{delivery.created_at:%Y-%m-%d %H:%M:%S} {delivery.id} {delivery.event_type} "
            f"job {delivery.job_id}: {delivery.status}, {delivery.attempts} attempt"
            f"{'' if delivery.attempts == 1 else 's'}")
    if delivery.last_status_code is not None:
        text += f", last HTTP {delivery.last_status_code}"
    if delivery.last_error:
        text += f": {delivery.last_error}"
    if delivery.status == "pending" and delivery.next_attempt_at is not None:
        text += f" (next attempt {delivery.next_attempt_at:%H:%M:%S})"
    return text


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context,
    webhook_id: str,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1,
                                       help="Messages to show (fetched 100 a page).")] = 20,
) -> None:
    """Show the webhook's newest messages, each with its attempts."""
    state = _state(ctx)
    with _client(state) as client:
        deliveries = client.webhook_deliveries(webhook_id, limit=limit)
    if state.json:
        state.emit(deliveries)
        return
    if not deliveries:  # it printed nothing at all, as if the command had not run
        state.say(f"no deliveries yet for webhook {webhook_id}")
    for delivery in deliveries:
        state.say(_delivery_line(delivery))
        for attempt in delivery.attempt_log:
            outcome = (f"HTTP {attempt.status_code}" if attempt.status_code is not None
                       else "no answer")
            took = f" in {attempt.duration_ms:.0f} ms" if attempt.duration_ms is not None else ""
            state.say(f"  attempt {attempt.attempt} {attempt.started_at:%H:%M:%S}: {outcome}"
                      f"{took}" + (f": {attempt.error}" if attempt.error else ""))


# ------------------------------------------------------------------------------------- admin


def _limits(values: list[str]) -> dict[str, int | None]:
    """``--limit NAME=VALUE`` options as the limits sent: VALUE a whole number from 1, or
    ``default`` (the service's setting: null)."""
    limits: dict[str, int | None] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep or name not in PROJECT_LIMITS:
            raise typer.BadParameter(f"'{value}' is not NAME=VALUE with NAME one of "
                                     f"{', '.join(PROJECT_LIMITS)}", param_hint="--limit")
        if name in limits:
            raise typer.BadParameter(f"'{name}' is given twice", param_hint="--limit")
        if raw == "default":
            limits[name] = None
        elif raw.isascii() and raw.isdigit() and int(raw) >= 1:
            limits[name] = int(raw)
        else:
            raise typer.BadParameter(f"'{value}': the value must be a whole number from 1, or "
                                     "'default' (the service's setting)", param_hint="--limit")
    return limits


def _limit_option(help: str) -> Any:
    return typer.Option("--limit", "-l", metavar="NAME=VALUE", help=help)


def _limit_column(name: str) -> _Column[Project]:
    def cell(project: Project) -> str:
        value = getattr(project, name)
        return "default" if value is None else str(value)

    return _Column(name.removeprefix("max_"), cell, no_wrap=True)


def _show_projects(state: State, projects: Sequence[Project]) -> None:
    _show_list(state, projects, [
        _Column("name", lambda p: p.name, no_wrap=True),
        *(_limit_column(name) for name in PROJECT_LIMITS),
        _created_column(),
    ], empty="no projects")


@admin_projects_app.command("list")
def admin_projects_list(ctx: typer.Context) -> None:
    """List every project with its own limits ('default': the service's setting)."""
    state = _state(ctx)
    with _client(state) as client:
        projects = client.list_projects()
    _show_projects(state, projects)


@admin_projects_app.command("create")
def admin_projects_create(
    ctx: typer.Context, name: str,
    limit: Annotated[list[str] | None, _limit_option(
        f"A limit of its own ({', '.join(PROJECT_LIMITS)}); repeatable (default: the "
        "service's settings).")] = None,
) -> None:
    """Create a project."""
    state = _state(ctx)
    limits = _limits(limit or [])
    with _client(state) as client:
        project = client.create_project(name, limits=limits)
    _show_record(state, project, f"project {project.name}")


@admin_projects_app.command("get")
def admin_projects_get(ctx: typer.Context, name: str) -> None:
    """Show a project, its limits and its ETag."""
    _show_fetched(ctx, lambda client: client.get_project(name), f"project {name}")


@admin_projects_app.command("limits")
def admin_projects_limits(
    ctx: typer.Context, name: str,
    limit: Annotated[list[str], _limit_option(
        f"NAME=VALUE ({', '.join(PROJECT_LIMITS)}; VALUE 'default': back to the service's "
        "setting); repeatable, the others stay.")],
    if_match: Annotated[str | None, _if_match_option("project", get="admin projects get")] = None,
) -> None:
    """Change a project's limits."""
    state = _state(ctx)
    limits = _limits(limit)
    with _client(state) as client:
        project = client.set_project_limits(name, limits, if_match=if_match)
    _show_record(state, project, f"project {project.name}")


@admin_projects_app.command("usage")
def admin_projects_usage(ctx: typer.Context, name: str) -> None:
    """Show a project's usage against its limits, as `riftctl usage` shows its own."""
    state = _state(ctx)
    with _client(state) as client:
        usage = client.project_usage(name)
    _show_usage(state, usage)


@admin_projects_app.command("delete")
def admin_projects_delete(
    ctx: typer.Context, name: str,
    force: Annotated[bool, typer.Option(
        "--force", help="Also with queued or running jobs: revoke its keys, cancel the jobs "
        "and wait for their workers (else exit 3, project_has_active_jobs).")] = False,
    if_match: Annotated[str | None, _if_match_option("project", get="admin projects get")] = None,
) -> None:
    """Delete a project and everything it stores (its keys answer 401 at once)."""
    _delete(ctx, lambda client: client.delete_project(name, force=force, if_match=if_match),
            "project", name)


def _show_keys(state: State, keys: Sequence[ApiKey]) -> None:
    def when(value: datetime | None) -> str:
        return value.strftime(TIME_FORMAT) if value else "-"

    _show_list(state, keys, [
        _id_column(keys),
        _Column("prefix", lambda k: k.prefix, no_wrap=True),
        _Column("scopes", lambda k: " ".join(k.scopes), no_wrap=True),
        _Column("name", lambda k: k.name or ""),
        _created_column(),
        _Column("last used", lambda k: when(k.last_used_at), no_wrap=True),
        _Column("revoked", lambda k: when(k.revoked_at), no_wrap=True),
    ], empty="no keys")


@admin_keys_app.command("list")
def admin_keys_list(ctx: typer.Context, project: str) -> None:
    """List a project's keys, revoked ones included (never their secrets)."""
    state = _state(ctx)
    with _client(state) as client:
        keys = client.list_keys(project)
    _show_keys(state, keys)


@admin_keys_app.command("create")
def admin_keys_create(
    ctx: typer.Context, project: str,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", "-s", help=f"{', '.join(KEY_SCOPES)}; repeatable (default: read and "
        "write).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name to tell it by.")] = None,
) -> None:
    """Create a key of a project; prints its secret, shown this once."""
    state = _state(ctx)
    unknown = [s for s in scope or [] if s not in KEY_SCOPES]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: not one of {', '.join(KEY_SCOPES)}",
                                 param_hint="--scope")
    with _client(state) as client:
        key = client.create_key(project, scopes=scope or None, name=name)
    if state.json:
        state.emit(key)
    else:
        state.say(f"key {key.id} of project {key.project} ({' '.join(key.scopes)})")
        state.say(f"secret {key.key} (shown once: store it now)")


@admin_keys_app.command("get")
def admin_keys_get(ctx: typer.Context, project: str, key_id: str) -> None:
    """Show a key (no secret) and its ETag."""
    _show_fetched(ctx, lambda client: client.get_key(project, key_id), f"key {key_id}")


@admin_keys_app.command("revoke")
def admin_keys_revoke(ctx: typer.Context, project: str, key_id: str, if_match: Annotated[
        str | None, _if_match_option("key", get="admin keys get")] = None) -> None:
    """Revoke a key (it answers 401 from now on)."""
    state = _state(ctx)
    with _client(state) as client:
        key = client.revoke_key(project, key_id, if_match=if_match)
    if state.json:
        state.emit(key)
    else:
        state.say(f"revoked key {key.id} of project {key.project}")


@admin_app.command("workers")
def admin_workers(ctx: typer.Context) -> None:
    """List the live workers (seen within 3 heartbeats), their queues, devices and the built-in
    datasets their DATA_ROOT holds."""
    state = _state(ctx)
    with _client(state) as client:
        workers = client.list_workers()
    _show_list(state, workers, [
        _id_column(workers),
        _Column("queues", lambda w: ", ".join(w.queues)),
        _Column("devices", lambda w: ", ".join(f"{k}:{v}" for k, v in w.devices.items())),
        # "?": a worker of an earlier release, which does not say (it counts as holding all).
        _Column("datasets", lambda w: "?" if w.datasets is None else ", ".join(w.datasets)
                or "none"),
        _Column("last seen", lambda w: w.last_seen_at.strftime(TIME_FORMAT), no_wrap=True),
    ], empty="no live workers")


def _one_line_summaries(*groups: typer.Typer) -> None:
    """Give every command a one-line summary for its group's command list: typer prints a
    command's docstring there with its line breaks, so a summary wrapped in the source broke
    mid-sentence in `riftctl jobs --help` ("exit 0 if the job" / "succeeded")."""
    for group in groups:
        for info in group.registered_commands:
            if info.short_help is None and info.callback is not None:
                text = info.help or inspect.getdoc(info.callback) or ""
                info.short_help = " ".join(text.split("\n\n")[0].split())


_one_line_summaries(checkpoints_app, datasets_app, jobs_app, webhooks_app, admin_projects_app,
                    admin_keys_app, admin_app, app)


#: Options of riftctl itself that take a value, as typed before the command.
_ROOT_VALUE_OPTIONS = ("--url", "--api-key", "--output", "-o", "--timeout-http", "--upload-timeout",
                       "--retries")


def hoist_root_options(argv: Sequence[str]) -> list[str]:
    """``argv`` with riftctl's own options (``--output``, ``--quiet``, and since the notebook
    hunt ``--url``, ``--api-key``, ``--retries``, ``--timeout-http``, ``--upload-timeout``)
    moved before the command when typed after it (``riftctl jobs list --output json``, a CI
    step's ``riftctl jobs get ID --url $URL``): there they were "No such option: --output"
    (``jobs download``: "Possible options: --out", the wrong hint). No command has options of
    those names, so moving them (with the value after one that takes a value, which riftctl
    then checks) changes no meaning; nothing after ``--`` moves."""
    start = 0
    while start < len(argv) and argv[start].startswith("-"):
        start += 2 if argv[start] in _ROOT_VALUE_OPTIONS else 1
    head, tail = list(argv[:start]), list(argv[start:])
    moved: list[str] = []
    kept: list[str] = []
    index = 0
    while index < len(tail):
        word = tail[index]
        if word == "--":
            kept.extend(tail[index:])
            break
        if word in _ROOT_VALUE_OPTIONS and index + 1 < len(tail):
            moved.extend(tail[index:index + 2])
            index += 2
            continue
        if (word.split("=", 1)[0] in _ROOT_VALUE_OPTIONS and "=" in word) \
                or word in ("--quiet", "-q"):
            moved.append(word)
        else:
            kept.append(word)
        index += 1
    return head + moved + kept


#: The class of typer's usage errors (unknown option, bad value, missing argument): the base of
#: ``typer.BadParameter``, which typer does not export by name.
_UsageError: type[Exception] = typer.BadParameter.__base__  # type: ignore[assignment]


def json_output_asked(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (options hoisted) asks for ``--output json`` before the command."""
    for index, word in enumerate(argv):
        if not word.startswith("-"):
            return False
        if word in ("--output", "-o"):
            return argv[index + 1: index + 2] == ["json"]
        if word == "--output=json":
            return True
    return False


def usage_error_json(exc: Exception) -> dict[str, Any]:
    """A usage error as the ``error`` object of ``--output json``: its message and the option or
    argument at fault in ``field`` (None when the error names none: an unknown command)."""
    hint = getattr(exc, "param_hint", None) or getattr(exc, "option_name", None)
    param = getattr(exc, "param", None)
    if hint is None and param is not None:
        hint = (param.opts[0] if param.opts else None) or param.name
    if isinstance(hint, list | tuple):
        hint = hint[0] if hint else None
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return {"code": "usage_error", "message": message, "field": hint}


def main() -> None:
    """The ``riftctl`` console script. With ``--output json`` a usage error (exit 2) is one JSON
    line on stderr, ``{"error": {"code": "usage_error", "message", "field"}}``, as every other
    error is; it used to be typer's framed text, which a script reading stderr as JSON could
    not parse."""
    args = hoist_root_options(sys.argv[1:])
    if not json_output_asked(args):
        app(args=args)
        return
    try:
        code = typer.main.get_command(app).main(args=args, prog_name="riftctl",
                                                standalone_mode=False)
    except _UsageError as exc:
        print(json.dumps({"error": usage_error_json(exc)}), file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except typer.Abort:  # end of input at a prompt; riftctl asks none, but click may
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
