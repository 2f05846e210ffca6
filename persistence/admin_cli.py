"""``rift-admin``: manage projects and API keys from the command line (on a host that can reach
the database; the settings come from the environment like every entry point's).

    rift-admin projects create NAME
    rift-admin projects list
    rift-admin projects adopt NAME     # give NAME the rows made before projects existed
    rift-admin projects limits NAME [--max-active-jobs N|default ...]   # prints the limits
    rift-admin projects usage NAME     # what it uses of its limits, as the quotas count
    rift-admin projects delete NAME [--force]   # with everything it stores
    rift-admin keys create --project NAME [--scope read|write|admin ...] [--name LABEL]
    rift-admin keys list [--project NAME]
    rift-admin keys revoke KEY_ID

``keys create`` prints the new key alone on stdout (``KEY=$(rift-admin keys create ...)``); it is
shown this once and creates the project if it does not exist. Nothing else ever prints a secret.

Exit status: 0 done, 1 the database cannot be reached or is not migrated (one line on stderr,
no traceback), 2 a
refused request (bad argument, unknown project or key, a name taken, a project with queued or
running jobs); a refused command changes nothing, except ``projects delete --force``, which has
revoked the project's keys and cancelled its jobs before it finds a worker still stopping one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
from persistence.db import session_factory_from_settings
from persistence.deletion import (
    ProjectAlreadyDeleted,
    ProjectHasActiveJobs,
    ProjectInputsReferenced,
    delete_project,
)
from persistence.models import ApiKey, Project
from persistence.schema import SchemaNotCurrent, check_schema
from persistence.settings import Settings, settings_or_exit
from persistence.usage import ProjectLimits, ProjectUsage, project_usage


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
    parser = argparse.ArgumentParser(prog="rift-admin", description="Projects and API keys.")
    groups = parser.add_subparsers(dest="group", required=True)

    projects = groups.add_parser("projects", help="projects").add_subparsers(
        dest="command", required=True)
    create = projects.add_parser("create", help="create a project")
    create.add_argument("name")
    projects.add_parser("list", help="list projects")
    adopt = projects.add_parser(
        "adopt", help="give a project the checkpoints, datasets and jobs that have none (made "
        "before projects existed; no key can see them until then)")
    adopt.add_argument("name")
    limits = projects.add_parser(
        "limits", help="set a project's own limits ('default': the setting's again); prints "
        "them all, as limit<TAB>value (empty: the default)")
    limits.add_argument("name")
    for limit in LIMIT_MAXIMA:
        limits.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=_limit_value,
                            metavar="N|default")

    usage = projects.add_parser(
        "usage", help="a project's usage against its limits, as GET /v1/usage and the quota "
        "checks count it; prints name<TAB>value")
    usage.add_argument("name")
    remove = projects.add_parser(
        "delete", help="delete a project with its keys, webhooks, jobs, checkpoints, datasets "
        "and their stored objects (refused while it has queued or running jobs)")
    remove.add_argument("name")
    remove.add_argument("--force", action="store_true",
                        help="revoke its keys and cancel its jobs first, waiting up to "
                        "PROJECT_DELETE_WAIT_SECONDS for them to stop")

    keys = groups.add_parser("keys", help="API keys").add_subparsers(dest="command",
                                                                      required=True)
    key_create = keys.add_parser("create", help="create a key; prints it alone on stdout")
    key_create.add_argument("--project", required=True)
    key_create.add_argument("--scope", action="append", choices=[s.value for s in Scope],
                            help="repeat for several (default: read and write)")
    key_create.add_argument("--name", help="a label for the key")
    key_list = keys.add_parser("list", help="list keys (never their secrets)")
    key_list.add_argument("--project")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    return parser


_DEFAULT = object()  # "default" on the command line: the limit's column back to NULL


def _limit_value(text: str) -> object:
    if text == "default":
        return _DEFAULT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or 'default': {text[:32]!r}"
                                         ) from None


def _usage_lines(usage: ProjectUsage) -> list[str]:
    stored, limits = usage.stored, usage.limits
    rows: list[tuple[str, object]] = [
        ("project", usage.project_name),
        ("stored_bytes", stored.total), ("max_stored_bytes", limits.max_stored_bytes),
        ("stored_bytes.checkpoints", stored.checkpoints),
        ("stored_bytes.datasets", stored.datasets),
        ("stored_bytes.artifacts", stored.artifacts),
        ("stored_bytes.reserved_by_active_jobs", stored.reserved_by_active_jobs),
        ("stored_bytes.reserved_by_materializations", stored.reserved_by_materializations),
        ("active_jobs", usage.active_jobs), ("max_active_jobs", limits.max_active_jobs),
        ("max_job_cost", limits.max_job_cost),
        ("max_requests_per_minute", limits.max_requests_per_minute),
        ("max_streams_per_key", limits.max_streams_per_key)]
    return [f"{name}\t{value}" for name, value in rows]


def _found(session: Session, name: str) -> Project:
    found = project_by_name(session, name)
    if found is None:
        raise AdminError(f"no project named '{name}'")
    return found


def run(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings or settings_or_exit()
    factory = session_factory_from_settings(settings)
    try:
        engine = factory.kw.get("bind")
        if engine is not None:
            # Before: an unmigrated database was "cannot reach the database: no such table:
            # projects", though it was reached; the schema check says what to run.
            check_schema(engine, then="then run rift-admin again")
        with factory() as session:
            if args.group == "projects" and args.command == "create":
                project = create_project(session, args.name)
                print(f"{project.id}\t{project.name}")
            elif args.group == "projects" and args.command == "adopt":
                found = project_by_name(session, args.name)
                if found is None:
                    raise AdminError(f"no project named '{args.name}'")
                counts = adopt_unowned(session, found)
                print(", ".join(f"{n} {what}" for what, n in counts.items())
                      + f" now belong to project '{found.name}'")
            elif args.group == "projects" and args.command == "limits":
                found = project_by_name(session, args.name)
                if found is None:
                    raise AdminError(f"no project named '{args.name}'")
                given = {limit: None if getattr(args, limit) is _DEFAULT else getattr(args, limit)
                         for limit in LIMIT_MAXIMA if getattr(args, limit) is not None}
                set_project_limits(session, found, given)
                for limit in LIMIT_MAXIMA:
                    value = getattr(found, limit)
                    print(f"{limit}\t{'' if value is None else value}")
            elif args.group == "projects" and args.command == "usage":
                found = _found(session, args.name)
                print("\n".join(_usage_lines(project_usage(
                    session, project_id=found.id, project_name=found.name,
                    limits=ProjectLimits.of(found, settings)))))
            elif args.group == "projects" and args.command == "delete":
                gone = delete_project(session, settings.build_object_store(),
                                      _found(session, args.name), force=args.force,
                                      wait_s=settings.project_delete_wait_seconds)
                print(f"deleted project '{gone.name}': {gone.jobs} jobs, {gone.checkpoints} "
                      f"checkpoints, {gone.datasets} datasets, {gone.webhooks} webhooks, "
                      f"{gone.keys} keys, {gone.objects} stored objects", file=sys.stderr)
            elif args.group == "projects":
                for project in list_projects(session):
                    print(f"{project.id}\t{project.name}\t{project.created_at.isoformat()}")
            elif args.command == "create":
                check_key_request(args.scope or [], args.name)  # before making the project
                project = create_project(session, args.project, exist_ok=True)
                new = create_key(session, project, args.scope or [], args.name)
                print(new.key)
                print(f"created key {new.row.id} ({new.row.scopes}) for project "
                      f"'{project.name}'; it is shown only once", file=sys.stderr)
            elif args.command == "list":
                project_id = None
                if args.project is not None:
                    found = project_by_name(session, args.project)
                    if found is None:
                        raise AdminError(f"no project named '{args.project}'")
                    project_id = found.id
                names = {p.id: p.name for p in session.query(Project).all()}
                print("id\tproject\tprefix\tscopes\tname\tcreated_at\tlast_used_at\trevoked_at")
                for key in list_keys(session, project_id):
                    print("\t".join([
                        key.id, names.get(key.project_id, "?"), f"rift_{key.prefix}_…",
                        key.scopes.replace(" ", ","), key.name or "",
                        key.created_at.isoformat(),
                        key.last_used_at.isoformat() if key.last_used_at else "",
                        key.revoked_at.isoformat() if key.revoked_at else ""]))
            else:
                _refuse_whole_key(session, args.key_id)
                row = revoke_key(session, args.key_id)
                if row is None:
                    raise AdminError(f"no key with id '{args.key_id}' (`rift-admin keys list` "
                                     "shows the ids)")
                print(f"revoked key {row.id}", file=sys.stderr)
    except (AdminError, ProjectAlreadyDeleted, ProjectHasActiveJobs,
            ProjectInputsReferenced) as exc:
        print(f"rift-admin: {exc}", file=sys.stderr)
        return 2
    except SchemaNotCurrent as exc:
        print(f"rift-admin: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
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
    sys.exit(run())


if __name__ == "__main__":
    main()
