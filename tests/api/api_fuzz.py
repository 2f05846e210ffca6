"""Requests for the API-wide fuzz test (``test_api_fuzz.py``), made from the app's OpenAPI
document: for every operation, a valid request, then the same request with one parameter (path,
query, header, JSON body field at any depth, multipart part) replaced by a hostile value.

No hypothesis (not in the venv) and no schemathesis: a seeded ``random.Random`` picks a bounded
sample of each operation's mutations, so a run sends the same requests every time.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

#: Values for a parameter that travels in the URL, already percent-encoded as sent: invalid
#: UTF-8 (``%FF``, an encoded lone surrogate) can only be sent this way.
URL_VALUES: tuple[str, ...] = (
    "", "%20", "x" * 10_000, "%00", "a%00b", "%FF", "%ED%A0%80", "%C3%A9%E2%9C%93%F0%9F%98%80",
    "-1", "0", "9223372036854775808", "-9223372036854775809", "1" + "0" * 400, "1.5", "1e309",
    "NaN", "true", "null", "%5B%5D", "..%2F..%2Fetc%2Fpasswd", "'%20OR%201%3D1--", "%25s%25n",
)

#: Header values, as bytes (a header is Latin-1 on the wire). Control characters are left
#: out: the HTTP parser refuses them before the app runs (httpx will not even send NUL or
#: CR/LF), answered by ``api.http_protocol`` in production (``tests/api/test_http_protocol.py``).
HEADER_VALUES: tuple[bytes, ...] = (
    b"", b"x" * 10_000, b"\xff\xfe", "é✓".encode(), b"-1", b"9" * 40, b"null", b"a b",
    b"\x80", b"{}",
)

#: Headers the app reads on every operation or some, outside the OpenAPI parameters (the body's
#: type and coding, content negotiation, the key, conditional and range requests).
COMMON_HEADERS: dict[str, tuple[bytes, ...]] = {
    "Content-Type": (b"text/plain", b"application/json; charset=latin-1",
                     b"multipart/form-data; boundary=", b"\xff", b"application/"),
    "Content-Encoding": (b"gzip", b"br", b"gzip, gzip", b"deflate", b"\xff"),
    "Accept": (b"text/html", b"application/json;q=abc", b"\xff", b"*/*;q=NaN", b"x" * 10_000),
    "Authorization": (b"Bearer ", b"Bearer \xff", b"Basic Zm9vOmJhcg==", b"Bearer " + b"x" * 9_000),
    "Range": (b"bytes=abc", b"bytes=-0", b"bytes=18446744073709551616-", b"bytes=" + b"0-1," * 99,
              b"bytes=5-1"),
    "If-Range": (b"garbage", b'"x"', b"Thu, 01 Jan 99999 00:00:00 GMT"),
    "If-None-Match": (b"x" * 10_000, b"*", b'W/"'),
    "If-Modified-Since": (b"not a date", b"Thu, 01 Jan 99999 00:00:00 GMT", b"-1"),
}

#: How many of each common header's values an operation gets.
COMMON_HEADER_VALUES = 2

#: Nesting that stays inside the body limit (64 levels, ``api.request_input.MAX_JSON_DEPTH``)
#: once put a few levels down, and nesting past it.
_NESTED_OK: Any = json.loads("[" * 40 + "]" * 40)
_NESTED_DEEP: Any = json.loads("[" * 100 + "]" * 100)

#: Values for a JSON body field. Lone surrogates and NUL survive ``json.dumps`` as escapes.
JSON_VALUES: tuple[Any, ...] = (
    None, "", "x" * 10_000, "a\x00b", "\ud800", "é✓😀", 0, -1, 2**63, -(2**63) - 1, 10**30,
    1.5, -0.0, 1e308, True, False, [], {}, [1, "a"], {"x": 1}, "1", "true", _NESTED_OK,
    _NESTED_DEEP, {"": ""}, {"a\x00": "b"}, {"k" * 1_000: "v" * 10_000}, ["a"] * 1_000,
)


@dataclass
class Case:
    """One request and what it aims at: ``target`` is the parameter a 4xx must name, or None
    for a mutation of the body as a whole (a 4xx then names ``body`` or ``Content-Type``)."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, bytes] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str | None = None
    target: str | None = None
    note: str = ""

    def url(self) -> str:
        if not self.query:
            return self.path
        return self.path + "?" + "&".join(f"{name}={value}" for name, value in self.query)


