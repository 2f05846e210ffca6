"""``rift-admin``: manage projects and API keys from the command line (on a host that can reach
the database; the settings come from the environment like every entry point's).

    rift-admin projects create NAME [--exist-ok]   # --exist-ok: already there is success
    rift-admin projects list
    rift-admin projects adopt NAME     # give NAME the rows made before projects existed
    rift-admin projects limits NAME [--max-active-jobs N|default ...]   # prints the limits
    rift-admin projects usage NAME     # what it uses of its limits, as the quotas count
    rift-admin projects recount-storage NAME|--all [--dry-run]   # ledger vs rows, repaired
    rift-admin projects delete NAME [--force]   # with everything it stores
    rift-admin keys create --project NAME [--scope read|write|admin ...] [--name LABEL]
    rift-admin keys list [--project NAME]
    rift-admin keys revoke KEY_ID
    rift-admin audit list [--project NAME|ID] [--limit N] [--json]   # who did what, newest first

``keys create`` prints the new key alone on stdout (``KEY=$(rift-admin keys create ...)``); it is
shown this once and creates the project if it does not exist (saying so on stderr). Nothing else
ever prints a secret. Every command takes ``--output json``: one JSON document on stdout (what
the text lines show, and for ``keys create`` the key with its id), notes still on stderr.
Re-running ``keys revoke`` or ``projects limits`` changes nothing and exits 0.

Exit status: 0 done, 1 the database cannot be reached, refuses DATABASE_URL's database, role
or password, or is not migrated (one line on stderr, no traceback), 2 a refused request (bad
argument, unknown project or key, a name taken, a project with queued or running jobs); a
refused command changes nothing, except ``projects delete --force``, which has revoked the
project's keys and cancelled its jobs before it finds a worker still stopping one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from persistence.api_keys import (
    LIMIT_MAXIMA,
    AdminError,
    Scope,
    adopt_unowned,
    check_key_request,
    create_key,
    create_project,
    list_keys,
    list_projects,
    parse_key,
    project_by_name,
    revoke_key,
    set_project_limits,
)
from persistence.audit import Actor, page_audit_events
from persistence.command_line import add_version
from persistence.db import (
    normalise_database_url,
    session_factory_from_settings,
    settings_refused_by_database,
)
from persistence.deletion import (
    ProjectAlreadyDeleted,
    ProjectHasActiveJobs,
    ProjectInputsReferenced,
    delete_project,
    project_storage_keys,
)
from persistence.models import ApiKey, Project
from persistence.records import recount_stored_bytes
from persistence.schema import MIGRATE_COMMAND, SchemaNotCurrent, check_schema
from persistence.settings import Settings, settings_or_exit
from persistence.storage import ObjectStore
from persistence.usage import ProjectLimits, ProjectUsage, project_usage

#: Who the audit trail says made the changes of this command line: no key, the operator.
_CLI = Actor.admin_cli()


def _refuse_whole_key(session: Session, given: str) -> None:
    """``keys revoke`` takes a key's id; given the key itself, say so, name the id to use
    when the key is on file, and never print the secret back (it went to stderr, into logs)."""
    parsed = parse_key(given)
    if parsed is None:
        return
    prefix = parsed[0]
    row = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
    shown = f"rift_{prefix}_…"
    if row is None:
        raise AdminError(f"'{shown}' is an API key, not a key id, and no key with its prefix "
                         "is on file; `rift-admin keys list` shows the ids")
    raise AdminError(f"'{shown}' is an API key, not a key id: its id is {row.id} "
                     f"(rift-admin keys revoke {row.id})")


def _parser() -> argparse.ArgumentParser:
    # The help says what a first run needs: the service's DATABASE_URL (else ./var/rift.db
    # here), and the exit codes scripts branch on.
    parser = argparse.ArgumentParser(
        prog="rift-admin", description="Projects and API keys of a RiFT service, written "
        "straight to its database: run with the service's settings in the environment "
        "(DATABASE_URL; default sqlite:///./var/rift.db, relative to the current folder).",
        epilog="Exit codes: 0 done, 1 the database cannot be reached or is not migrated, "
        "2 a refused request (nothing changed). --output json on any command: one JSON "
        "document on stdout.")
    add_version(parser)
    groups = parser.add_subparsers(dest="group", required=True)
    # Every command takes --output, after its other arguments as scripts write them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", choices=["text", "json"], default="text",
                        help="json: one JSON document on stdout, for scripts (default: text)")

    projects = groups.add_parser(
        "projects", help="create, list and delete projects; their limits, usage and stored bytes"
    ).add_subparsers(
        dest="command", required=True)
    create = projects.add_parser("create", help="create a project", parents=[common])
    create.add_argument("name")
    create.add_argument("--exist-ok", action="store_true",
                        help="a project of that name already there is success (exit 0), not a "
                        "refusal: for scripts run more than once")
    projects.add_parser("list", help="list projects", parents=[common])
    adopt = projects.add_parser(
        "adopt", help="give a project the checkpoints, datasets and jobs that have none (made "
        "before projects existed; no key can see them until then)", parents=[common])
    adopt.add_argument("name")
    limits = projects.add_parser(
        "limits", help="set a project's own limits ('default': the setting's again); prints "
        "them all, as limit<TAB>value (empty: the default)", parents=[common])
    limits.add_argument("name")
    for limit in LIMIT_MAXIMA:
        limits.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=_limit_value,
                            metavar="N|default",
                            help=f"'default': back to DEFAULT_{limit.upper()}")

    usage = projects.add_parser(
        "usage", help="a project's usage against its limits, as GET /v1/usage and the quota "
        "checks count it; prints name<TAB>value", parents=[common])
    usage.add_argument("name")
    recount = projects.add_parser(
        "recount-storage", help="count a project's stored bytes from its rows, compare with "
        "the stored-bytes ledger the quota reads and repair it; prints "
        "project<TAB>kind<TAB>difference (rows minus ledger) for each kind that differed",
        parents=[common])
    recount.add_argument("name", nargs="?")
    recount.add_argument("--all", action="store_true", help="every project")
    recount.add_argument("--dry-run", action="store_true", help="compare only, repair nothing")
    remove = projects.add_parser(
        "delete", help="delete a project with its keys, webhooks, jobs, checkpoints, datasets "
        "and their stored objects (refused while it has queued or running jobs)",
        parents=[common])
    remove.add_argument("name")
    remove.add_argument("--force", action="store_true",
                        help="revoke its keys and cancel its jobs first, waiting up to "
                        "PROJECT_DELETE_WAIT_SECONDS for them to stop")

    keys = groups.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="command", required=True)
    key_create = keys.add_parser("create", help="create a key; prints it alone on stdout",
                                 parents=[common])
    key_create.add_argument("--project", required=True,
                            help="the project the key acts for (made when missing, said on "
                            "stderr)")
    key_create.add_argument("--scope", action="append", choices=[s.value for s in Scope],
                            help="repeat for several (default: read and write)")
    key_create.add_argument("--name", help="a label for the key")
    key_list = keys.add_parser("list", help="list keys (never their secrets)", parents=[common])
    key_list.add_argument("--project", help="this project's keys only (default: all)")
    revoke = keys.add_parser("revoke", help="revoke a key by its id (again: exit 0)",
                             parents=[common])
    revoke.add_argument("key_id", help="the key's id: the first column of `keys list`")

    audit = groups.add_parser("audit", help="the audit trail: who changed what").add_subparsers(
        dest="command", required=True)
    audit_list = audit.add_parser(
        "list", help="audit events, newest first; prints occurred_at<TAB>project<TAB>actor"
        "<TAB>action<TAB>resource_id<TAB>request_id", parents=[common])
    audit_list.add_argument("--project", help="this project's events only (its name, or its "
                            "id for a deleted project's trail; default: every project's)")
    audit_list.add_argument("--limit", type=int, default=AUDIT_LIST_DEFAULT,
                            help=f"at most this many, 1 to {AUDIT_LIST_MAX} (default "
                            f"{AUDIT_LIST_DEFAULT})")
    audit_list.add_argument("--json", dest="output", action="store_const", const="json",
                            help="the same as --output json")
    return parser


#: ``audit list``: how many events by default, and at most (one statement each).
AUDIT_LIST_DEFAULT = 50
AUDIT_LIST_MAX = 10_000


_DEFAULT = object()  # "default" on the command line: the limit's column back to NULL


def _limit_value(text: str) -> object:
    if text == "default":
        return _DEFAULT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or 'default': {text[:32]!r}"
                                         ) from None


@dataclass
class Output:
    """What a command answers: ``data`` for ``--output json`` (one JSON document on stdout),
    ``lines`` for text (stdout), ``note`` for people (stderr, in both modes)."""

    data: Any
    lines: list[str] = field(default_factory=list)
    note: str | None = None


def _limits_data(project: Project) -> dict[str, int | None]:
    return {limit: getattr(project, limit) for limit in LIMIT_MAXIMA}


def _project_data(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "created_at": project.created_at.isoformat(),
            "limits": _limits_data(project)}


def _key_data(key: ApiKey, project_name: str) -> dict[str, Any]:
    """A key as ``keys list`` shows it: never its secret. ``prefix`` is the stored one, as the
    admin API gives it (the text table writes it as the key starts, ``rift_<prefix>_…``)."""
    return {"id": key.id, "project": project_name, "prefix": key.prefix,
            "scopes": key.scopes.split(), "name": key.name,
            "created_at": key.created_at.isoformat(),
            "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


def _usage_rows(usage: ProjectUsage) -> list[tuple[str, object]]:
    stored, limits = usage.stored, usage.limits
    return [
        ("project", usage.project_name),
        ("stored_bytes", stored.total), ("max_stored_bytes", limits.max_stored_bytes),
        ("stored_bytes.checkpoints", stored.checkpoints),
        ("stored_bytes.datasets", stored.datasets),
        ("stored_bytes.artifacts", stored.artifacts),
        ("stored_bytes.reserved_by_active_jobs", stored.reserved_by_active_jobs),
        ("stored_bytes.reserved_by_materializations", stored.reserved_by_materializations),
        ("active_jobs", usage.active_jobs), ("max_active_jobs", limits.max_active_jobs),
        ("pending_materializations", usage.pending_materializations),
        ("max_pending_materializations", limits.max_pending_materializations),
        ("max_job_cost", limits.max_job_cost), ("max_job_gflop", limits.max_job_gflop),
        ("max_requests_per_minute", limits.max_requests_per_minute),
        ("max_streams_per_key", limits.max_streams_per_key)]


def _found(session: Session, name: str) -> Project:
    found = project_by_name(session, name)
    if found is None:
        raise AdminError(f"no project named '{name}'")
    return found


def _projects_create(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    existing = project_by_name(session, args.name) if args.exist_ok else None
    project = existing or create_project(session, args.name, actor=_CLI)
    return Output({**_project_data(project), "created": existing is None},
                  [f"{project.id}\t{project.name}"],
                  None if existing is None else f"project '{project.name}' exists already")


def _projects_list(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    projects = list_projects(session)
    return Output([_project_data(p) for p in projects],
                  [f"{p.id}\t{p.name}\t{p.created_at.isoformat()}" for p in projects])


def _projects_adopt(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    found = _found(session, args.name)
    counts = adopt_unowned(session, found)
    return Output({"project": found.name, "adopted": counts},
                  [", ".join(f"{n} {what}" for what, n in counts.items())
                   + f" now belong to project '{found.name}'"])


def _projects_limits(session: Session, args: argparse.Namespace, settings: Settings) -> Output:
    found = _found(session, args.name)
    given = {limit: None if getattr(args, limit) is _DEFAULT else getattr(args, limit)
             for limit in LIMIT_MAXIMA if getattr(args, limit) is not None}
    set_project_limits(session, found, given, actor=_CLI)
    limits = _limits_data(found)
    return Output({"project": found.name, "limits": limits},
                  [f"{limit}\t{'' if value is None else value}" for limit, value in limits.items()],
                  _over_limits_note(session, found, settings) if given else None)


def _over_limits_note(session: Session, project: Project, settings: Settings) -> str | None:
    """What the project already uses beyond its limits as now set: accepted (what runs goes
    on, what is stored stays), but the operator lowering a limit should know that nothing new
    is admitted until the use falls under it."""
    usage = project_usage(session, project_id=project.id, project_name=project.name,
                          limits=ProjectLimits.of(project, settings))
    over = [f"{name} {used} above its limit {limit}" for name, used, limit in (
        ("active_jobs", usage.active_jobs, usage.limits.max_active_jobs),
        ("stored_bytes", usage.stored.total, usage.limits.max_stored_bytes)) if used > limit]
    if not over:
        return None
    return (f"project '{project.name}' already uses more than these limits ({'; '.join(over)}): "
            "what runs goes on and what is stored stays, but no job or upload is admitted "
            "until the use is under them")


def _projects_usage(session: Session, args: argparse.Namespace, settings: Settings) -> Output:
    found = _found(session, args.name)
    rows = _usage_rows(project_usage(session, project_id=found.id, project_name=found.name,
                                     limits=ProjectLimits.of(found, settings)))
    return Output(dict(rows), [f"{name}\t{value}" for name, value in rows])


def _projects_recount_storage(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    if args.all == (args.name is not None):
        raise AdminError("name one project, or --all (not both)")
    projects = list_projects(session) if args.all else [_found(session, args.name)]
    found = {project.name: recount_stored_bytes(session, project.id, repair=not args.dry_run)
             for project in projects}
    differed = {name: differences for name, differences in found.items() if differences}
    return Output(
        {"projects": len(projects), "differences": differed, "repaired": not args.dry_run},
        [f"{name}\t{kind}\t{difference}" for name, differences in differed.items()
         for kind, difference in differences.items()],
        f"{len(projects)} projects counted, {len(differed)} differed from their ledger"
        + ("" if args.dry_run or not differed else " (repaired)"))


# How many of a project's objects are looked for before deleting it: enough that a store that
# merely lost a few still counts as the service's, few enough to cost nothing on S3.
STORE_PROBE_KEYS = 5


def _check_store_is_the_services(session: Session, store: ObjectStore, project: Project,
                                 settings: Settings) -> None:
    """Refuse (nothing deleted) when the store these settings name holds none of the project's
    objects its rows name: rift-admin run with DATABASE_URL alone (the "Use it" minimum) names
    the default ./var/objects, so the rows went and the files stayed, unaccounted, in the
    service's store, while the summary counted them as deleted."""
    keys = project_storage_keys(session, project.id)[:STORE_PROBE_KEYS]
    if not keys or any(store.exists(key) for key in keys):
        return
    where = (f"STORE_ROOT={Path(settings.store_root).resolve()}" if settings.store_kind == "local"
             else f"S3_BUCKET={settings.s3_bucket}")
    raise AdminError(
        f"the object store these settings name (STORE_KIND={settings.store_kind}, {where}) holds "
        f"none of the stored objects of project '{project.name}' (looked for {keys[0]}): run "
        f"rift-admin with the service's store settings as well as its DATABASE_URL; nothing "
        f"deleted")


