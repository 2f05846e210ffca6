"""The README's reference tables and command lines match the code a reader runs them against.

Each test reads one kind of reference from README.md (and clients/python/README.md for riftctl)
and checks it against the thing itself, both ways where the README claims to be complete:
the Settings table against ``persistence.settings.Settings``, the Routes table against the
app's routes, every ``riftctl`` line against the CLI's commands and options, and every
``rift-admin`` line against its argument parser. No server is started: the app is built and
its routes read, nothing is requested.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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
from rift_client.cli import hoist_root_options
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
        words = hoist_root_options(words)  # as riftctl reads them: --output after the command
        command: Any = root
        value_next = False
        for word in words:
            if value_next:
                value_next = False
            elif word == "--help":
                break
            elif word.startswith("-") and word != "-":  # a lone "-" is an argument: stdin
                option = _option(command, word.split("=", 1)[0])
                assert option is not None, f"{shown}: no option {word} on {command.name}"
                value_next = not (option.is_flag or option.count or "=" in word)
            elif hasattr(command, "commands"):  # a group: the word names a subcommand
                sub = command.commands.get(word)
                assert sub is not None, f"{shown}: no command {word!r}"
                command = sub


def _riftctl_leaf(words: list[str]) -> tuple[Any, list[str]] | None:
    """The command a riftctl line runs and the positional arguments it gives it (elisions
    ``...``/``…`` dropped), or None for a ``--help`` line; options are the test above's."""
    command: Any = typer.main.get_command(riftctl_app)
    positional: list[str] = []
    value_next = False
    for word in hoist_root_options(words):
        if value_next:
            value_next = False
        elif word == "--help":
            return None
        elif word.startswith("-") and word != "-":
            option = _option(command, word.split("=", 1)[0])
            value_next = option is not None and not (option.is_flag or option.count or "=" in word)
        elif hasattr(command, "commands") and word in command.commands:
            command = command.commands[word]
        elif word not in ("...", "…"):
            positional.append(word)
    return command, positional


def test_every_riftctl_example_gives_its_command_the_arguments_it_takes() -> None:
    # The test above checks names; a copied line also needs its positional arguments: one
    # dropped (`admin keys get KEY_ID` once the project became an argument) or one too many is
    # typer's "Missing argument" / "Got unexpected extra argument" for whoever pastes it.
    # Code lines only: prose names commands without their arguments (`riftctl jobs get`).
    checked = 0
    for text in (README, CLIENT_README):
        for words in _command_lines(text, "riftctl", inline=False):
            shown = "riftctl " + " ".join(words)
            leaf = _riftctl_leaf(words)
            if leaf is None:
                continue
            command, given = leaf
            assert not hasattr(command, "commands"), f"{shown}: names no command of {command.name}"
            arguments = [p for p in command.params if p.param_type_name == "argument"]
            required = sum(max(p.nargs, 1) for p in arguments if p.required)
            most = None if any(p.nargs == -1 for p in arguments) else sum(p.nargs for p in arguments)
            assert len(given) >= required, f"{shown}: {command.name} needs {required} argument(s)"
            assert most is None or len(given) <= most, \
                f"{shown}: {command.name} takes at most {most} argument(s), given {given}"
            checked += 1
    assert checked > 40, checked


def test_every_rift_admin_line_parses() -> None:
    # Whole commands only: prose names part of one (`rift-admin keys create`).
    lines = [*_command_lines(README, "rift-admin", inline=False),
             *_command_lines(README, "persistence.admin_cli", inline=False)]
    assert len(lines) >= 6, lines
    for words in lines:
        admin_parser().parse_args(words)  # exits 2 on an unknown command or option


def _fenced_blocks(text: str, language: str) -> Iterator[str]:
    """The body of every ```language block of the text."""
    yield from re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _client_names(tree: ast.AST) -> dict[str, type]:
    """Names bound to a client by ``with RiftClient(...) as name`` (or ``async with``)."""
    from rift_client import AsyncRiftClient, RiftClient

    classes = {"RiftClient": RiftClient, "AsyncRiftClient": AsyncRiftClient}
    bound: dict[str, type] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                call, name = item.context_expr, item.optional_vars
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id in classes and isinstance(name, ast.Name)):
                    bound[name.id] = classes[call.func.id]
    # Fragments without their `with` (`record = rift.materialize(...)`) use the README's name.
    bound.setdefault("rift", RiftClient)
    return bound


def _binds(function: Any, call: ast.Call, *, method: bool) -> bool:
    """Whether the call's arguments (their number, their keywords) fit ``function``."""
    if any(isinstance(arg, ast.Starred) for arg in call.args) or \
            any(keyword.arg is None for keyword in call.keywords):
        return True  # *args / **kwargs: nothing to count
    positional = [None] * (len(call.args) + (1 if method else 0))
    try:
        inspect.signature(function).bind(*positional, **{k.arg: None for k in call.keywords
                                                         if k.arg is not None})
    except TypeError:
        return False
    return True


