"""The README's reference tables and command lines match the code a reader runs them against.

Each test reads one kind of reference from README.md (and clients/python/README.md for riftctl)
and checks it against the thing itself, both ways where the README claims to be complete:
the Settings table against ``persistence.settings.Settings``, the Routes table against the
app's routes, every ``riftctl`` line against the CLI's commands and options, and every
``rift-admin`` line against its argument parser. No server is started: the app is built and
its routes read, nothing is requested.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from starlette.routing import Match

from api.main import create_app
from persistence.admin_cli import _parser as admin_parser
from persistence.settings import Settings
from rift_client.cli import app as riftctl_app
from tests.api.helpers import RecordingDispatcher

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CLIENT_README = (ROOT / "clients" / "python" / "README.md").read_text()

_SETTING = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`")
_ROUTE = re.compile(r"`(?:(GET|POST|DELETE|PUT|PATCH) )?(/[^`\s]*)`")


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next heading of that level."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _table_rows(section: str) -> Iterator[list[str]]:
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            yield [cell.strip() for cell in line.strip("|").split(" | ")]


def test_settings_table_lists_every_setting_and_only_settings() -> None:
    documented = {name for row in _table_rows(_section(README, "## Settings"))
                  for name in _SETTING.findall(row[-1])}
    assert documented, "no settings found in the README's Settings table"
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - fields == set(), "in the README, not in persistence/settings.py"
    assert fields - documented == set(), "in persistence/settings.py, not in the README"


def _documented_routes() -> set[tuple[str, str]]:
    """(method, path) of every route in the README's Routes table, path parameters as ``{}``.

    A cell lists routes as `METHOD /path`; a bare `/other` takes the previous route's method and
    replaces its last segment (`GET /jobs/{id}/mrc`, `/curves`). Rows are under /v1 unless they
    say "(root)"; "(also at the root)" means both.
    """
    routes: set[tuple[str, str]] = set()
    for row in _table_rows(_section(README, "## Routes")):
        cell = row[0]
        method, previous = "GET", ""
        paths: list[tuple[str, str]] = []
        for verb, path in _ROUTE.findall(cell):
            if verb:
                method = verb
            elif previous:
                path = previous.rsplit("/", 1)[0] + path
            previous = path
            paths.append((method, re.sub(r"\{[^}]*\}", "{}", path)))
        prefixes = ([""] if "(root)" in cell else
                    ["/v1", ""] if "(also at the root)" in cell else ["/v1"])
        routes |= {(m, prefix + p) for m, p in paths for prefix in prefixes}
    return routes


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    from persistence.migrate import upgrade_database

    folder = tmp_path_factory.mktemp("readme_app")
    upgrade_database(f"sqlite:///{folder}/rift.db")  # the app refuses an unmigrated database
    settings = Settings(database_url=f"sqlite:///{folder}/rift.db", broker_url="memory://",
                        store_root=folder / "objects", work_dir=folder / "work",
                        log_format="text")
    return create_app(settings, dispatcher=RecordingDispatcher())


def test_routes_table_matches_the_apps_routes(app: FastAPI) -> None:
    documented = _documented_routes()
    assert len(documented) > 20, documented
    # Every documented route is served: its path and method match one of the app's routes.
    for method, path in sorted(documented):
        concrete = path.replace("{}", "x1").replace("*", "swagger-ui/swagger-ui.css")
        scope = {"type": "http", "method": method, "path": concrete, "root_path": ""}
        matches = [route.matches(scope)[0] for route in app.router.routes]
        assert Match.FULL in matches, f"README documents {method} {path}; the app has no such route"
    # Every route of the OpenAPI schema is documented.
    schema = app.openapi()
    served = {(method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
              for path, operations in schema["paths"].items() for method in operations}
    assert served - documented == set(), "served, missing from the README's Routes table"


def _code(text: str, *, inline: bool) -> Iterator[str]:
    """Every line of the text's code blocks (fenced, or indented four spaces), continuations
    joined, and with ``inline`` every inline code span."""
    fenced, pending = False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield pending + line
            pending = ""
    if inline:
        yield from re.findall(r"`([^`\n]+)`", text)


def _command_lines(text: str, program: str, *, inline: bool = True) -> Iterator[list[str]]:
    """The arguments of every ``program`` command in the text's code (comments, ``[optional]``
    brackets and ``$(...)`` dropped; up to the next ``&&``, ``|`` or ``;``)."""
    for line in _code(text, inline=inline):
        if program not in line:
            continue
        line = line.split(" #", 1)[0]
        for mark in "[]()":
            line = line.replace(mark, " ")
        words = shlex.split(line.replace("$ ", " "))
        for at in (i for i, word in enumerate(words) if word == program):
            tail = words[at + 1:]
            cut = next((i for i, word in enumerate(tail) if word in ("&&", "|", ";")), len(tail))
            if cut:  # the bare name is prose ("`riftctl`"), not a command
                yield tail[:cut]


def _option(command: Any, name: str) -> Any:
    """The option of a (typer-built) click command that ``name`` spells, or None."""
    return next((param for param in command.params if param.param_type_name == "option"
                 and name in (*param.opts, *param.secondary_opts)), None)


def test_every_riftctl_line_names_real_commands_and_options() -> None:
    root = typer.main.get_command(riftctl_app)
    lines = [*_command_lines(README, "riftctl"), *_command_lines(CLIENT_README, "riftctl")]
    assert len(lines) > 15, lines
    for words in lines:
        shown = "riftctl " + " ".join(words)
        command: Any = root
        value_next = False
        for word in words:
            if value_next:
                value_next = False
            elif word == "--help":
                break
            elif word.startswith("-"):
                option = _option(command, word.split("=", 1)[0])
                assert option is not None, f"{shown}: no option {word} on {command.name}"
                value_next = not (option.is_flag or option.count or "=" in word)
            elif hasattr(command, "commands"):  # a group: the word names a subcommand
                sub = command.commands.get(word)
                assert sub is not None, f"{shown}: no command {word!r}"
                command = sub


def test_every_rift_admin_line_parses() -> None:
    # Whole commands only: prose names part of one (`rift-admin keys create`).
    lines = [*_command_lines(README, "rift-admin", inline=False),
             *_command_lines(README, "persistence.admin_cli", inline=False)]
    assert len(lines) >= 6, lines
    for words in lines:
        admin_parser().parse_args(words)  # exits 2 on an unknown command or option