@dataclass
class Operation:
    """One OpenAPI operation and the document it came from (to resolve ``$ref``)."""

    method: str
    template: str
    spec: dict[str, Any]
    document: dict[str, Any]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema with ``$ref`` followed and a nullable ``anyOf`` reduced to its non-null
        member (the object, when one member is an object)."""
        while "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        members = [m for m in schema.get("anyOf", []) if m.get("type") != "null"]
        if members:
            objects = [m for m in members if self.resolve(m).get("type") == "object"]
            return self.resolve(objects[0] if objects else members[0])
        return schema

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]

    def body_types(self) -> dict[str, Any]:
        return dict(self.spec.get("requestBody", {}).get("content", {}))


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation of the document, in its order."""
    return [Operation(method.upper(), path, spec, document)
            for path, item in document["paths"].items() for method, spec in item.items()]


def unresolved_refs(document: dict[str, Any]) -> list[str]:
    """Every ``$ref`` of the document that points nowhere."""
    missing: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = document
                for part in ref.removeprefix("#/").split("/"):
                    target = target.get(part) if isinstance(target, dict) else None
                if target is None:
                    missing.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return missing


def field_paths(op: Operation, schema: dict[str, Any], prefix: tuple[str, ...] = (),
                depth: int = 3) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, object schema) of every object in a body, the body itself first, ``depth``
    levels down."""
    schema = op.resolve(schema)
    if schema.get("type") != "object" and "properties" not in schema:
        return
    yield prefix, schema
    if depth == 0:
        return
    for name, member in schema.get("properties", {}).items():
        yield from field_paths(op, member, (*prefix, name), depth - 1)


def set_at(body: Any, path: tuple[str, ...], value: Any) -> Any:
    """A copy of ``body`` with ``value`` at ``path`` (objects on the way made as needed)."""
    body = copy.deepcopy(body)
    node = body
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return body


def drop_at(body: Any, path: tuple[str, ...]) -> Any:
    body = copy.deepcopy(body)
    node = body
    for part in path[:-1]:
        node = node.get(part, {})
    node.pop(path[-1], None)
    return body


def _json_case(base: Case, body: Any, target: str | None, note: str,
               raw: bytes | None = None) -> Case:
    content = raw if raw is not None else json.dumps(body).encode()
    return Case(base.method, base.path, list(base.query), dict(base.headers), content,
                "application/json", target, note)


def json_body_cases(op: Operation, base: Case, body: Any, rng: random.Random,
                    values_per_field: int) -> Iterator[Case]:
    """Mutations of a JSON body: each field (any depth) given hostile values, each required
    field left out, unknown fields at each level, and the body as a whole replaced."""
    schema = op.body_types()["application/json"]["schema"]
    for path, obj in field_paths(op, schema):
        where = ".".join(path) or "body"
        yield _json_case(base, set_at(body, (*path, "zz_unknown"), 1) if path
                         else {**body, "zz_unknown": 1}, f"{where}.zz_unknown".removeprefix(
                             "body."), "unknown field")
        for name in obj.get("required", []):
            yield _json_case(base, drop_at(body, (*path, name)), ".".join((*path, name)),
                             "required field missing")
        for name in obj.get("properties", {}):
            for value in rng.sample(JSON_VALUES, min(values_per_field, len(JSON_VALUES))):
                yield _json_case(base, set_at(body, (*path, name), value),
                                 ".".join((*path, name)), f"value {str(value)[:30]!r}")
    text = json.dumps(body)
    for whole in ([], [body], "", None, 1, "x" * 10_000, _NESTED_DEEP):
        yield _json_case(base, whole, None, f"body {str(whole)[:20]!r}")
    first = next(iter(body), None) if isinstance(body, dict) else None
    if first is not None:
        # The same key twice in one object.
        raw = text[:-1] + f", {json.dumps(first)}: {json.dumps(body[first])}}}"
        yield _json_case(base, None, first, "duplicate key", raw.encode())


def multipart(parts: list[tuple[str, bytes | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename or None for a plain field, content); the
    filename is sent as given (raw bytes), so hostile names reach the server unchanged."""
    boundary = "fuzzboundary7d3b"
    out = bytearray()
    for name, filename, content in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"Content-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