def _projects_delete(session: Session, args: argparse.Namespace, settings: Settings) -> Output:
    store, project = settings.build_object_store(), _found(session, args.name)
    _check_store_is_the_services(session, store, project, settings)
    gone = delete_project(session, store, project,
                          force=args.force, wait_s=settings.project_delete_wait_seconds,
                          actor=_CLI)
    return Output({"deleted": asdict(gone)}, note=(
        f"deleted project '{gone.name}': {gone.jobs} jobs, {gone.checkpoints} checkpoints, "
        f"{gone.datasets} datasets, {gone.webhooks} webhooks, {gone.keys} keys, "
        f"{gone.objects} stored objects"))


def _keys_create(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    check_key_request(args.scope or [], args.name)  # before making the project
    existed = project_by_name(session, args.project) is not None
    project = create_project(session, args.project, exist_ok=True, actor=_CLI)
    new = create_key(session, project, args.scope or [], args.name, actor=_CLI)
    # A mistyped --project makes a new project: say so, where a script's log shows it.
    made = "" if existed else f" (a new project: '{project.name}' did not exist)"
    return Output({"key": new.key, **_key_data(new.row, project.name),
                   "project_created": not existed}, [new.key],
                  f"created key {new.row.id} ({new.row.scopes}) for project '{project.name}'"
                  f"{made}; it is shown only once")


def _keys_list(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    project_id = None if args.project is None else _found(session, args.project).id
    names = {p.id: p.name for p in session.query(Project).all()}
    keys = [_key_data(key, names.get(key.project_id, "?"))
            for key in list_keys(session, project_id)]
    lines = ["id\tproject\tprefix\tscopes\tname\tcreated_at\tlast_used_at\trevoked_at"]
    lines += ["\t".join([key["id"], key["project"], f"rift_{key['prefix']}_…", ",".join(key["scopes"]),
                         key["name"] or "", key["created_at"], key["last_used_at"] or "",
                         key["revoked_at"] or ""]) for key in keys]
    return Output(keys, lines)


def _keys_revoke(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    _refuse_whole_key(session, args.key_id)
    row = revoke_key(session, args.key_id, actor=_CLI)
    if row is None:
        raise AdminError(f"no key with id '{args.key_id}' (`rift-admin keys list` shows the ids)")
    names = {p.id: p.name for p in session.query(Project).all()}
    return Output(_key_data(row, names.get(row.project_id, "?")), note=f"revoked key {row.id}")


def _audit_list(session: Session, args: argparse.Namespace, _: Settings) -> Output:
    if not 1 <= args.limit <= AUDIT_LIST_MAX:
        raise AdminError(f"--limit must be between 1 and {AUDIT_LIST_MAX}, not {args.limit}")
    project_id = None
    if args.project is not None:
        found = project_by_name(session, args.project)
        # A deleted project has no name to find: its trail is asked for by its id.
        project_id = found.id if found is not None else _project_id_or_refuse(args.project)
    names = {p.id: p.name for p in session.query(Project).all()}
    page = page_audit_events(session, project_id=project_id, limit=args.limit, cursor=None,
                             every_project=True)
    events = [{"id": e.id, "occurred_at": e.occurred_at.isoformat(), "project_id": e.project_id,
               "project": names.get(e.project_id or ""), "actor": e.actor,
               "actor_key_id": e.actor_key_id, "actor_key_prefix": e.actor_key_prefix,
               "action": e.action, "resource_kind": e.resource_kind,
               "resource_id": e.resource_id, "request_id": e.request_id, "details": e.details}
              for e in page.items]
    lines = ["\t".join([e.occurred_at.isoformat(),
                        names.get(e.project_id or "") or e.project_id or "",
                        f"rift_{e.actor_key_prefix}_…" if e.actor_key_prefix else e.actor,
                        e.action, e.resource_id or "", e.request_id or ""])
             for e in page.items]
    return Output(events, lines)


def _project_id_or_refuse(given: str) -> str:
    if len(given) == 32 and all(c in "0123456789abcdef" for c in given):
        return given
    raise AdminError(f"no project named '{given}' (a deleted project's trail is listed by its "
                     "id: the project_id column of `rift-admin audit list`)")


Command = Callable[[Session, argparse.Namespace, Settings], Output]
COMMANDS: dict[tuple[str, str], Command] = {
    ("projects", "create"): _projects_create, ("projects", "list"): _projects_list,
    ("projects", "adopt"): _projects_adopt, ("projects", "limits"): _projects_limits,
    ("projects", "usage"): _projects_usage, ("projects", "delete"): _projects_delete,
    ("projects", "recount-storage"): _projects_recount_storage,
    ("keys", "create"): _keys_create, ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke, ("audit", "list"): _audit_list}


def _print(output: Output, form: str) -> None:
    if form == "json":
        print(json.dumps(output.data, indent=2, sort_keys=True))
    elif output.lines:
        print("\n".join(output.lines))
    if output.note:
        print(output.note, file=sys.stderr)


def _missing_sqlite_file(settings: Settings) -> str | None:
    """Why rift-admin will not open ``DATABASE_URL`` when it names a SQLite file that does not
    exist, else None. Opening it would make an empty database (and its folder) and then report
    it never migrated: the usual cause is a shell without the service's DATABASE_URL, where the
    default ``./var/rift.db`` is relative to whatever folder rift-admin was run in."""
    url = normalise_database_url(settings.database_url)
    database = url.database
    if (url.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:") or Path(database).exists()):
        return None
    where = ("DATABASE_URL" if "database_url" in settings.model_fields_set
             else f"DATABASE_URL is not set: its default, {settings.database_url}, relative to "
                  f"the current folder")
    return (f"no database file at {Path(database).resolve()} ({where}): run rift-admin with the "
            f"service's DATABASE_URL, or make this database with `{MIGRATE_COMMAND}`")


def run(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings or settings_or_exit()
    missing = _missing_sqlite_file(settings)
    if missing is not None:
        # Before: an empty var/rift.db made wherever rift-admin ran, then "never migrated".
        print(f"rift-admin: {missing}", file=sys.stderr)
        return 1
    factory = session_factory_from_settings(settings)
    try:
        engine = factory.kw.get("bind")
        if engine is not None:
            # Before: an unmigrated database was "cannot reach the database: no such table:
            # projects", though it was reached; the schema check says what to run.
            check_schema(engine, then="then run rift-admin again")
        with factory() as session:
            output = COMMANDS[(args.group, args.command)](session, args, settings)
        _print(output, args.output)
    except (AdminError, ProjectAlreadyDeleted, ProjectHasActiveJobs,
            ProjectInputsReferenced) as exc:
        print(f"rift-admin: {exc}", file=sys.stderr)
        return 2
    except SchemaNotCurrent as exc:
        print(f"rift-admin: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        # A server that answered and refused DATABASE_URL's database, role or password is worded
        # as the services word it (persistence.schema): it was reached; the URL is what is wrong.
        refused = settings_refused_by_database(exc)
        if refused is not None:
            print(f"rift-admin: DATABASE_URL: the database refused this connection: {refused}",
                  file=sys.stderr)
        else:
            print(f"rift-admin: cannot reach the database (DATABASE_URL): "
                  f"{str(exc.orig).splitlines()[0][:200] if exc.orig else type(exc).__name__}",
                  file=sys.stderr)
        return 1
    finally:
        engine = factory.kw.get("bind")
        if engine is not None:
            engine.dispose()
    return 0


def main() -> None:
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`rift-admin keys list | head -1`): not an error of ours, and
        # no traceback; stdout goes to /dev/null so the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
