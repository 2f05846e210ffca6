"""What the service's own command lines share (``python -m persistence.migrate``, ``python -m
api.preflight``, ``python -m persistence.janitor``, ``rift-admin``, ``python -m rift``): a parser
that answers ``--help`` and ``--version`` and refuses any argument it does not know.

Two of them once read no arguments at all, so ``python -m persistence.migrate --help`` migrated
the database (making ``./var/rift.db`` where none was meant) and ``python -m api.preflight
--help`` emptied the API's metrics folder; ``python -m persistence.migrate 0020`` went to the
newest revision. An operator trying a command to learn what it does must not have it run.
"""

from __future__ import annotations

import argparse

from rift import __version__


def version_text(prog: str) -> str:
    """``PROG VERSION``: the release of this code (``rift-service``; the library, the API and the
    workers are released together)."""
    return f"{prog} {__version__}"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` a ``--version`` that prints :func:`version_text` and exits 0."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the release of this code and exit")
    return parser


def service_parser(prog: str, description: str, epilog: str | None = None
                   ) -> argparse.ArgumentParser:
    """An ``argparse`` parser for a service command: ``--help``, ``--version``, and exit 2 on an
    argument it does not define (argparse's own refusal), before the command touches anything."""
    return add_version(argparse.ArgumentParser(prog=prog, description=description, epilog=epilog))