#: Upload file names: empty, long, NUL, invalid UTF-8, path traversal, quotes, unicode.
FILENAMES: tuple[bytes, ...] = (
    b"", b"x" * 10_000, b"a\x00b.safetensors", b"\xff\xfe.safetensors", b"../../etc/passwd",
    b"a%22b.pt", "é✓😀.safetensors".encode(), b".", b"CON",
)


def multipart_cases(base: Case, parts: list[tuple[str, bytes | None, bytes]],
                    rng: random.Random) -> Iterator[Case]:
    """Mutations of a multipart body: each part left out, given twice, sent as a plain field
    instead of a file (or the reverse), empty, with a hostile file name; an unknown part."""

    def case(mutated: list[tuple[str, bytes | None, bytes]], target: str | None,
             note: str) -> Case:
        content, content_type = multipart(mutated)
        return Case(base.method, base.path, list(base.query), dict(base.headers), content,
                    content_type, target, note)

    for index, (name, filename, content) in enumerate(parts):
        others = parts[:index] + parts[index + 1:]
        yield case(others, name, "part missing")
        yield case([*parts, (name, filename, content)], name, "part twice")
        yield case([*others, (name, None if filename else b"f.bin", content)], name,
                   "file/field swapped")
        yield case([*others, (name, filename, b"")], name, "part empty")
        yield case([*others, (name, filename, bytes(rng.randrange(256) for _ in range(512)))],
                   name, "random bytes")
        if filename is not None:
            for hostile in FILENAMES:
                yield case([*others, (name, hostile, content)], name, f"filename {hostile[:20]!r}")
        else:
            for value in ("null", "[]", '"x"', "{", "{}", '{"a": NaN}', "\ud800"):
                yield case([*others, (name, None, value.encode("utf-8", "surrogatepass"))],
                           name, f"field {value!r}")
    yield case([*parts, ("zz_unknown", None, b"1")], "zz_unknown", "unknown part")
    body, _ = multipart(parts)
    yield Case(base.method, base.path, list(base.query), dict(base.headers), body,
               "multipart/form-data", None, "no boundary")


def parameter_cases(op: Operation, base: Case, path_values: dict[str, str],
                    rng: random.Random, values_per_param: int) -> Iterator[Case]:
    """Mutations of path, query and header parameters, one at a time; a query parameter given
    twice and one the operation does not declare."""
    for param in op.parameters("path"):
        name = param["name"]
        for value in rng.sample(URL_VALUES, min(values_per_param, len(URL_VALUES))):
            path = op.template.format(**{**path_values, name: value})
            yield Case(base.method, path, list(base.query), dict(base.headers), base.content,
                       base.content_type, name, f"path {value[:30]!r}")
    for param in op.parameters("query"):
        name = param["name"]
        for value in rng.sample(URL_VALUES, min(values_per_param, len(URL_VALUES))):
            query = [(n, v) for n, v in base.query if n != name] + [(name, value)]
            yield Case(base.method, base.path, query, dict(base.headers), base.content,
                       base.content_type, name, f"query {value[:30]!r}")
        yield Case(base.method, base.path, [*base.query, (name, "1"), (name, "2")],
                   dict(base.headers), base.content, base.content_type, name, "query twice")
    for param in op.parameters("header"):
        name = param["name"]
        for raw in rng.sample(HEADER_VALUES, min(values_per_param, len(HEADER_VALUES))):
            headers = {**base.headers, name: raw}
            yield Case(base.method, base.path, list(base.query), headers, base.content,
                       base.content_type, name, f"header {raw[:30]!r}")
    for name, values in COMMON_HEADERS.items():
        # Every Content-Type: it decides how a body is read at all.
        count = len(values) if name == "Content-Type" else COMMON_HEADER_VALUES
        for raw in rng.sample(values, min(count, len(values))):
            yield Case(base.method, base.path, list(base.query), {**base.headers, name: raw},
                       base.content, base.content_type, name, f"header {raw[:30]!r}")
    yield Case(base.method, base.path, [*base.query, ("zz_unknown", quote("1"))],
               dict(base.headers), base.content, base.content_type, "zz_unknown",
               "unknown query parameter")