def test_python_examples_import_and_call_what_exists() -> None:
    # A renamed method, argument or export breaks a reader's copy-paste, not the tests: each
    # example's imports must exist, and each call on a client (`rift.wait(job.id, timeout=...)`)
    # must name a real method with arguments its signature takes.
    blocks = [*_fenced_blocks(README, "python"), *_fenced_blocks(CLIENT_README, "python")]
    assert len(blocks) >= 6, len(blocks)
    calls = 0
    for block in blocks:
        tree = ast.parse(block)  # a syntax error fails here
        clients = _client_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README: from {node.module} import {alias.name}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in clients:
                cls = clients[node.func.value.id]
                method = getattr(cls, node.func.attr, None)
                shown = f"{node.func.value.id}.{node.func.attr}(...) ({cls.__name__})"
                assert method is not None, f"README calls {shown}: no such method"
                assert _binds(method, node, method=True), f"README: {shown} " \
                    f"does not fit {inspect.signature(method)}: {ast.unparse(node)}"
                calls += 1
    assert calls >= 10, calls


def test_every_python_m_rift_line_parses() -> None:
    from rift.cli import make_parser

    lines = [*_command_lines(README, "rift", inline=False)]
    # Only `python -m rift ...` lines: the word "rift" alone is a module path elsewhere.
    commands = [words for words in lines if words and words[0] in ("run", "demo-checkpoint",
                                                                    "architectures")]
    assert len(commands) >= 5, lines
    for words in commands:
        try:
            make_parser().parse_args(words)
        except SystemExit:  # argparse's answer to an unknown command or option
            pytest.fail(f"README: python -m rift {' '.join(words)}: refused by its parser")


_CURL_URL = re.compile(r"\$\{?RIFT\}?(/v1/[^\s\"'?]*)")


def test_every_curl_example_names_a_served_route(app: FastAPI) -> None:
    checked = 0
    for line in _code(README, inline=False):
        if "curl " not in line:
            continue
        words = line.split(" #", 1)[0]
        found = _CURL_URL.search(words)
        if found is None:
            continue
        explicit = re.search(r"-X\s+([A-Z]+)", words)
        method = explicit.group(1) if explicit else (
            "POST" if re.search(r"\s(-d|-F|--data\S*)\s", words) else "GET")
        # <id>, $JOB_ID, ${JOB_ID}: a path parameter.
        path = re.sub(r"<[^>/]+>|\$\{?[A-Z_]+\}?", "x1", found.group(1))
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        assert any(route.matches(scope)[0] == Match.FULL for route in app.router.routes), \
            f"README: {method} {found.group(1)} is not a route of the app ({line.strip()[:100]})"
        checked += 1
    assert checked >= 12, checked


_DEFAULT = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)` \(([^)]*)\)")
_UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "h": 3600, "s": 1}


def _documented_default(text: str) -> object:
    """The default a Settings-table parenthesis states, or ``...`` where it states none: a
    leading `quoted` value (the first of `choices`\\|`listed`), else its first words, up to
    ``;``, ``:``, ``,`` or ``|``, as a number with an optional unit (`2 GiB`, `6 h`, `1e9`,
    `0 = keep`), true/false, or empty/unset."""
    quoted = re.match(r"`([^`]*)`(?:$|;|\\\|)", text)  # `value`, `value`; ..., `choice`\|`other`
    if quoted:
        return quoted.group(1)
    head = re.split(r"[;:,|]", text, maxsplit=1)[0].strip()
    if head in ("true", "false"):
        return head == "true"
    if head in ("unset", "empty"):
        return None
    number = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)(?: (KiB|MiB|GiB|h|s))?(?: = \w+| per \w+"
                          r"| passed .*| of it)?", head)
    if number:
        return float(number.group(1)) * _UNITS.get(number.group(2) or "s", 1)
    return ...


def test_settings_table_defaults_are_the_codes() -> None:
    # A default in the table that the code no longer has (a limit raised, a unit changed) sends
    # an operator tuning the wrong number; the table states most defaults in parentheses.
    checked = 0
    for name, text in _DEFAULT.findall(_section(README, "## Settings")):
        stated = _documented_default(text)
        field = Settings.model_fields.get(name.lower())
        if stated is ... or field is None:
            continue
        actual = field.get_default(call_default_factory=True)
        if stated is None:
            assert actual in (None, ""), f"README: {name} ({text}); the code's default is {actual!r}"
        elif isinstance(stated, bool) or isinstance(actual, bool):
            assert actual is stated, f"README: {name} ({text}); the code's default is {actual!r}"
        elif isinstance(stated, float):
            assert float(actual) == stated, f"README: {name} ({text}); the code's default is {actual!r}"
        else:
            assert str(actual) == stated, f"README: {name} ({text}); the code's default is {actual!r}"
        checked += 1
    assert checked >= 40, checked


def test_routes_section_names_every_query_parameter_and_only_those(app: FastAPI) -> None:
    # A query parameter renamed in the code (`?kind=` for `?format=`) or one the README invents
    # is a 422 `unknown_parameter` for whoever copies it.
    served = {parameter["name"] for operations in app.openapi()["paths"].values()
              for operation in operations.values()
              for parameter in operation.get("parameters", []) if parameter["in"] == "query"}
    section = _section(README, "## Routes")
    named = set(re.findall(r"[`?&]([a-z_]+)=", section))
    assert named - served == set(), "query parameters in the README's Routes, served by no route"
    mentioned = set(re.findall(r"`\??([a-z_]+)=?[^`]*`", section))
    assert served - mentioned == set(), "query parameters of the app the Routes section omits"
